"""edgedf.runtime: what runs on the device. numpy, OpenCV and backend libraries only; never torch."""

from .errors import EdgedfError
from .spec import FaceCropSpec

__all__ = ["EdgedfError", "FaceCropSpec"]
