"""Shared neural-network parts: the ResNet trunk, the U-Net decoder, augmentations, optimisers."""
