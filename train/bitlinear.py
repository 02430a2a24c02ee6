"""BitLinear, exactly as BitNet b1.58 (Ma et al. 2024, and its "training tips" note) defines it.

Forward of the training form, for an input x [..., K] and master weight W [N, K]:

    x_n = Norm(x)                                    RMSNorm by default, LayerNorm selectable
    s   = 127 / max(|x_n|, eps)   over the last dim  per-token absmax, int8
    x_q = Clip(Round(x_n * s), -128, 127) / s
    g   = mean(|W|)                                  per-tensor absmean
    W_q = RoundClip(W / (g + eps), -1, 1) * g        ternary {-1, 0, +1} * g
    y   = x_q @ W_q^T + b

Both quantisers use the straight-through estimator `v + (q(v) - v).detach()`, so gradients reach the
full-precision master weights (and the normalised activations) as if quantisation were the identity.

Why the norm lives inside BitLinear: BitNet places a normalisation right before every activation
quantiser (SubLN), because absmax scaling is only well conditioned on normalised inputs. In the ViT this
makes the block's own pre-norms (norm1 before qkv, norm2 before fc1) redundant, so the BitLinear ViT drops
them (`VisionTransformer` replaces them by Identity); attn.proj and mlp.fc2 get a norm they did not
have before, as in BitNet. The final norm before the full-precision head stays.

`TernaryLinear` is the inference form: codes and g are computed once and stored 2-bit packed
(`pack_ternary`), which is also what the canonical ONNX op carries.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

EPS = 1e-5
NORMS = ("rms", "layer")


def _ste(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Straight-through: forward q, backward identity. Skipped (exact q) when no grad is needed."""
    if not (torch.is_grad_enabled() and x.requires_grad):
        return q
    return x + (q - x).detach()


def token_scale(xf: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """The per-token scale 127 / absmax as one correctly rounded float32 division, as ONNX's Div computes it.

    `127.0 / tensor` would not do: PyTorch evaluates a scalar over a tensor as `tensor.reciprocal() * 127`,
    two roundings, which differ from the true quotient in about a quarter of values and move codes that
    sit on a .5 boundary. Tensor over tensor is a true division.
    """
    amax = xf.abs().amax(dim=-1, keepdim=True).clamp(min=eps)
    return amax.new_tensor(127.0) / amax


def activation_quant(x: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Per-token absmax int8 fake quantisation over the last dim; computed in float32, returned in x.dtype.

    fp16/bf16 inputs are upcast first: their own rounding of x*s could move values across .5 boundaries,
    and eps=1e-5 is below fp16's normal range.
    """
    xf = x.float()
    scale = token_scale(xf, eps)
    return ((xf * scale).round().clamp(-128, 127) / scale).to(x.dtype)


def activation_quant_int8(x: torch.Tensor, eps: float = EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """The integer form of `activation_quant`: int8 codes and the per-token scale s (x ~= codes / s)."""
    xf = x.float()
    scale = token_scale(xf, eps)
    return (xf * scale).round().clamp(-128, 127).to(torch.int8), scale


def ternary_codes(w: torch.Tensor, eps: float = EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """Ternary codes in {-1, 0, 1} (int8) and the per-tensor absmean scale g (float32 scalar tensor)."""
    wf = w.detach().float()
    gamma = wf.abs().mean()
    codes = (wf / (gamma + eps)).round().clamp(-1, 1)
    return codes.to(torch.int8), gamma


def weight_quant(w: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Effective ternary weight W_q = codes * g, in w's dtype."""
    wf = w.float()
    gamma = wf.abs().mean()
    return ((wf / (gamma + eps)).round().clamp(-1, 1) * gamma).to(w.dtype)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # sqrt + divide rather than rsqrt: both are correctly rounded in IEEE float32 and export to ONNX
        # Sqrt/Div. pow(2) (exactly x * x) exports as Pow, the form ONNX Runtime fuses into one
        # SimplifiedLayerNormalization (and OpenVINO into its RMS op): 5 fewer nodes per BitLinear
        xf = x.float()
        y = xf / torch.sqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.float()).to(x.dtype)


def make_norm(kind: str, dim: int) -> nn.Module:
    if kind == "rms":
        return RMSNorm(dim)
    if kind == "layer":
        return nn.LayerNorm(dim, eps=1e-6)
    raise ValueError(f"unknown BitLinear norm {kind!r}; choose one of {NORMS}")


class BitLinear(nn.Linear):
    """Drop-in nn.Linear with BitNet b1.58 quantisation-aware forward (see module docstring)."""

    normalizes_input = True  # tells the ViT block to drop its own pre-norm

    def __init__(self, in_features: int, out_features: int, bias: bool = True, norm: str = "rms"):
        super().__init__(in_features, out_features, bias=bias)
        self.norm_kind = norm
        self.norm = make_norm(norm, in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        x_q = _ste(x, activation_quant(x))
        w_q = _ste(self.weight, weight_quant(self.weight))
        return F.linear(x_q, w_q.to(x_q.dtype), None if self.bias is None else self.bias.to(x_q.dtype))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, norm={self.norm_kind}"

    @torch.no_grad()
    def to_inference(self) -> TernaryLinear:
        codes, gamma = ternary_codes(self.weight)
        return TernaryLinear.from_codes(
            codes, gamma, None if self.bias is None else self.bias.detach().clone(), self.norm
        )


def pack_ternary(codes: torch.Tensor) -> torch.Tensor:
    """Pack ternary codes [..., K] (values in {-1, 0, 1}) into uint8 [..., ceil(K/4)].

    Each code c is stored as the 2-bit value c + 1 (0, 1, 2; 3 is never used); element 4j + i sits in
    bits 2i..2i+1 of byte j (little-endian within the byte). A tail shorter than 4 is padded with zeros
    (code 0, stored 1).
    """
    if codes.dtype.is_floating_point:
        if not torch.equal(codes, codes.round()):
            raise ValueError("pack_ternary needs integer codes in {-1, 0, 1}")
    c = codes.to(torch.int16)
    if c.numel() and (c.min() < -1 or c.max() > 1):
        raise ValueError("pack_ternary needs codes in {-1, 0, 1}")
    k = c.shape[-1]
    pad = (-k) % 4
    if pad:
        c = F.pad(c, (0, pad), value=0)
    u = (c + 1).to(torch.uint8).reshape(*c.shape[:-1], -1, 4)
    return (u[..., 0] | (u[..., 1] << 2) | (u[..., 2] << 4) | (u[..., 3] << 6)).contiguous()


def unpack_ternary(packed: torch.Tensor, k: int) -> torch.Tensor:
    """Inverse of `pack_ternary`: uint8 [..., ceil(K/4)] -> int8 codes [..., K]."""
    if packed.dtype != torch.uint8:
        raise ValueError(f"unpack_ternary needs uint8, got {packed.dtype}")
    if packed.shape[-1] != math.ceil(k / 4):
        raise ValueError(f"{packed.shape[-1]} packed bytes cannot hold {k} codes")
    shifts = torch.tensor([0, 2, 4, 6], dtype=torch.uint8, device=packed.device)
    u = (packed.unsqueeze(-1) >> shifts) & 3
    codes = u.reshape(*packed.shape[:-1], -1)[..., :k].to(torch.int8) - 1
    return codes


class TernaryLinear(nn.Module):
    """Inference form of BitLinear: 2-bit packed codes and g computed once; same output in eval mode."""

    def __init__(self, in_features: int, out_features: int, bias: bool, norm: nn.Module):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.norm = norm
        self.register_buffer("w_packed", torch.zeros(out_features, math.ceil(in_features / 4), dtype=torch.uint8))
        self.register_buffer("w_scale", torch.ones((), dtype=torch.float32))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    @classmethod
    def from_codes(
        cls, codes: torch.Tensor, gamma: torch.Tensor, bias: torch.Tensor | None, norm: nn.Module
    ) -> TernaryLinear:
        out_features, in_features = codes.shape
        m = cls(in_features, out_features, bias is not None, norm)
        m.w_packed.copy_(pack_ternary(codes))
        m.w_scale.copy_(gamma)
        if bias is not None:
            m.bias.copy_(bias)
        return m

    def codes(self) -> torch.Tensor:
        return unpack_ternary(self.w_packed, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = activation_quant(self.norm(x))
        w = (self.codes().float() * self.w_scale).to(x.dtype)  # unpacked per call: no stale cache
        return F.linear(x, w, None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def to_inference(model: nn.Module) -> nn.Module:
    """Replace every BitLinear in `model` (in place) by its TernaryLinear inference form."""
    for name, child in list(model.named_children()):
        if isinstance(child, BitLinear):
            setattr(model, name, child.to_inference())
        else:
            to_inference(child)
    return model
