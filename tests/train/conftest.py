"""Fixtures over the tiny datasets of traindata.py."""

from __future__ import annotations

from pathlib import Path

import cv2
import pytest
from traindata import face_image


@pytest.fixture(scope="session")
def faces_folder(tmp_path_factory) -> Path:
    """faces/<source>/*.jpg: 12 real face images in two sources."""
    root = tmp_path_factory.mktemp("faces")
    for i in range(12):
        d = root / ("src_a" if i < 8 else "src_b")
        d.mkdir(exist_ok=True)
        cv2.imwrite(str(d / f"img_{i:02d}.jpg"), face_image(i))
    return root


@pytest.fixture(scope="session")
def face_crops(faces_folder, tmp_path_factory) -> Path:
    """A crops folder (32 px) of the faces folder: 1/3 of the ids in split val."""
    from edgedf.runtime.spec import FaceCropSpec
    from edgedf.train.prepare import PrepareOptions, list_items, prepare

    out = tmp_path_factory.mktemp("crops") / "faces32"
    items = list_items(faces_folder, "folder", label="real", val_fraction=0.34)
    report = prepare(items, out, FaceCropSpec(input_size=32), PrepareOptions(frames=1))
    assert report.crops == 12
    return out


@pytest.fixture(scope="session")
def labeled_crops(tmp_path_factory) -> Path:
    """A crops folder (32 px) with real/ and fake/ faces (the fakes: colour-shifted copies), 1/3 in val."""
    import numpy as np

    from edgedf.runtime.spec import FaceCropSpec
    from edgedf.train.prepare import PrepareOptions, list_items, prepare

    root = tmp_path_factory.mktemp("labeled")
    for i in range(12):
        label = ("real", "fake")[i % 2]
        (root / label).mkdir(exist_ok=True)
        img = face_image(i)
        if label == "fake":
            img = np.clip(img.astype(int) + [30, -20, 10], 0, 255).astype(np.uint8)
        cv2.imwrite(str(root / label / f"img_{i:02d}.jpg"), img)
    out = tmp_path_factory.mktemp("crops") / "labeled32"
    report = prepare(list_items(root, "folder", val_fraction=0.34), out, FaceCropSpec(input_size=32), PrepareOptions())
    assert report.crops == 12
    return out
