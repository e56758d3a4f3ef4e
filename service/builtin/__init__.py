"""Built-in offline assets: weights that installed packages ship, built-in datasets, the model zoo."""
