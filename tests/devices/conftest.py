"""Session fixtures: tiny checkpoints, their bundles for three targets, tampered copies, labelled folders."""

from __future__ import annotations

from pathlib import Path

import pytest
from devices_helpers import export, labelled_folder, tamper_parity, tamper_reference, tiny_checkpoint


@pytest.fixture(scope="session")
def bundles(tmp_path_factory) -> dict[str, Path]:
    pytest.importorskip("torch")
    root = tmp_path_factory.mktemp("dev_bundles")
    fp, bit = tiny_checkpoint("fp", root / "fp"), tiny_checkpoint("bit", root / "bit")
    out = {
        "ort_fp32": export(fp, "ort", "fp32", root / "ort_fp32"),
        "cpu_ternary": export(bit, "cpu", "ternary", root / "cpu_ternary"),
        "jetson_ternary": export(bit, "jetson", "ternary", root / "jetson_ternary"),
    }
    out["bad_parity"] = tamper_parity(out["ort_fp32"], root / "bad_parity", 0.9)
    out["no_parity"] = tamper_parity(out["ort_fp32"], root / "no_parity", None)
    out["bad_reference"] = tamper_reference(out["ort_fp32"], root / "bad_reference")
    return out


@pytest.fixture(scope="session")
def labelled(tmp_path_factory) -> Path:
    return labelled_folder(tmp_path_factory.mktemp("labelled") / "labelled")


@pytest.fixture(scope="session")
def coin_flip(tmp_path_factory) -> Path:
    return labelled_folder(tmp_path_factory.mktemp("coin") / "coinflip", n=2, identical=True)
