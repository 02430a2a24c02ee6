"""TrainConfig: one plain dataclass for `edgedf train`, loadable from YAML, overridable by `key=value`."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from edgedf.runtime.errors import EdgedfError

TASKS = ("detect", "pretrain")


@dataclass
class TrainConfig:
    task: str = "detect"  # detect (real/fake) | pretrain (N classes from an ImageNet-style folder)
    out: str = "runs/train"  # run folder: last/ (resume state), best/, model/, metrics.jsonl, curves.png
    # model: ViTConfig fields (preset first, then overrides); img_size follows the crops' spec
    model: dict[str, Any] = field(default_factory=lambda: {"preset": "vit_tiny", "variant": "bit"})
    init: str | None = None  # full-precision checkpoint dir or timm/DeiT .safetensors to start from
    freeze_stem: int = 0  # lite0 stem: keep its first N layers (ZeroPad/conv/BN/ReLU6/blocks) fixed
    stem_lr_scale: float = 1.0  # learning rate of the (pretrained) stem relative to lr
    qat: bool = False  # int8 fake-quant fine-tuning of a full-precision model (train/qat.py)
    # data
    crops: str | None = None  # detect: crops folder from `edgedf prepare`
    val_crops: str | None = None  # default: the split=val records of `crops`
    sbi: bool = True  # detect: self-blended pseudo-fakes from the real crops (no fake data needed)
    imagenet: str | None = None  # pretrain: root with train/<class>/ and val/<class>/
    # detect with real fakes: crops folders of real and fake crops (edgedf prepare --format labels ...);
    # their split=train records train, the rest validate. With sbi on, `crops` gives the real faces to
    # self-blend, mixed in at `sbi_weight` (a share of the samples, each a real face + its blend).
    labeled_crops: list[str] = field(default_factory=list)
    labeled_weights: list[float] = field(default_factory=list)  # sampling share per folder (default equal)
    sbi_weight: float = 0.5
    augment: bool = True  # with labeled_crops: flip, margin jitter, low resolution, post-blend transforms
    low_res: float = 0.3  # share of training crops seen downscaled (resolution augmentation)
    workers: int = 1  # DataLoader processes (0: in the training process)
    max_val: int = 1000  # validation images at most (SBI: real + as many blends)
    curriculum_samples: int = 0  # SBI: ease from easy blends to the paper's over this many samples
    curriculum_strength: float = 2.0
    # optimisation
    batch_size: int = 64  # images per step per process (SBI: half real, half their blends)
    lr: float = 5e-4
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    beta1: float = 0.9
    beta2: float = 0.999
    warmup_steps: int = 100
    max_steps: int = 1000
    label_smoothing: float = 0.1
    grad_clip: float = 1.0  # 0: off
    ema: float = 0.0  # EMA decay of the weights (0: off); validation and the final model use the EMA
    # distillation (DeiT-style soft targets) from a full-precision teacher checkpoint
    teacher: str | None = None
    distill_alpha: float = 0.5  # weight of the soft loss
    distill_tau: float = 2.0
    # bookkeeping
    seed: int = 0
    eval_every: int = 200
    ckpt_every: int = 200
    log_every: int = 10
    max_minutes: float = 0.0  # stop with a checkpoint after this much training time (0: no limit)
    schedule: str = "steps"  # cosine over max_steps, or "time": over max_minutes (for a shared machine
    # whose speed is unknown in advance; warm-up stays in steps; resumes carry the elapsed time)
    threads: int = 0  # torch threads (0: default)
    device: str = "auto"  # auto | cpu | cuda
    amp: bool = True  # bf16 autocast on CUDA
    progress: bool = True

    def __post_init__(self) -> None:
        problems = []
        if self.task not in TASKS:
            problems.append(f"task {self.task!r} not in {TASKS}")
        if self.batch_size < 1 or self.max_steps < 1:
            problems.append("batch_size and max_steps must be >= 1")
        if self.task == "detect" and self.sbi and self.batch_size % 2:
            problems.append("with sbi the batch holds real/blend pairs: batch_size must be even")
        if self.schedule not in ("steps", "time") or (self.schedule == "time" and self.max_minutes <= 0):
            problems.append("schedule is steps or time (time needs max_minutes > 0)")
        if not 0 <= self.ema < 1:
            problems.append("ema must lie in [0, 1)")
        if not 0 <= self.distill_alpha <= 1:
            problems.append("distill_alpha must lie in [0, 1]")
        if problems:
            raise EdgedfError("invalid training config: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise EdgedfError(f"unknown training config field(s): {', '.join(unknown)}")
        defaults = cls()
        d = dict(d)
        for k, v in d.items():  # YAML reads 1e-3 as a string and 1 as an int: coerce to the field's type
            default = getattr(defaults, k)
            try:
                if isinstance(default, bool) or default is None or k == "model":
                    continue
                if isinstance(default, float) and isinstance(v, (int, str)) and not isinstance(v, bool):
                    d[k] = float(v)
                elif isinstance(default, int) and isinstance(v, (str, float)) and float(v) == int(float(v)):
                    d[k] = int(float(v))
            except ValueError:
                raise EdgedfError(f"invalid training config: {k}={v!r} is not a number") from None
        try:
            return cls(**d)
        except TypeError as e:
            raise EdgedfError(f"invalid training config: {e}") from None


def apply_overrides(d: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`key=value` (value parsed as YAML); `model.key=value` sets a model field."""
    d = dict(d)
    d["model"] = dict(d["model"] if d.get("model") is not None else TrainConfig().model)
    for o in overrides:
        key, sep, raw = o.partition("=")
        if not sep or not key:
            raise EdgedfError(f"override {o!r} is not key=value")
        value = yaml.safe_load(raw) if raw else None
        if key.startswith("model."):
            d["model"][key[len("model.") :]] = value
        else:
            d[key] = value
    return d


def load_config(path: str | os.PathLike | None, overrides: list[str] | None = None) -> TrainConfig:
    d: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise EdgedfError(f"config not found: {p}")
        try:
            d = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise EdgedfError(f"{p} is not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(d, dict):
            raise EdgedfError(f"{p}: expected a mapping of config fields")
    return TrainConfig.from_dict(apply_overrides(d, overrides or []))
