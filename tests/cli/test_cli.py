import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from edgedf.cli import app
from edgedf.train.checkpoint import load_checkpoint
from edgedf.train.vit import ViTConfig, build_model

runner = CliRunner()
SMALL = ["--img-size", "32", "--patch-size", "8", "--dim", "32", "--depth", "2", "--heads", "2"]


def test_help_lists_command_groups():
    r = runner.invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0
    for group in ("models", "train", "eval", "prepare", "export", "run", "bench", "report"):
        assert group in r.output


def test_models_lists_presets_with_sizes():
    r = runner.invoke(app, ["models"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    for name in ("vit_tiny", "vit_small", "vit_base"):
        assert name in r.output
    assert "5.52 M" in r.output  # vit_tiny, 2 classes
    assert "86.67" in r.output  # vit_small fp32 MB


def test_models_init_and_load(tmp_path):
    out = tmp_path / "ck"
    r = runner.invoke(app, ["models", "init", "vit_tiny", "--variant", "bit", *SMALL, "--out", str(out)])
    assert r.exit_code == 0, r.output
    ck = load_checkpoint(out)
    assert ck.config.variant == "bit" and ck.config.dim == 32 and ck.config.preset == "vit_tiny"
    assert ck.model(torch.randn(1, 3, 32, 32)).shape == (1, 2)
    # same seed -> same weights
    out2 = tmp_path / "ck2"
    assert (
        runner.invoke(app, ["models", "init", "vit_tiny", "--variant", "bit", *SMALL, "--out", str(out2)]).exit_code
        == 0
    )
    assert torch.equal(load_checkpoint(out2).model.pos_embed, ck.model.pos_embed)
    r = runner.invoke(app, ["models", "check", str(out)])
    assert r.exit_code == 0, r.output
    assert "✅" in r.output


def test_models_init_from_file(tmp_path):
    src = build_model(ViTConfig(preset=None, img_size=32, patch_size=8, dim=32, depth=2, heads=2, num_classes=10))
    f = tmp_path / "w.safetensors"
    save_file(src.state_dict(), str(f))
    out = tmp_path / "ck"
    r = runner.invoke(app, ["models", "init", "vit_tiny", *SMALL, "--from", str(f), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "loaded" in r.output
    assert torch.equal(load_checkpoint(out).model.blocks[0].mlp.fc1.weight, src.blocks[0].mlp.fc1.weight)


@pytest.mark.parametrize(
    "args, message",
    [
        (["models", "init", "vit_huge", "--out", "{tmp}/a"], "unknown preset"),
        (["models", "init", "vit_tiny", "--variant", "int2", "--out", "{tmp}/a"], "variant"),
        (["models", "init", "vit_tiny", "--img-size", "100", "--out", "{tmp}/a"], "multiple of patch_size"),
        (["models", "init", "vit_tiny", "--from", "{tmp}/none.safetensors", "--out", "{tmp}/a"], "not found"),
        (["models", "init", "vit_tiny", "--out", "{tmp}"], "already exists"),
        (["models", "check", "{tmp}/missing"], "checkpoint not found"),
    ],
)
def test_bad_input_one_line_nonzero(tmp_path, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    r = runner.invoke(app, args)
    assert r.exit_code == 2, r.output
    assert message in r.output
    assert "Traceback" not in r.output
    assert not (tmp_path / "a").exists()


def test_console_script_and_module_entry():
    r = subprocess.run(
        [sys.executable, "-m", "edgedf", "targets"], capture_output=True, text=True, env={"COLUMNS": "200", "PATH": ""}
    )
    assert r.returncode == 0, r.stderr
    assert "jetson" in r.stdout and "tensorrt" in r.stdout


NO_TORCH = """
import sys
sys.modules["torch"] = None  # any import of torch now raises ImportError
import edgedf.runtime, edgedf.devices, edgedf.cli
from typer.testing import CliRunner
r = CliRunner().invoke(edgedf.cli.app, ["targets"])
assert r.exit_code == 0, r.output
r = CliRunner().invoke(edgedf.cli.app, ["models"])
assert r.exit_code == 2 and "edgedf[train]" in r.output, r.output
print("ok")
"""


def test_device_side_works_without_torch():
    r = subprocess.run([sys.executable, "-c", NO_TORCH], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


def test_tables_are_complete_when_piped():
    """Not on a terminal (a pipe, `| tee`, a CI log), tables keep every column whole, not cut to 80."""
    import os

    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    out = subprocess.run([sys.executable, "-m", "edgedf", "models"], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert "vit_small" in out.stdout and "343.20" in out.stdout and "fp32/ternary" in out.stdout
    assert "…" not in out.stdout


def test_machine_readable_tables():
    """--format json|csv for scripts: raw numbers, every row; a bad format is one line."""
    import csv
    import io
    import json

    models = json.loads(runner.invoke(app, ["models", "--format", "json"]).stdout)
    tiny = next(m for m in models if m["preset"] == "vit_tiny")
    assert tiny["dim"] == 192 and tiny["params_fp"] == 5524802 and tiny["fp32_bytes"] > tiny["ternary_bytes"]
    rows = list(csv.DictReader(io.StringIO(runner.invoke(app, ["targets", "--format", "csv"]).stdout)))
    assert {r["target"] for r in rows} >= {"jetson", "cpu", "rpi", "rpi4", "ort"}
    assert next(r for r in rows if r["target"] == "jetson")["backend"] == "tensorrt"
    r = runner.invoke(app, ["targets", "--format", "xml"])
    assert r.exit_code == 2 and "--format must be table, json or csv" in r.output
