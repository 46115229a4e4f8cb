"""Trajectories recorded from PyTorch, Keras 3, TF1 and timm; see FORMAT.md."""
