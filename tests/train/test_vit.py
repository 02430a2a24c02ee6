import pytest
import torch
from torch import nn

from edgedf.train.bitlinear import BitLinear
from edgedf.train.vit import (
    PRESETS,
    ViTConfig,
    build_model,
    count_params,
    resample_pos_embed,
    size_bytes,
)

# timm's VisionTransformer: vit_tiny/small/base_patch16_224 with 1000 classes
TIMM_COUNTS = {"vit_tiny": 5_717_416, "vit_small": 22_050_664, "vit_base": 86_567_656}


@pytest.mark.parametrize("preset", list(PRESETS))
def test_preset_parameter_counts_match_timm(preset):
    cfg = ViTConfig.from_preset(preset, num_classes=1000)
    assert count_params(build_model(cfg, device="meta")) == TIMM_COUNTS[preset]


def small(**kw) -> ViTConfig:
    base = dict(preset=None, img_size=32, patch_size=8, dim=32, depth=2, heads=2)
    base.update(kw)
    return ViTConfig(**base)


@pytest.mark.parametrize("variant", ["fp", "bit"])
@pytest.mark.parametrize("stem", ["patch", "conv"])
def test_forward_backward(variant, stem):
    torch.manual_seed(0)
    model = build_model(small(variant=variant, stem=stem))
    x = torch.randn(3, 3, 32, 32)
    logits = model(x)
    assert logits.shape == (3, 2)
    nn.functional.cross_entropy(logits, torch.tensor([0, 1, 1])).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    assert model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


def test_bit_variant_structure():
    model = build_model(small(variant="bit"))
    block = model.blocks[0]
    for lin in (block.attn.qkv, block.attn.proj, block.mlp.fc1, block.mlp.fc2):
        assert isinstance(lin, BitLinear)
    assert isinstance(block.norm1, nn.Identity) and isinstance(block.norm2, nn.Identity)
    assert type(model.head) is nn.Linear  # head stays full precision by default
    assert isinstance(model.patch_embed.proj, nn.Conv2d)
    assert isinstance(model.norm, nn.LayerNorm)
    fp = build_model(small(variant="fp"))
    assert isinstance(fp.blocks[0].norm1, nn.LayerNorm)
    assert not any(isinstance(m, BitLinear) for m in fp.modules())
    qh = build_model(small(variant="bit", quantize_head=True))
    assert isinstance(qh.head, BitLinear)


def test_timm_parameter_names():
    names = set(build_model(small()).state_dict())
    for expected in (
        "patch_embed.proj.weight",
        "cls_token",
        "pos_embed",
        "blocks.0.norm1.weight",
        "blocks.1.attn.qkv.weight",
        "blocks.1.attn.qkv.bias",
        "blocks.1.attn.proj.weight",
        "blocks.0.mlp.fc1.weight",
        "blocks.0.mlp.fc2.bias",
        "norm.weight",
        "head.weight",
    ):
        assert expected in names


def test_conv_stem_token_grid():
    cfg = small(stem="conv", img_size=64, patch_size=16, dim=64)
    model = build_model(cfg)
    tokens = model.patch_embed(torch.randn(2, 3, 64, 64))
    assert tokens.shape == (2, 16, 64)
    convs = [m for m in model.patch_embed.stem if isinstance(m, nn.Conv2d)]
    assert len(convs) == 4 and all(c.stride == (2, 2) and c.kernel_size == (3, 3) for c in convs)


@pytest.mark.parametrize(
    "bad",
    [
        dict(variant="int4"),
        dict(stem="hybrid"),
        dict(img_size=30),
        dict(heads=3),
        dict(stem="conv", patch_size=6, img_size=36),
        dict(bit_norm="batch"),
        dict(num_classes=0),
    ],
)
def test_invalid_configs(bad):
    with pytest.raises(ValueError):
        small(**bad)


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown preset"):
        ViTConfig.from_preset("vit_huge")


def test_resample_pos_embed():
    pos = torch.randn(1, 1 + 14 * 14, 8)
    assert resample_pos_embed(pos, 14) is pos
    out = resample_pos_embed(pos, 7)
    assert out.shape == (1, 1 + 49, 8)
    assert torch.equal(out[:, :1], pos[:, :1])
    const = torch.ones(1, 1 + 16, 4)
    torch.testing.assert_close(resample_pos_embed(const, 6), torch.ones(1, 37, 4))


def test_size_bytes_orders_precisions():
    s = size_bytes(ViTConfig.from_preset("vit_small"))
    assert s["fp32"] == 4 * count_params(build_model(ViTConfig.from_preset("vit_small"), device="meta"))
    assert s["fp32"] > s["int8"] > s["ternary"]
    assert s["fp32"] / s["ternary"] > 12


def test_global_pool_avg_reads_the_patch_tokens_not_the_cls_token():
    import torch

    from edgedf.train.vit import ViTConfig, build_model

    torch.manual_seed(0)
    for pool in ("token", "avg"):
        m = build_model(ViTConfig(preset=None, dim=32, depth=1, heads=2, img_size=32, patch_size=8, global_pool=pool))
        m.eval()
        x = torch.randn(2, 3, 32, 32)
        feats = m.forward_features(x)
        want = feats[:, 1:].mean(1) if pool == "avg" else feats[:, 0]
        torch.testing.assert_close(m(x), m.head(want))
    with pytest.raises(ValueError, match="global_pool"):
        ViTConfig(preset=None, global_pool="max")
