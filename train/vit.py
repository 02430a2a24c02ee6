"""One VisionTransformer for both variants: the full-precision and the BitLinear ViT differ only in the
`linear_layer` factory handed to the blocks (timm's vision_transformer.py is the model followed, and
parameter names match timm's so timm/DeiT checkpoints map onto it).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .bitlinear import NORMS, BitLinear

VARIANTS = ("fp", "bit")
STEMS = ("patch", "conv", "lite0")

# name -> (dim, depth, heads); all patch 16 at 224 px, mlp_ratio 4 (ViT-Ti/S/B of DeiT and timm)
PRESETS: dict[str, dict[str, int]] = {
    "vit_tiny": {"dim": 192, "depth": 12, "heads": 3},
    "vit_small": {"dim": 384, "depth": 12, "heads": 6},
    "vit_base": {"dim": 768, "depth": 12, "heads": 12},
}


@dataclass
class ViTConfig:
    preset: str | None = "vit_tiny"
    variant: str = "fp"  # fp | bit
    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 2
    dim: int = 192
    depth: int = 12
    heads: int = 3
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    stem: str = "patch"  # patch | conv | lite0 (EfficientNet-Lite0's first 11 blocks, train/effnet.py)
    bit_norm: str = "rms"  # the norm inside BitLinear: rms | layer
    quantize_stem: bool = False  # patch embedding stays full precision unless asked
    quantize_head: bool = False  # classification head likewise
    qat: bool = False  # fp variant with int8 fake-quant block linears (train/qat.py)
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    # head input: the cls token ("token", as timm's default) or the mean of the patch tokens ("avg": with
    # a pretrained stem and few fresh blocks the head sees the stem's features from the first step;
    # Beyer et al. 2022 found average pooling better for plain ViTs too)
    global_pool: str = "token"
    stem_blocks: int = 11  # lite0: MBConv blocks in the stem (11: stride 16; 16, the whole trunk: stride 32)

    def __post_init__(self) -> None:
        problems = []
        if self.variant not in VARIANTS:
            problems.append(f"variant {self.variant!r} not in {VARIANTS}")
        if self.stem not in STEMS:
            problems.append(f"stem {self.stem!r} not in {STEMS}")
        if self.bit_norm not in NORMS:
            problems.append(f"bit_norm {self.bit_norm!r} not in {NORMS}")
        if self.patch_size < 1 or self.img_size % self.patch_size:
            problems.append(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        if self.stem == "conv" and (self.patch_size < 2 or self.patch_size & (self.patch_size - 1)):
            problems.append(f"the conv stem needs a power-of-two patch_size, got {self.patch_size}")
        if self.global_pool not in ("token", "avg"):
            problems.append(f"global_pool {self.global_pool!r} not in ('token', 'avg')")
        if self.stem == "lite0":
            from .effnet import lite0_stride

            stride = lite0_stride(self.stem_blocks)
            if not 6 <= self.stem_blocks <= 16:
                problems.append(f"stem_blocks must lie in 6..16 (stride 16 or 32), got {self.stem_blocks}")
            elif self.patch_size != stride:
                problems.append(f"the lite0 stem with {self.stem_blocks} blocks has stride {stride}: "
                                f"patch_size must be {stride}, got {self.patch_size}")  # fmt: skip
        if self.dim % self.heads:
            problems.append(f"dim {self.dim} is not divisible by heads {self.heads}")
        if self.variant == "bit" and self.dim % 4:
            problems.append(f"the bit variant packs 4 weights a byte: dim {self.dim} must be a multiple of 4")
        if self.qat and self.variant != "fp":
            problems.append("qat applies to the fp variant only")
        if self.variant == "bit" and int(self.dim * self.mlp_ratio) % 4:
            problems.append("the bit variant packs 4 weights a byte: dim * mlp_ratio must be a multiple of 4")
        if self.num_classes < 1 or self.depth < 0 or (self.depth == 0 and self.global_pool != "avg"):
            problems.append(
                "num_classes must be >= 1 and depth >= 1 (depth 0, a plain stem classifier, needs avg pool)"
            )
        if problems:
            raise ValueError("; ".join(problems))

    @classmethod
    def from_preset(cls, preset: str, **overrides: Any) -> ViTConfig:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        overrides = {k: v for k, v in overrides.items() if v is not None}
        return cls(preset=preset, **{**PRESETS[preset], **overrides})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ViTConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown model field(s): {', '.join(unknown)}")
        return cls(**d)

    @property
    def grid(self) -> int:
        return self.img_size // self.patch_size


class PatchEmbed(nn.Module):
    """Strided patch embedding (stem='patch'), a stack of strided 3x3 convs (stem='conv'), or the first
    blocks of EfficientNet-Lite0 (stem='lite0', ImageNet-pretrained; train/effnet.py).

    The conv stem follows Xiao et al. 2021 ("Early Convolutions Help Transformers See Better"):
    log2(patch) stride-2 3x3 conv-BN-ReLU layers, channels doubling up to dim, then a 1x1 conv
    (`proj`) to dim, ending in the same token grid as the patch stem. The lite0 stem ends in the same
    grid (stride 16) with 112 channels, projected to dim the same way.
    """

    def __init__(
        self, img_size: int, patch_size: int, in_chans: int, dim: int, stem: str = "patch", stem_blocks: int = 11
    ):
        super().__init__()
        self.grid = img_size // patch_size
        self.num_patches = self.grid * self.grid
        if stem == "patch":
            self.stem = nn.Identity()
            self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)
        elif stem == "lite0":
            from .effnet import Lite0Trunk

            self.stem = Lite0Trunk(img_size, stem_blocks)
            self.proj = nn.Conv2d(self.stem.out_channels, dim, kernel_size=1)
        else:
            n = int(math.log2(patch_size))
            chans = [max(dim >> (n - i), 16) for i in range(1, n + 1)]  # e.g. dim 192, p16: 24 48 96 192
            layers: list[nn.Module] = []
            c_in = in_chans
            for c in chans:
                layers += [
                    nn.Conv2d(c_in, c, 3, stride=2, padding=1, bias=False),
                    nn.BatchNorm2d(c),
                    nn.ReLU(inplace=True),
                ]
                c_in = c
            self.stem = nn.Sequential(*layers)
            self.proj = nn.Conv2d(c_in, dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(self.stem(x))  # [B, D, g, g]
        return x.flatten(2).transpose(1, 2)  # [B, g*g, D]


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, qkv_bias: bool, linear_layer: Callable[..., nn.Module]):
        super().__init__()
        self.heads = heads
        self.qkv = linear_layer(dim, dim * 3, bias=qkv_bias)
        self.proj = linear_layer(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(x.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, linear_layer: Callable[..., nn.Module], drop: float = 0.0):
        super().__init__()
        self.fc1 = linear_layer(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = linear_layer(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.act(self.fc1(x))))


class DropPath(nn.Module):
    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class Block(nn.Module):
    def __init__(
        self,
        dim: int,
        heads: int,
        mlp_ratio: float,
        qkv_bias: bool,
        linear_layer: Callable[..., nn.Module],
        pre_norm: bool,
        drop: float,
        drop_path: float,
    ):
        super().__init__()
        # BitLinear normalises its own input, so the pre-norms would be applied twice (bitlinear.py).
        self.norm1 = nn.LayerNorm(dim, eps=1e-6) if pre_norm else nn.Identity()
        self.attn = Attention(dim, heads, qkv_bias, linear_layer)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6) if pre_norm else nn.Identity()
        self.mlp = Mlp(dim, int(dim * mlp_ratio), linear_layer, drop)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def linear_factory(cfg: ViTConfig) -> Callable[..., nn.Module]:
    if cfg.variant == "bit":
        return partial(BitLinear, norm=cfg.bit_norm)
    if cfg.qat:
        from .qat import QATLinear

        return QATLinear
    return nn.Linear


class VisionTransformer(nn.Module):
    """ViT classifier (cls token, learned position embedding, pre-norm blocks); logits [B, num_classes]."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        linear = linear_factory(cfg)
        pre_norm = cfg.variant == "fp"  # BitLinear brings its own input norm (BitLinear.normalizes_input)
        self.patch_embed = PatchEmbed(cfg.img_size, cfg.patch_size, cfg.in_chans, cfg.dim, cfg.stem, cfg.stem_blocks)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.patch_embed.num_patches, cfg.dim))
        self.pos_drop = nn.Dropout(cfg.drop_rate)
        dpr = [cfg.drop_path_rate * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]  # stochastic depth
        self.blocks = nn.Sequential(
            *[
                Block(cfg.dim, cfg.heads, cfg.mlp_ratio, cfg.qkv_bias, linear, pre_norm, cfg.drop_rate, dpr[i])
                for i in range(cfg.depth)
            ]
        )
        self.norm = nn.LayerNorm(cfg.dim, eps=1e-6)
        head_linear = linear if cfg.quantize_head else nn.Linear
        self.head = head_linear(cfg.dim, cfg.num_classes)
        if cfg.quantize_stem and cfg.variant == "bit":
            raise ValueError("quantize_stem is not supported yet: the stem is a convolution")
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):  # BitLinear included
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.norm(self.blocks(self.pos_drop(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        return self.head(x[:, 1:].mean(1) if self.cfg.global_pool == "avg" else x[:, 0])


def build_model(cfg: ViTConfig, device: str | torch.device | None = None) -> VisionTransformer:
    if device is not None and str(device) == "meta":
        with torch.device("meta"):
            return VisionTransformer(cfg)
    return VisionTransformer(cfg).to(device) if device is not None else VisionTransformer(cfg)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def block_linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """The linears inside the transformer blocks: the ones BitLinear/PTQ/QAT act on."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.startswith("blocks.")]


def size_bytes(cfg: ViTConfig) -> dict[str, int]:
    """Serialized weight size per precision (weights only; graph overhead is small and backend-specific).

    fp32: every parameter 4 bytes. int8: Linear/Conv weights 1 byte plus one fp32 scale per output
    channel, the rest fp32. ternary: the block linears of the BitLinear variant 2 bits a weight plus one
    fp32 scale per tensor, the rest (stem, norms, biases, head) fp32.
    """
    fp = build_model(dataclasses.replace(cfg, variant="fp", qat=False), device="meta")
    bit = build_model(dataclasses.replace(cfg, variant="bit", qat=False), device="meta")
    fp32 = 4 * count_params(fp)
    int8 = fp32
    for m in fp.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            int8 -= 3 * m.weight.numel() - 4 * m.weight.shape[0]
    ternary = 4 * count_params(bit)
    for _, m in block_linears(bit):
        if isinstance(m, BitLinear):
            n, k = m.weight.shape
            ternary -= 4 * m.weight.numel() - (n * math.ceil(k / 4) + 4)
    return {"fp32": fp32, "int8": int8, "ternary": ternary}


def resample_pos_embed(pos: torch.Tensor, grid: int) -> torch.Tensor:
    """Bicubic resampling of a [1, 1 + g*g, D] position embedding to a new grid (cls token kept)."""
    cls, patches = pos[:, :1], pos[:, 1:]
    old = int(round(math.sqrt(patches.shape[1])))
    if old * old != patches.shape[1]:
        raise ValueError(f"position embedding of {patches.shape[1]} patches is not a square grid")
    if old == grid:
        return pos
    p = patches.reshape(1, old, old, -1).permute(0, 3, 1, 2).float()
    p = F.interpolate(p, size=(grid, grid), mode="bicubic", align_corners=False)
    p = p.permute(0, 2, 3, 1).reshape(1, grid * grid, -1).to(pos.dtype)
    return torch.cat([cls, p], dim=1)
