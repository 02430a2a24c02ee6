"""`edgedf models check`: does a model build, run forward and backward, and does the ternary inference
form (packed 2-bit codes) give the training form's output? A quick health check for a fresh install."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .bitlinear import to_inference
from .checkpoint import load_checkpoint
from .vit import VisionTransformer, ViTConfig, build_model, count_params


@dataclass
class SmokeResult:
    name: str
    variant: str
    params: int
    forward_ms: float
    backward_ok: bool
    inference_max_diff: float | None  # bit variant: max |logit(TernaryLinear) - logit(BitLinear)|

    @property
    def ok(self) -> bool:
        return self.backward_ok and (self.inference_max_diff is None or self.inference_max_diff < 1e-3)


def check_model(model: VisionTransformer, name: str, batch: int = 4, seed: int = 0) -> SmokeResult:
    cfg = model.cfg
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cfg.in_chans, cfg.img_size, cfg.img_size, generator=g)
    model.eval()
    with torch.no_grad():
        model(x)  # warm-up
        t0 = time.perf_counter()
        logits = model(x)
        forward_ms = (time.perf_counter() - t0) * 1000 / batch
    finite = bool(torch.isfinite(logits).all())

    model.train()
    model.zero_grad(set_to_none=True)
    model(x).logsumexp(-1).mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    backward_ok = finite and all(gr is not None and torch.isfinite(gr).all() for gr in grads)
    model.zero_grad(set_to_none=True)
    model.eval()

    diff = None
    if cfg.variant == "bit":
        inf = to_inference(copy.deepcopy(model)).eval()
        with torch.no_grad():
            diff = float((inf(x) - logits).abs().max())
    return SmokeResult(name, cfg.variant, count_params(model), forward_ms, backward_ok, diff)


def smoke_check(checkpoint: Path | None, batch: int = 4, img_size: int = 224) -> list[SmokeResult]:
    if checkpoint is not None:
        ck = load_checkpoint(checkpoint)
        return [check_model(ck.model, str(checkpoint), batch)]
    torch.manual_seed(0)
    return [
        check_model(build_model(ViTConfig.from_preset("vit_tiny", variant=v, img_size=img_size)), "vit_tiny", batch)
        for v in ("fp", "bit")
    ]
