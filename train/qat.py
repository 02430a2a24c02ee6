"""Int8 quantisation-aware training for the full-precision ViT (the "QAT" arm of the study).

QATLinear fake-quantises what int8 backends run: weights per output channel, symmetric
(scale = max|W_row| / 127), activations per tensor, symmetric, with a scale from an exponential moving
average of max|x| seen in training (frozen in eval). Both use straight-through estimators. The block
linears (qkv, proj, fc1, fc2) are quantised; stem and head stay fp32, as in the BitLinear ViT, so the
arms of the study differ only where they should. Export turns QATLinear into Q/DQ ONNX with these scales.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .bitlinear import _ste

QMAX = 127.0


def weight_scales(w: torch.Tensor) -> torch.Tensor:
    """Per-output-channel symmetric int8 scales [N]."""
    return (w.detach().abs().amax(dim=1).float() / QMAX).clamp(min=1e-8)


def fake_quant_weight(w: torch.Tensor) -> torch.Tensor:
    s = weight_scales(w).to(w.dtype)[:, None]
    return _ste(w, (w / s).round().clamp(-QMAX, QMAX) * s)


def fake_quant_act(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Activations as the exported int8 QuantizeLinear/DequantizeLinear pair computes them: x / s rounded
    half to even, saturated to [-128, 127] (the int8 range ONNX uses, so training sees what export runs)."""
    s = scale.to(x.dtype)
    return _ste(x, (x / s).round().clamp(-QMAX - 1, QMAX) * s)


class QATLinear(nn.Linear):
    def __init__(self, in_features: int, out_features: int, bias: bool = True, momentum: float = 0.01):
        super().__init__(in_features, out_features, bias=bias)
        self.momentum = momentum
        self.register_buffer("act_amax", torch.zeros(()))  # 0 = not observed yet

    @property
    def act_scale(self) -> torch.Tensor:
        return (self.act_amax / QMAX).clamp(min=1e-8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or self.act_amax == 0:
            with torch.no_grad():
                amax = x.detach().abs().amax().float()
                if self.act_amax == 0:
                    self.act_amax.copy_(amax)
                else:
                    self.act_amax.lerp_(amax, self.momentum)
        return F.linear(fake_quant_act(x, self.act_scale), fake_quant_weight(self.weight), self.bias)


def prepare_qat(model: nn.Module) -> nn.Module:
    """Swap the block linears of a full-precision ViT for QATLinear (weights kept), in place."""
    cfg = getattr(model, "cfg", None)
    if cfg is not None and cfg.variant != "fp":
        raise ValueError("QAT applies to the full-precision ViT; the BitLinear ViT is already quantised")
    for name, module in list(model.named_modules()):
        if not name.startswith("blocks."):
            continue
        for child_name, child in list(module.named_children()):
            if type(child) is nn.Linear:
                q = QATLinear(child.in_features, child.out_features, bias=child.bias is not None)
                q.load_state_dict(child.state_dict(), strict=False)
                q.to(child.weight.device)
                setattr(module, child_name, q)
    if cfg is not None:
        cfg.qat = True
    return model


@torch.no_grad()
def observe(model: nn.Module, batches) -> None:
    """Initialise activation ranges from a few batches (eval mode, EMA off: plain running max)."""
    model.eval()
    qs = [m for m in model.modules() if isinstance(m, QATLinear)]
    for m in qs:
        m.act_amax.zero_()

    def track(mod: QATLinear, inp: tuple[torch.Tensor, ...]) -> None:
        mod.act_amax.copy_(torch.maximum(mod.act_amax, inp[0].abs().amax().float()))

    hooks = [m.register_forward_pre_hook(track) for m in qs]
    try:
        for x in batches:
            model(x)
    finally:
        for h in hooks:
            h.remove()
