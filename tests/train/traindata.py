"""Tiny datasets the training tests build (fixtures in conftest.py): face images and videos from
skimage's astronaut, moved and scaled across frames so the runtime's face detector finds a face in each."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

skimage_data = pytest.importorskip("skimage.data")


def astronaut_bgr() -> np.ndarray:
    return cv2.cvtColor(skimage_data.astronaut(), cv2.COLOR_RGB2BGR)


def face_image(i: int, size: int = 160) -> np.ndarray:
    """The astronaut, shifted/scaled/brightened by i (deterministic), size x size."""
    img = astronaut_bgr()
    rng = np.random.default_rng(i)
    s = size / 512 * rng.uniform(0.9, 1.1)
    tx, ty = rng.uniform(-8, 8, 2)
    m = np.array([[s, 0, tx], [0, s, ty]], np.float32)
    out = cv2.warpAffine(img, m, (size, size), borderMode=cv2.BORDER_REFLECT_101)
    out = np.clip(out.astype(np.float32) * rng.uniform(0.8, 1.2), 0, 255).astype(np.uint8)
    return out[:, ::-1].copy() if i % 2 else out


def write_video(path: Path, n: int = 6, size: int = 128, seed: int = 0, face: bool = True) -> Path:
    """mp4v video of n frames: the astronaut moving (or, face=False, plain noise without a face)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (size, size))
    assert w.isOpened()
    base = cv2.resize(astronaut_bgr(), (size, size))
    rng = np.random.default_rng(seed)
    for k in range(n):
        if face:
            m = np.float32([[1, 0, k * 2 - n], [0, 1, seed % 5]])
            frame = cv2.warpAffine(base, m, (size, size), borderMode=cv2.BORDER_REFLECT_101)
        else:
            frame = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            frame = cv2.GaussianBlur(frame, (0, 0), 3)
        w.write(frame)
    w.release()
    return path


def ffpp_tree(root: Path) -> Path:
    """A tiny FaceForensics++ tree: 4 real ids, 2 methods, c23, official-style splits (pairs)."""
    comp = "c23"
    for seed, vid in enumerate(("000", "001", "002", "003")):
        write_video(root / "original_sequences/youtube" / comp / "videos" / f"{vid}.mp4", seed=seed)
    for method in ("Deepfakes", "FaceSwap"):
        for a, b in (("000", "001"), ("003", "002")):
            write_video(root / "manipulated_sequences" / method / comp / "videos" / f"{a}_{b}.mp4", seed=3)
    splits = root / "splits"
    splits.mkdir()
    (splits / "train.json").write_text(json.dumps([["000", "001"]]))
    (splits / "val.json").write_text(json.dumps([]))
    (splits / "test.json").write_text(json.dumps([["002", "003"]]))
    return root
