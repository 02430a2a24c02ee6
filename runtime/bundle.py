"""Bundles: what export writes and the device loads. A directory with manifest.json and the backend's
model file(s); every file's sha256 is in the manifest and is checked on load (no torch needed here).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .aggregate import VerdictPolicy
from .errors import EdgedfError
from .fsutil import read_versioned_json, sha256_file
from .parity import REFERENCE, softmax_p
from .spec import FaceCropSpec

FORMAT = "edgedf-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
REQUIRED = ("target", "backend", "precision", "entry", "files", "preprocessing", "labels", "threshold", "model")


def model_bytes(files: dict[str, dict[str, Any]]) -> int:
    return sum(int(f.get("bytes", 0)) for name, f in files.items() if name != REFERENCE)


@dataclass
class Bundle:
    path: Path
    manifest: dict[str, Any]
    spec: FaceCropSpec

    @property
    def backend(self) -> str:
        return self.manifest["backend"]

    @property
    def entry(self) -> Path:
        return self.path / self.manifest["entry"]

    @property
    def model_bytes(self) -> int:
        """The size that ships the model: every file but the reference crops (test data, runtime/parity.py)."""
        return model_bytes(self.manifest["files"])

    @property
    def labels(self) -> list[str]:
        return list(self.manifest["labels"])

    @property
    def fake_index(self) -> int:
        return int(self.manifest.get("fake_index", self.labels.index("fake") if "fake" in self.labels else 1))

    @property
    def threshold(self) -> float:
        return float(self.manifest["threshold"])

    @property
    def verdict_policy(self) -> VerdictPolicy:
        """What may be judged (aggregate.py); bundles without one get the defaults."""
        return VerdictPolicy.from_dict(self.manifest.get("verdict_policy"))

    @property
    def input_name(self) -> str:
        return self.manifest.get("input", {}).get("name", "input")

    @property
    def notes(self) -> str | None:
        """The manifest's notes as one line (export writes a list, older bundles a string)."""
        n = self.manifest.get("notes")
        if isinstance(n, list):
            return " ".join(str(x) for x in n) or None
        return n or None

    def p_fake(self, logits: np.ndarray) -> np.ndarray:
        """Softmax p(fake) from logits [N, C]."""
        return softmax_p(logits, self.fake_index).astype(np.float32)

    def describe(self) -> str:
        m = self.manifest
        return (
            f"{m['model'].get('preset') or m['model'].get('arch')} {m['model'].get('variant')} · "
            f"{m['precision']} · {m['backend']} ({m['target']})"
        )


def load_bundle(path: str | os.PathLike, verify: bool = True) -> Bundle:
    """Read manifest.json, check version and required fields, and (verify=True) every file's sha256."""
    root = Path(path)
    if not root.exists():
        raise EdgedfError(f"bundle not found: {root}")
    if root.is_file() and root.name == MANIFEST:
        root = root.parent
    if not root.is_dir():
        raise EdgedfError(f"not a bundle directory: {root}")
    manifest = read_versioned_json(root / MANIFEST, FORMAT, FORMAT_VERSION, "bundle", REQUIRED)
    files = manifest["files"]
    if manifest["entry"] not in files:
        raise EdgedfError(f"bundle {root}: entry {manifest['entry']} is not among its files")
    if verify:
        for name, info in files.items():
            f = root / name
            if not f.is_file():
                raise EdgedfError(f"bundle {root} lacks {name}")
            if sha256_file(f) != info.get("sha256"):
                raise EdgedfError(f"bundle {root}: {name} does not match its sha256 (tampered or corrupted)")
    bundle = Bundle(path=root, manifest=manifest, spec=FaceCropSpec.from_dict(manifest["preprocessing"]))
    _check_fields(bundle)
    return bundle


def _check_fields(b: Bundle) -> None:
    """Fields the runtime computes with, checked at load so a bad bundle fails in one line, not mid-run."""
    m, where = b.manifest, f"bundle {b.path}"
    t = m["threshold"]
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 <= float(t) <= 1.0:
        raise EdgedfError(f"{where}: threshold must be a number in [0, 1], got {t!r}")
    labels = m["labels"]
    if not isinstance(labels, list) or len(labels) < 2 or not all(isinstance(x, str) for x in labels):
        raise EdgedfError(f"{where}: labels must be a list of at least two names, got {labels!r}")
    if not 0 <= b.fake_index < len(labels):
        raise EdgedfError(f"{where}: fake_index {b.fake_index} is outside labels {labels}")
    try:
        b.verdict_policy  # noqa: B018 - validates
    except EdgedfError as e:
        raise EdgedfError(f"{where}: {e}") from None


def file_entry(path: Path) -> dict[str, Any]:
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}
