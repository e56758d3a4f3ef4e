"""Fine-tuning a backbone (strategies, learning-rate search, seeds) and its training loop."""
