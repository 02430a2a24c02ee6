import json

import pytest
import torch
from safetensors.torch import save_file

from edgedf.runtime.errors import EdgedfError
from edgedf.runtime.spec import FaceCropSpec
from edgedf.train import checkpoint as ckpt_mod
from edgedf.train.checkpoint import init_from_file, load_checkpoint, read_config, save_checkpoint
from edgedf.train.vit import ViTConfig, build_model


def small(**kw) -> ViTConfig:
    base = dict(preset=None, img_size=32, patch_size=8, dim=32, depth=2, heads=2)
    base.update(kw)
    return ViTConfig(**base)


@pytest.fixture()
def saved(tmp_path):
    torch.manual_seed(0)
    model = build_model(small(variant="bit")).eval()
    out = save_checkpoint(model, tmp_path / "ck", meta={"note": "test"})
    return model, out


def test_roundtrip(saved):
    model, out = saved
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    ck = load_checkpoint(out)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(ck.model(x), model(x))
    assert ck.config == model.cfg
    assert ck.labels == ["real", "fake"]
    assert ck.spec == FaceCropSpec(input_size=32)
    assert ck.meta == {"note": "test"}
    cfg = read_config(out / "config.json")
    assert cfg["arch"] == "vit" and cfg["model"]["variant"] == "bit" and len(cfg["weights"]["sha256"]) == 64


def test_missing_checkpoint(tmp_path):
    with pytest.raises(EdgedfError, match="not found"):
        load_checkpoint(tmp_path / "nope")


def test_missing_config(saved):
    _, out = saved
    (out / "config.json").unlink()
    with pytest.raises(EdgedfError, match="has no config.json"):
        load_checkpoint(out)


def test_corrupt_config_json(saved):
    _, out = saved
    (out / "config.json").write_text("{not json")
    with pytest.raises(EdgedfError, match="not valid JSON"):
        load_checkpoint(out)


def test_corrupted_weights_detected(saved):
    _, out = saved
    data = bytearray((out / "model.safetensors").read_bytes())
    data[-10] ^= 0xFF
    (out / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(EdgedfError, match="corrupted"):
        load_checkpoint(out)


def test_truncated_weights_without_hash(saved):
    _, out = saved
    cfg = json.loads((out / "config.json").read_text())
    cfg["weights"].pop("sha256")
    (out / "config.json").write_text(json.dumps(cfg))
    data = (out / "model.safetensors").read_bytes()
    (out / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(EdgedfError, match="cannot read"):
        load_checkpoint(out)


def test_newer_format_version(saved):
    _, out = saved
    cfg = json.loads((out / "config.json").read_text())
    cfg["format_version"] = 99
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(EdgedfError, match="format version 99"):
        load_checkpoint(out)


def test_config_weights_mismatch(saved):
    _, out = saved
    cfg = json.loads((out / "config.json").read_text())
    cfg["model"]["depth"] = 3
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(EdgedfError, match="does not match its config.*missing: blocks.2"):
        load_checkpoint(out)


def test_not_a_checkpoint(tmp_path):
    f = tmp_path / "model.pt"
    f.write_bytes(b"\x80\x04pickle")
    with pytest.raises(EdgedfError, match="not a checkpoint directory"):
        load_checkpoint(f)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "config.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(EdgedfError, match="not an edgedf checkpoint file"):
        load_checkpoint(tmp_path / "d")


def test_save_is_atomic(tmp_path, monkeypatch):
    model = build_model(small())

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod, "atomic_write_json", boom)
    with pytest.raises(OSError):
        save_checkpoint(model, tmp_path / "ck")
    assert list(tmp_path.iterdir()) == []  # no half-written directory, no temp left behind


def test_save_refuses_existing_and_mismatches(tmp_path):
    model = build_model(small())
    save_checkpoint(model, tmp_path / "ck")
    with pytest.raises(EdgedfError, match="already exists"):
        save_checkpoint(model, tmp_path / "ck")
    with pytest.raises(EdgedfError, match="labels"):
        save_checkpoint(model, tmp_path / "ck2", labels=["a", "b", "c"])
    with pytest.raises(EdgedfError, match="input_size"):
        save_checkpoint(model, tmp_path / "ck3", spec=FaceCropSpec(input_size=64))


def timm_like_state(cfg: ViTConfig, num_classes=1000, distilled=False) -> dict[str, torch.Tensor]:
    """A state dict laid out as timm's VisionTransformer saves it (built here, no download)."""
    torch.manual_seed(7)
    src = build_model(ViTConfig(**{**cfg.to_dict(), "variant": "fp", "num_classes": num_classes}))
    state = {f"module.{k}": v.clone() for k, v in src.state_dict().items()}
    if distilled:  # DeiT: a dist token and its own position slot, a second head
        state["module.dist_token"] = torch.randn(1, 1, cfg.dim)
        pos = state["module.pos_embed"]
        state["module.pos_embed"] = torch.cat([pos[:, :1], torch.randn(1, 1, cfg.dim), pos[:, 1:]], dim=1)
        state["module.head_dist.weight"] = torch.randn(num_classes, cfg.dim)
    return state


def test_init_from_timm_state(tmp_path):
    src_cfg = small(img_size=64)
    state = timm_like_state(src_cfg, distilled=True)
    f = tmp_path / "deit.safetensors"
    save_file(state, str(f))
    model = build_model(small(img_size=32))  # other image size: pos_embed resampled 8x8 -> 4x4
    report = init_from_file(model, f)
    sd = model.state_dict()
    assert torch.equal(sd["blocks.1.attn.qkv.weight"], state["module.blocks.1.attn.qkv.weight"])
    assert sd["pos_embed"].shape == (1, 17, 32)
    assert torch.equal(sd["pos_embed"][:, :1], state["module.pos_embed"][:, :1])
    assert "head.weight" in report.skipped  # 1000 classes vs 2: re-initialised
    assert "dist_token" in report.unexpected and "head_dist.weight" in report.unexpected
    assert "blocks.0.norm1.weight" in report.loaded


def test_init_bit_variant_moves_prenorms(tmp_path):
    cfg = small()
    state = timm_like_state(cfg)
    f = tmp_path / "vit.safetensors"
    save_file(state, str(f))
    model = build_model(small(variant="bit", bit_norm="layer"))
    init_from_file(model, f)
    sd = model.state_dict()
    assert torch.equal(sd["blocks.0.attn.qkv.norm.weight"], state["module.blocks.0.norm1.weight"])
    assert torch.equal(sd["blocks.0.mlp.fc1.norm.bias"], state["module.blocks.0.norm2.bias"])
    assert torch.equal(sd["blocks.0.mlp.fc2.weight"], state["module.blocks.0.mlp.fc2.weight"])


def test_init_from_bad_files(tmp_path):
    model = build_model(small())
    with pytest.raises(EdgedfError, match="not found"):
        init_from_file(model, tmp_path / "x.safetensors")
    pt = tmp_path / "x.pth"
    pt.write_bytes(b"pickle")
    with pytest.raises(EdgedfError, match="no pickles"):
        init_from_file(model, pt)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 20)
    with pytest.raises(EdgedfError, match="cannot read"):
        init_from_file(model, junk)
    other = tmp_path / "other.safetensors"
    save_file({"foo.weight": torch.zeros(3)}, str(other))
    with pytest.raises(EdgedfError, match="no tensor that fits"):
        init_from_file(model, other)
