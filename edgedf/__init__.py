"""edgedf: train, export and run BitLinear and full-precision ViT deepfake detectors on edge devices."""

__version__ = "0.1.0"
