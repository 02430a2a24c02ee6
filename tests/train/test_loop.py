import json
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from edgedf.runtime.errors import EdgedfError
from edgedf.train.checkpoint import load_checkpoint
from edgedf.train.config import TrainConfig, load_config
from edgedf.train.data import StepBatchSampler
from edgedf.train.loop import build_data, build_model, load_init, lr_at, model_config, train

REPO = Path(__file__).resolve().parents[2]
TINY = {"preset": None, "variant": "bit", "dim": 32, "depth": 1, "heads": 2, "patch_size": 8, "stem": "patch"}


def tiny_cfg(crops, out, **kw) -> TrainConfig:
    base = dict(
        crops=str(crops),
        out=str(out),
        model=dict(TINY),
        batch_size=8,
        max_steps=4,
        warmup_steps=2,
        eval_every=2,
        ckpt_every=2,
        log_every=1,
        workers=0,
        threads=1,
        progress=False,
        max_val=8,
    )
    base.update(kw)
    return TrainConfig(**base)


def metrics(out):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines() if line.strip()]


def test_train_writes_run_folder_and_loadable_checkpoints(face_crops, tmp_path):
    res = train(tiny_cfg(face_crops, tmp_path / "run"))
    run = tmp_path / "run"
    assert res["step"] == 4 and 0 <= res["val_auc"] <= 1
    for p in ("model/config.json", "best/config.json", "last/state.json", "last/model/config.json", "curves.png"):
        assert (run / p).is_file(), p
    ck = load_checkpoint(run / "model")
    assert ck.config.variant == "bit" and ck.config.img_size == 32 and ck.spec.input_size == 32
    assert ck.labels == ["real", "fake"] and ck.meta["step"] == 4
    rows = metrics(run)
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]
    assert [r["step"] for r in rows if "val_auc" in r] == [2, 4]
    assert all(np.isfinite(r["loss"]) for r in rows if "loss" in r)
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["dim"] == 32


def test_stop_then_continue_from_saved_step(face_crops, tmp_path):
    run = tmp_path / "run"
    train(tiny_cfg(face_crops, run, max_steps=3, ckpt_every=10))  # the final step always checkpoints
    assert json.loads((run / "last/state.json").read_text())["step"] == 3
    res = train(tiny_cfg(face_crops, run, max_steps=5, ckpt_every=10))
    assert res["step"] == 5
    steps = [r["step"] for r in metrics(run) if "loss" in r]
    assert steps == [1, 2, 3, 4, 5]  # continued at 4, nothing repeated


@pytest.mark.slow
def test_resume_after_killed_run_matches_uninterrupted(face_crops, tmp_path):
    """Kill a training process after a checkpoint, start it again: it continues from the saved step and
    ends with exactly the weights of a run that was never interrupted (optimiser, RNG, data order)."""
    kw = dict(max_steps=30, ckpt_every=3, eval_every=1000, warmup_steps=5, lr=3e-3, ema=0.9)
    kw["model"] = {**TINY, "drop_path_rate": 0.1, "depth": 2}  # the RNG matters
    # all in fresh processes: what an earlier test set in this one (threads, matmul precision) stays out
    straight = tiny_cfg(face_crops, tmp_path / "straight", **kw)
    (tmp_path / "straight.yaml").write_text(yaml.safe_dump(straight.to_dict()))
    cmd = [sys.executable, "-m", "edgedf", "train"]
    subprocess.run([*cmd, str(tmp_path / "straight.yaml")], cwd=REPO, check=True, capture_output=True)

    killed = tiny_cfg(face_crops, tmp_path / "killed", **kw)
    cfg_file = tmp_path / "killed.yaml"
    cfg_file.write_text(yaml.safe_dump(killed.to_dict()))
    proc = subprocess.Popen([*cmd, str(cfg_file)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = tmp_path / "killed" / "last" / "state.json"
    deadline = time.time() + 120
    while not state.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    saved = json.loads(state.read_text())["step"]
    assert 0 < saved < 30, f"the run was not interrupted mid-way (saved step {saved})"

    r = subprocess.run([*cmd, str(cfg_file)], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resumed" in r.stderr and "step': 30" in r.stdout.replace("\n", "")
    a = load_file(str(tmp_path / "straight/model/model.safetensors"))
    b = load_file(str(tmp_path / "killed/model/model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    steps = [r["step"] for r in metrics(tmp_path / "killed") if "loss" in r]
    assert steps == list(range(1, 31))


def test_init_fp_to_bit_distillation_and_qat(face_crops, tmp_path):
    fp = tiny_cfg(face_crops, tmp_path / "fp", model={**TINY, "variant": "fp"}, max_steps=2)
    train(fp)
    teacher = tmp_path / "fp" / "model"
    # fp -> bit: the fp pre-norms move into the BitLinear input norms, the rest loads as is
    student = build_model(model_config(tiny_cfg(face_crops, tmp_path / "x"), 32, 2))
    note = load_init(student, str(teacher))
    t = load_checkpoint(teacher).model.state_dict()
    s = student.state_dict()
    assert torch.equal(s["patch_embed.proj.weight"], t["patch_embed.proj.weight"])
    assert torch.equal(s["blocks.0.attn.qkv.norm.weight"], t["blocks.0.norm1.weight"])
    assert torch.equal(s["blocks.0.mlp.fc2.weight"], t["blocks.0.mlp.fc2.weight"])
    assert "loaded" in note

    res = train(tiny_cfg(face_crops, tmp_path / "kd", init=str(teacher), teacher=str(teacher), max_steps=2))
    assert res["step"] == 2 and np.isfinite(res["loss"])

    train(
        tiny_cfg(
            face_crops, tmp_path / "qat", model={**TINY, "variant": "fp"}, init=str(teacher), qat=True, max_steps=2
        )
    )
    ck = load_checkpoint(tmp_path / "qat" / "model")
    assert ck.config.qat
    assert any(type(m).__name__ == "QATLinear" for m in ck.model.modules())
    with pytest.raises(EdgedfError, match="full-precision"):
        train(tiny_cfg(face_crops, tmp_path / "qat_bit", qat=True, max_steps=1))


def test_init_from_timm_style_safetensors(face_crops, tmp_path):
    torch.manual_seed(1)
    src = build_model(model_config(tiny_cfg(face_crops, tmp_path / "x", model={**TINY, "variant": "fp"}), 32, 1000))
    state = {f"module.{k}": v for k, v in src.state_dict().items()}  # a DDP-saved, 1000-class checkpoint
    save_file(state, str(tmp_path / "deit.safetensors"))
    res = train(
        tiny_cfg(
            face_crops,
            tmp_path / "ft",
            model={**TINY, "variant": "fp"},
            init=str(tmp_path / "deit.safetensors"),
            max_steps=1,
            lr=1e-9,
            warmup_steps=1,
        )
    )
    assert res["step"] == 1
    ck = load_checkpoint(tmp_path / "ft" / "model")
    torch.testing.assert_close(
        ck.model.state_dict()["blocks.0.attn.qkv.weight"],
        src.state_dict()["blocks.0.attn.qkv.weight"],
        atol=1e-6,
        rtol=0,
    )


def test_pretrain_task_on_image_folders(tmp_path):
    root = tmp_path / "imagenet"
    rng = np.random.default_rng(0)
    colours = {"red": (0, 0, 255), "green": (0, 255, 0), "blue": (255, 0, 0)}
    for split in ("train", "val"):
        for name, bgr in colours.items():
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(4):
                img = np.clip(np.array(bgr) + rng.normal(0, 30, (40, 50, 3)), 0, 255).astype(np.uint8)
                cv2.imwrite(str(d / f"{i}.png"), img)
    cfg = TrainConfig(
        task="pretrain", imagenet=str(root), out=str(tmp_path / "pre"), model={**TINY, "img_size": 32, "variant": "fp"},
        batch_size=6, max_steps=3, warmup_steps=1, eval_every=3, ckpt_every=3, workers=0, progress=False,
    )  # fmt: skip
    res = train(cfg)
    assert 0 <= res["val_acc"] <= 1
    ck = load_checkpoint(tmp_path / "pre" / "model")
    assert ck.config.num_classes == 3 and ck.labels == ["blue", "green", "red"]


def test_config_yaml_overrides_and_errors(tmp_path):
    cfg = load_config(REPO / "configs" / "sbi_bit_tiny.yaml", ["lr=2e-3", "model.depth=3"])
    assert cfg.lr == 2e-3 and cfg.model["depth"] == 3 and cfg.model["variant"] == "bit" and cfg.sbi
    assert load_config(None, ["model.dim=64"]).model == {"preset": "vit_tiny", "variant": "bit", "dim": 64}
    with pytest.raises(EdgedfError, match="unknown training config field"):
        load_config(None, ["learning_rate=1"])
    with pytest.raises(EdgedfError, match="batch_size must be even"):
        load_config(None, ["batch_size=7"])
    with pytest.raises(EdgedfError, match="not key=value"):
        load_config(None, ["lr"])


def test_lr_schedule_warmup_then_cosine():
    cfg = TrainConfig(lr=1.0, min_lr=0.0, warmup_steps=10, max_steps=110)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(60, cfg) == pytest.approx(0.5) and lr_at(110, cfg) == pytest.approx(0.0)
    timed = TrainConfig(lr=1.0, min_lr=0.0, warmup_steps=1, schedule="time", max_minutes=10)
    assert lr_at(5, timed, minutes=5.0) == pytest.approx(0.5)
    # the cosine runs from the end of warm-up: a slow start (6 of 10 minutes) leaves it whole
    assert lr_at(5, timed, minutes=6.0, warm_minutes=6.0) == pytest.approx(1.0)
    assert lr_at(5, timed, minutes=8.0, warm_minutes=6.0) == pytest.approx(0.5)


def test_time_schedule_starts_its_cosine_after_warm_up(face_crops, tmp_path):
    run = tmp_path / "run"
    train(tiny_cfg(face_crops, run, schedule="time", max_minutes=5.0, max_steps=4, eval_every=100))
    lrs = {r["step"]: r["lr"] for r in metrics(run) if "loss" in r}
    assert lrs[3] == pytest.approx(TrainConfig().lr, rel=1e-9)  # the first step after 2 warm-up steps: the top
    assert 0 < json.loads((run / "last/state.json").read_text())["warm_minutes"] < 5.0


def test_step_sampler_ranks_partition_the_global_batch_and_resume_exactly():
    one = iter(StepBatchSampler(10, 4, seed=3))
    batches = [next(one) for _ in range(5)]
    r0, r1 = (
        iter(StepBatchSampler(10, 2, seed=3, rank=0, world=2)),
        iter(StepBatchSampler(10, 2, seed=3, rank=1, world=2)),
    )
    for b in batches:
        assert next(r0) + next(r1) == b
    resumed = iter(StepBatchSampler(10, 4, seed=3, start_step=3))
    assert next(resumed) == batches[3]
    epoch0 = [i for b in batches[:2] for i, _ in b] + [i for i, _ in batches[2][:2]]
    assert sorted(epoch0) == list(range(10))  # every crop once per epoch


@pytest.mark.slow
def test_ddp_two_gloo_processes_match_one_process(face_crops, tmp_path):
    """torchrun --nproc_per_node 2 (gloo on CPU): each rank takes its half of the global batch and the
    averaged gradients give the single-process result with the same global batch."""
    # fp: a ternary weight code can flip on a 1e-7 difference in reduction order, which says nothing about DDP.
    # No qkv bias: the key bias has zero true gradient (softmax ignores a constant added to every logit of a
    # row), so its gradient is pure rounding noise, which Adam's normalisation blows up to lr-sized steps of
    # random sign; on AVX2 machines that noise differs between one and two processes.
    kw = dict(max_steps=4, eval_every=1000, ckpt_every=2, lr=3e-3, model={**TINY, "variant": "fp", "qkv_bias": False})
    single = tiny_cfg(face_crops, tmp_path / "single", batch_size=8, **kw)
    train(single)
    ddp = tiny_cfg(face_crops, tmp_path / "ddp", batch_size=4, **kw)  # per process
    cfg_file = tmp_path / "ddp.yaml"
    cfg_file.write_text(yaml.safe_dump(ddp.to_dict()))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
         "-m", "edgedf", "train", str(cfg_file)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert "world 2" in r.stderr
    a = load_file(str(tmp_path / "single/model/model.safetensors"))
    b = load_file(str(tmp_path / "ddp/model/model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)
    assert [r["step"] for r in metrics(tmp_path / "ddp") if "loss" in r] == [1, 2, 3, 4]


def test_mixed_data_balances_pairs_and_resumes_exactly(labeled_crops, face_crops):
    from edgedf.train.data import MixedDetect

    cfg = tiny_cfg(face_crops, "unused", labeled_crops=[str(labeled_crops)], sbi_weight=1.0)
    data = build_data(cfg, None)
    ds = data.train
    assert isinstance(ds, MixedDetect) and ds.images_per_item == pytest.approx(1.5)
    items = [ds[(0, n)] for n in range(200)]
    pairs = [it for it in items if len(it) == 2]
    singles = [it for it in items if len(it) == 1]
    assert 70 < len(pairs) < 130  # sbi_weight 1 of 2: half the samples are a real face + its blend
    assert all([y for _, y in p] == [0, 1] for p in pairs)
    labels = [it[0][1] for it in singles]
    assert 0.3 < np.mean(labels) < 0.7  # labelled folders are drawn balanced by label
    again = ds[(0, 7)]  # a sample is a function of its number: resumed runs see the same data
    assert all(torch.equal(a[0], b[0]) for a, b in zip(items[7], again, strict=True))
    x, y = data.collate([items[0], items[1]])
    assert len(x) == len(y) == len(items[0]) + len(items[1])
    # training batches hold exactly batch_size images whatever the mix of pairs and singles
    for size in (1, 3, 7):
        xs, ys = data.collate(items[:4], size=size)
        assert xs.shape[0] == len(ys) == size
        flat = [im for it in items[:4] for im in it]
        assert torch.equal(xs[0], flat[0][0]) and torch.equal(xs[-1], flat[(size - 1) % len(flat)][0])
    # validation: the labelled folder's non-train crops, both classes
    assert data.val is not None and {int(data.val[i][1]) for i in range(len(data.val))} == {0, 1}


def test_training_batches_have_a_fixed_size_with_pairs_and_singles(labeled_crops, face_crops):
    from edgedf.train.loop import train_loader

    cfg = tiny_cfg(face_crops, "unused", labeled_crops=[str(labeled_crops)], sbi_weight=0.5, batch_size=10)
    batches = iter(train_loader(cfg, build_data(cfg, None)))
    shapes = {tuple(next(batches)[0].shape) for _ in range(12)}
    assert shapes == {(10, 3, 32, 32)}  # without the fixed size: 8 to 14 images per step


def test_training_on_real_fakes_plus_blends(labeled_crops, face_crops, tmp_path):
    cfg = tiny_cfg(face_crops, tmp_path / "run", labeled_crops=[str(labeled_crops)], sbi_weight=0.5)
    out = train(cfg)
    assert out["step"] == 4 and "val_auc" in out
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
    bad = tiny_cfg(face_crops, tmp_path / "bad", labeled_crops=[str(labeled_crops)], labeled_weights=[1, 2])
    with pytest.raises(EdgedfError, match="labeled_weights"):
        build_data(bad, None)


def test_validation_drops_copies_of_training_faces(tmp_path):
    import cv2

    from edgedf.train.data import CropRecord
    from edgedf.train.loop import drop_near_duplicates

    rng = np.random.default_rng(0)
    faces = [cv2.GaussianBlur(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), (0, 0), 2) for _ in range(4)]
    recs = []
    for i, img in enumerate(faces + [faces[0], cv2.resize(cv2.resize(faces[1], (24, 24)), (32, 32))]):
        cv2.imwrite(str(tmp_path / f"{i}.png"), img)
        recs.append(CropRecord(f"{i}.png", f"v{i}", 0, 0))
    train_recs, val_recs = recs[:2], recs[2:]  # val: two new faces, an exact copy and a resized copy
    kept = drop_near_duplicates(tmp_path, val_recs, train_recs, 32)
    assert [r.path for r in kept] == ["2.png", "3.png"]
