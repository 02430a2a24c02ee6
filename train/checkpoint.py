"""Checkpoints: a directory with `config.json` (arch, variant, sizes, labels, preprocessing spec, sha256 of
the weights) and `model.safetensors`. Loading never unpickles anything, and every failure is one line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from edgedf.runtime.errors import EdgedfError
from edgedf.runtime.fsutil import atomic_dir, atomic_write_json, read_versioned_json, sha256_file
from edgedf.runtime.spec import FaceCropSpec

from .vit import VisionTransformer, ViTConfig, build_model, resample_pos_embed

FORMAT = "edgedf-checkpoint"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
DEFAULT_LABELS = ("real", "fake")


@dataclass
class Checkpoint:
    model: VisionTransformer
    config: ViTConfig
    spec: FaceCropSpec
    labels: list[str]
    path: Path
    meta: dict[str, Any] = field(default_factory=dict)  # training facts etc., free-form


def default_labels(num_classes: int) -> list[str]:
    return list(DEFAULT_LABELS) if num_classes == 2 else [f"class_{i}" for i in range(num_classes)]


def save_checkpoint(
    model: VisionTransformer,
    out: str | os.PathLike,
    *,
    spec: FaceCropSpec | None = None,
    labels: list[str] | None = None,
    meta: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write `out/` atomically: the directory appears complete or not at all."""
    cfg = model.cfg
    spec = spec or FaceCropSpec(input_size=cfg.img_size)
    if spec.input_size != cfg.img_size:
        raise EdgedfError(f"preprocessing input_size {spec.input_size} differs from model img_size {cfg.img_size}")
    labels = list(labels or default_labels(cfg.num_classes))
    if len(labels) != cfg.num_classes:
        raise EdgedfError(f"{len(labels)} labels for a model with {cfg.num_classes} classes")
    out = Path(out)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": FORMAT})
        atomic_write_json(
            tmp / CONFIG_NAME,
            {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "arch": "vit",
                "model": cfg.to_dict(),
                "labels": labels,
                "preprocessing": spec.to_dict(),
                "weights": {"file": WEIGHTS_NAME, "sha256": sha256_file(tmp / WEIGHTS_NAME)},
                "meta": meta or {},
            },
        )
    return out


def _resolve(path: Path) -> Path:
    if path.is_dir():
        return path
    if path.name in (CONFIG_NAME, WEIGHTS_NAME) and path.parent.is_dir():
        return path.parent
    if not path.exists():
        raise EdgedfError(f"checkpoint not found: {path}")
    raise EdgedfError(f"not a checkpoint directory: {path} (expected a folder with {CONFIG_NAME} and {WEIGHTS_NAME})")


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate config.json of a checkpoint directory (no weights loaded)."""
    root = _resolve(Path(path))
    return read_versioned_json(
        root / CONFIG_NAME, FORMAT, FORMAT_VERSION, "checkpoint", ("model", "labels", "preprocessing", "weights")
    )


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> Checkpoint:
    root = _resolve(Path(path))
    cfg = read_config(root)
    try:
        vcfg = ViTConfig.from_dict(cfg["model"])
    except (ValueError, TypeError) as e:
        raise EdgedfError(f"checkpoint {root}: invalid model config: {e}") from None
    spec = FaceCropSpec.from_dict(cfg["preprocessing"])
    weights = root / str(cfg["weights"].get("file", WEIGHTS_NAME))
    if not weights.is_file():
        raise EdgedfError(f"checkpoint {root} lacks its weights file {weights.name}")
    expected = cfg["weights"].get("sha256")
    if expected and sha256_file(weights) != expected:
        raise EdgedfError(f"checkpoint {root}: {weights.name} is corrupted (sha256 does not match config.json)")
    try:
        state = load_file(str(weights), device=str(device))
    except (SafetensorError, OSError, ValueError) as e:
        raise EdgedfError(f"checkpoint {root}: cannot read {weights.name} ({e})") from None
    model = build_model(vcfg)
    _load_exact(model, state, str(root))
    model.to(device).eval()
    return Checkpoint(
        model=model, config=vcfg, spec=spec, labels=list(cfg["labels"]), path=root, meta=cfg.get("meta") or {}
    )


def _load_exact(model: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        parts = []
        for label, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if names:
                parts.append(f"{label}: {', '.join(names[:3])}" + (f" (+{len(names) - 3})" if len(names) > 3 else ""))
        raise EdgedfError(f"checkpoint {where} does not match its config ({'; '.join(parts)})")
    model.load_state_dict(state)


# --- initialising from a timm / DeiT / ImageNet checkpoint a user has as a local safetensors file ---


@dataclass
class InitReport:
    loaded: list[str]
    skipped: list[str]  # present in both, shape differs (e.g. a 1000-class head)
    missing: list[str]  # ours, not in the file: stay randomly initialised
    unexpected: list[str]  # theirs, not used (e.g. dist_token, head_dist)

    def summary(self) -> str:
        fresh = self.skipped + self.missing
        shown = ", ".join(fresh[:4]) + ("..." if len(fresh) > 4 else "")
        return (
            f"loaded {len(self.loaded)} tensors, kept {len(fresh)} freshly initialised ({shown}), "
            f"ignored {len(self.unexpected)} from the file"
        )


def map_timm_state(state: dict[str, torch.Tensor], model: VisionTransformer) -> dict[str, torch.Tensor]:
    """Rename/reshape a timm-style ViT state dict for `model` (names already match timm's).

    - strips 'module.' (DDP) and 'model.' prefixes;
    - resamples pos_embed to the model's grid (bicubic), dropping extra prefix tokens (DeiT's dist token);
    - for the BitLinear variant, whose blocks have no norm1/norm2, moves them into the BitLinear input
      norm of qkv / fc1, which sits at the same place in the computation (LayerNorm: weight and bias;
      RMSNorm: the weight only, an approximation that fine-tuning absorbs).
    """
    cfg = model.cfg
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        for prefix in ("module.", "model."):
            if k.startswith(prefix):
                k = k[len(prefix) :]
        out[k] = v
    if "pos_embed" in out:
        pos = out["pos_embed"]
        extra = pos.shape[1] - 1
        n_prefix = 2 if "dist_token" in out else 1
        if n_prefix == 2:
            pos = torch.cat([pos[:, :1], pos[:, 2:]], dim=1)
            extra -= 1
        if extra != cfg.grid * cfg.grid:
            pos = resample_pos_embed(pos, cfg.grid)
        out["pos_embed"] = pos
    if cfg.variant == "bit":
        own = model.state_dict()
        for i in range(cfg.depth):
            for norm, target in (("norm1", "attn.qkv.norm"), ("norm2", "mlp.fc1.norm")):
                for p in ("weight", "bias"):
                    src, dst = f"blocks.{i}.{norm}.{p}", f"blocks.{i}.{target}.{p}"
                    if src in out and dst in own:
                        out[dst] = out.pop(src)
    return out


def init_from_file(model: VisionTransformer, file: str | os.PathLike) -> InitReport:
    """Load what fits from a local safetensors file of a timm-style ViT; report what did not."""
    file = Path(file)
    if not file.is_file():
        raise EdgedfError(f"initial weights not found: {file}")
    if file.suffix != ".safetensors":
        raise EdgedfError(f"initial weights must be a .safetensors file (no pickles are read): {file}")
    try:
        state = load_file(str(file))
    except (SafetensorError, OSError, ValueError) as e:
        raise EdgedfError(f"cannot read {file} as safetensors ({e})") from None
    try:
        state = map_timm_state(state, model)
    except ValueError as e:
        raise EdgedfError(f"{file}: {e}") from None
    own = model.state_dict()
    loaded, skipped = [], []
    for k, v in state.items():
        if k in own:
            (loaded if own[k].shape == v.shape else skipped).append(k)
    if not loaded:
        raise EdgedfError(f"{file} has no tensor that fits this ViT (is it a timm-style ViT state dict?)")
    model.load_state_dict({k: state[k] for k in loaded}, strict=False)
    return InitReport(
        loaded=sorted(loaded),
        skipped=sorted(skipped),
        missing=sorted(set(own) - set(state)),
        unexpected=sorted(set(state) - set(own)),
    )
