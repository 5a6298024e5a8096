"""Gradient inversion attacks (registry filled in by the image and text attack modules)."""
