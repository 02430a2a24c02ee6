"""edgedf: train, export and run BitLinear and full-precision ViT deepfake detectors on edge devices."""

__version__ = "0.1.0"

__all__ = ["Detector", "__version__"]


def __getattr__(name: str):
    """`from edgedf import Detector` (edgedf.runtime.api), imported on first use so `import edgedf` stays light."""
    if name == "Detector":
        from edgedf.runtime.api import Detector

        return Detector
    raise AttributeError(f"module 'edgedf' has no attribute {name!r}")
