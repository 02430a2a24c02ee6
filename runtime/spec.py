"""FaceCropSpec: the one preprocessing spec that training, export calibration and the runtime all read.

A detector that scored well in the lab most often fails in use because the crops it sees there were
made differently. So every stage takes these values from the spec (carried in checkpoints, bundle
manifests and ONNX metadata), never from constants of its own.

Default (recorded here, chosen once): the 5 detector landmarks are mapped by a similarity transform onto
the ArcFace 112-px template (as DeepfakeBench does), the template is widened by a 1.3 margin so the face
boundary and some background stay in view (where blending artefacts live), and the crop is resized to
the model's input size. Pixels outside the frame are filled by reflection, so black padding never
becomes a cue the classifier could learn.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import EdgedfError

SPEC_VERSION = 1

ALIGNMENTS = ("arcface5", "box")
COLORS = ("RGB", "BGR")
INTERPOLATIONS = ("linear", "area", "cubic")
BORDERS = ("reflect", "constant", "replicate")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class FaceCropSpec:
    """How a face crop is made from a frame and turned into the model's input tensor."""

    detector: str = "retinaface_mnet025"
    alignment: str = "arcface5"  # arcface5: 5-point similarity transform; box: square box, no rotation
    crop_scale: float = 1.3  # margin around the template (arcface5) or the detector box (box)
    input_size: int = 224
    color: str = "RGB"  # channel order the model expects
    mean: tuple[float, float, float] = IMAGENET_MEAN  # on [0, 1] pixels, in `color` order
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "linear"
    border: str = "reflect"
    version: int = field(default=SPEC_VERSION)

    def __post_init__(self) -> None:
        problems = []
        if self.alignment not in ALIGNMENTS:
            problems.append(f"alignment {self.alignment!r} not in {ALIGNMENTS}")
        if self.color not in COLORS:
            problems.append(f"color {self.color!r} not in {COLORS}")
        if self.interpolation not in INTERPOLATIONS:
            problems.append(f"interpolation {self.interpolation!r} not in {INTERPOLATIONS}")
        if self.border not in BORDERS:
            problems.append(f"border {self.border!r} not in {BORDERS}")
        if not (isinstance(self.input_size, int) and 16 <= self.input_size <= 4096):
            problems.append(f"input_size {self.input_size!r} must be an integer in [16, 4096]")
        if not 0.5 <= float(self.crop_scale) <= 4.0:
            problems.append(f"crop_scale {self.crop_scale!r} must lie in [0.5, 4]")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            problems.append("mean and std need three values each, std > 0")
        if self.version > SPEC_VERSION:
            problems.append(f"spec version {self.version} is newer than this edgedf understands ({SPEC_VERSION})")
        if problems:
            raise EdgedfError("invalid preprocessing spec: " + "; ".join(problems))

    def replace(self, **changes: Any) -> FaceCropSpec:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FaceCropSpec:
        if not isinstance(d, dict):
            raise EdgedfError("invalid preprocessing spec: expected a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise EdgedfError(f"invalid preprocessing spec: unknown field(s) {', '.join(unknown)}")
        d = dict(d)
        for key in ("mean", "std"):
            if key in d:
                d[key] = tuple(float(v) for v in d[key])
        try:
            return cls(**d)
        except TypeError as e:
            raise EdgedfError(f"invalid preprocessing spec: {e}") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FaceCropSpec:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise EdgedfError(f"invalid preprocessing spec: not JSON ({e.msg})") from None

    def to_input(self, crops: np.ndarray, crops_color: str = "BGR") -> np.ndarray:
        """uint8 crops [N, H, W, 3] (or one [H, W, 3]) in `crops_color` order -> float32 [N, 3, S, S].

        Crops must already be `input_size` square (the aligner makes them so); OpenCV hands out BGR,
        hence the default.
        """
        x = np.asarray(crops)
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[-1] != 3:
            raise EdgedfError(f"expected crops of shape [N, H, W, 3], got {tuple(x.shape)}")
        if x.shape[1:3] != (self.input_size, self.input_size):
            raise EdgedfError(f"crops are {x.shape[1]}x{x.shape[2]}, the spec wants {self.input_size}px")
        if x.dtype != np.uint8:
            raise EdgedfError(f"expected uint8 crops, got {x.dtype}")
        if crops_color not in COLORS:
            raise EdgedfError(f"crops_color {crops_color!r} not in {COLORS}")
        if crops_color != self.color:
            x = x[..., ::-1]
        mean = np.asarray(self.mean, np.float32) * 255.0
        inv_std = 1.0 / (np.asarray(self.std, np.float32) * 255.0)
        y = (x.astype(np.float32) - mean) * inv_std
        return np.ascontiguousarray(y.transpose(0, 3, 1, 2))
