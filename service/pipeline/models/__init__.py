"""Backbones: ids (torch-free), weights resolution (safetensors only), timm models."""
