"""`edgedf models check`: does a model build, run forward and backward, and does the ternary inference
form (packed 2-bit codes) give the training form's output? A quick health check for a fresh install."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .bitlinear import RMSNorm, to_inference
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


def perturb(model: VisionTransformer, seed: int = 0, logit_std: float = 3.0) -> VisionTransformer:
    """Make a freshly initialised model a fair test subject (for export and parity tests), in place:
    random biases, norm weights and norm biases (a fresh model has zeros and ones, so a dropped bias or norm
    weight would go unseen), block weights of a trained model's size, and the head scaled so that logit
    differences on random images have std `logit_std`: p spread over (0, 1) like a trained model's, not
    saturated at 0 and 1, where errors hide."""
    g = torch.Generator().manual_seed(seed)
    norms = (nn.LayerNorm, RMSNorm, nn.BatchNorm2d)
    with torch.no_grad():
        # a trained ViT's block weights are several times the 0.02 init; at init the blocks barely change the
        # tokens, features hardly depend on the input, and the head would have to amplify noise
        for name, p in model.named_parameters():
            if name.startswith("blocks.") and p.dim() == 2:
                p.mul_(5.0)
        for m in model.modules():
            bias = getattr(m, "bias", None)
            if isinstance(bias, torch.Tensor) and bias.dtype.is_floating_point:
                bias.copy_(0.1 * torch.randn(bias.shape, generator=g))
            if isinstance(m, norms) and getattr(m, "weight", None) is not None:
                m.weight.copy_(1.0 + 0.2 * torch.randn(m.weight.shape, generator=g))
        cfg = model.cfg
        # smooth random images (upsampled noise) in the usual normalised range: closer to real inputs than white noise
        # with a random contrast and colour each, so pooled features differ between images as a trained model's do
        n, c, s = 64, cfg.in_chans, max(1, cfg.img_size // 8)
        small = torch.rand(n, c, s, s, generator=g) * (0.2 + torch.rand(n, 1, 1, 1, generator=g))
        small = small + 0.6 * torch.rand(n, c, 1, 1, generator=g)
        x = (F.interpolate(small, size=cfg.img_size, mode="bicubic", align_corners=False) - 0.5) / 0.5
        was = model.training
        model.eval()
        model.head.bias.zero_()
        logits = model(x)
        model.train(was)
        diff = logits[:, -1] - logits[:, 0] if logits.shape[1] > 1 else logits[:, 0]
        k = logit_std / float(diff.std().clamp(min=1e-6))
        model.head.weight.mul_(k)
        model.head.bias[-1] = -float((diff * k).median())  # centred: about half the inputs each side of p = 0.5
    return model


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
