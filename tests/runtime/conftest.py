"""Fixtures for the runtime tests (media helpers live in runtime_media.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from runtime_media import TEST_BUNDLE, face_frames, write_h264


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    """A tiny random ViT bundle (64 px, dim 32, depth 1), committed (scripts/make_default_bundle.py
    --test-bundle), so these tests run without torch, as on a device; a copy, so no test writes into the repo."""
    import shutil

    out = tmp_path_factory.mktemp("bundles") / "tiny"
    shutil.copytree(TEST_BUNDLE, out)
    return out


@pytest.fixture(scope="session")
def face_video(tmp_path_factory) -> Path:
    """2 s, 30 fps, 640x360 H.264 with one moving, zooming face."""
    return write_h264(tmp_path_factory.mktemp("media") / "face.mp4", face_frames(60))


@pytest.fixture(scope="session")
def noface_video(tmp_path_factory) -> Path:
    return write_h264(tmp_path_factory.mktemp("media") / "noface.mp4", face_frames(20, face=False))
