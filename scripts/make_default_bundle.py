"""Make a small, randomly initialised placeholder bundle (fixed seed, so the files are reproducible):
the pipeline runs end to end with it, but its verdicts mean nothing, and its manifest says so.

    python scripts/make_default_bundle.py OUT_DIR     # needs torch (the train extra)

`make_bundle` is what the runtime tests use to make tiny bundles. The bundle shipped in the package is
the trained one: scripts/ship_default_bundle.sh.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
UNTRAINED_NOTE = (
    "UNTRAINED placeholder: a randomly initialised ViT (seed {seed}); its p(fake) scores and verdicts are "
    "meaningless. It exists so the pipeline runs end to end until a trained bundle is exported."
)


def export_onnx(model, img_size: int) -> bytes:
    import torch

    model.eval()
    x = torch.zeros(1, 3, img_size, img_size)
    buf = io.BytesIO()
    with warnings.catch_warnings():  # the legacy exporter: fast, deterministic, enough for a plain ViT
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (x,),
            buf,
            dynamo=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=17,
        )
    return buf.getvalue()


def make_bundle(
    out: Path,
    *,
    img_size: int = 64,
    patch_size: int = 16,
    dim: int = 32,
    depth: int = 1,
    heads: int = 2,
    seed: int = 0,
    threshold: float = 0.5,
    notes: str | None = None,
    spec_overrides: dict[str, Any] | None = None,
) -> Path:
    """Write a bundle (manifest.json + model.onnx) of a random-initialised fp ViT to `out`."""
    import torch

    from edgedf.runtime.bundle import FORMAT, FORMAT_VERSION, file_entry
    from edgedf.runtime.fsutil import atomic_dir
    from edgedf.runtime.spec import FaceCropSpec
    from edgedf.train.vit import ViTConfig, build_model, count_params

    torch.manual_seed(seed)
    cfg = ViTConfig(preset=None, img_size=img_size, patch_size=patch_size, dim=dim, depth=depth, heads=heads)
    model = build_model(cfg)
    data = export_onnx(model, img_size)
    spec = FaceCropSpec(input_size=img_size, **(spec_overrides or {}))
    with atomic_dir(out, overwrite=True) as tmp:
        (tmp / "model.onnx").write_bytes(data)
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "target": "ort",
            "backend": "ort",
            "precision": "fp32",
            "entry": "model.onnx",
            "files": {"model.onnx": file_entry(tmp / "model.onnx")},
            "preprocessing": spec.to_dict(),
            "labels": ["real", "fake"],
            "threshold": threshold,
            "model": {
                "arch": "vit",
                "preset": None,
                "variant": "fp",
                "params": count_params(model),
                "config": cfg.to_dict(),
                "trained": False,
                "seed": seed,
            },
            "input": {"name": "input"},
            "notes": notes if notes is not None else UNTRAINED_NOTE.format(seed=seed),
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return out


# The runtime tests' bundle, committed at tests/assets/tiny_bundle so they run where torch is not installed
# (a wheel install, as on a device); tests/runtime/test_test_bundle.py checks it is what this makes.
TEST_BUNDLE = dict(img_size=64, patch_size=16, dim=32, depth=1, heads=2, seed=1, notes="test bundle")


def main() -> None:
    import sys

    args = sys.argv[1:]
    if len(args) == 2 and args[0] == "--test-bundle":
        make_bundle(Path(args[1]), **TEST_BUNDLE)
        return
    if len(args) != 1:
        sys.exit("usage: python scripts/make_default_bundle.py [--test-bundle] OUT_DIR")
    out = Path(args[0])
    # dim 96, depth 4, 3 heads, patch 16 at 112 px: ~0.5 M parameters, ~2 MB fp32
    make_bundle(out, img_size=112, patch_size=16, dim=96, depth=4, heads=3, seed=0)
    for f in sorted(out.iterdir()):
        print(f"{f}  {f.stat().st_size} bytes")


if __name__ == "__main__":
    main()
