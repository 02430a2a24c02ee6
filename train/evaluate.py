"""`edgedf eval`: score crops with a checkpoint, report frame/video AUC, EER, AP, ACC per group and pooled.

A dataset is a crops folder (from `edgedf prepare`) or a raw dataset root, which is prepared first with
the checkpoint's own preprocessing spec into a cache folder (so the crops are made exactly as the model
expects them). Several datasets give the cross-dataset protocol: one row group per dataset, and pooled.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgedf.runtime.errors import EdgedfError
from edgedf.runtime.spec import FaceCropSpec

from .checkpoint import Checkpoint
from .data import INDEX_NAME, CropRecord, CropStore, read_index
from .metrics import Scored, evaluate
from .prepare import PrepareOptions, PrepareReport, list_items, prepare


@dataclass
class Scorer:
    """p(fake) for model inputs float32 [N, 3, S, S]: a checkpoint (PyTorch) or a bundle (its backend)."""

    name: str
    spec: FaceCropSpec
    p_fake: Callable[[np.ndarray], np.ndarray]


def checkpoint_scorer(ck: Checkpoint, name: str = "") -> Scorer:
    if "fake" not in ck.labels:
        raise EdgedfError(f"checkpoint labels {ck.labels} have no 'fake' class")
    fake = ck.labels.index("fake")
    model = ck.model.eval()
    device = next(model.parameters()).device

    @torch.no_grad()
    def p_fake(x: np.ndarray) -> np.ndarray:
        return model(torch.from_numpy(x).to(device)).float().softmax(-1)[:, fake].cpu().numpy()

    return Scorer(name, ck.spec, p_fake)


def open_scorer(path: str | os.PathLike, backend: str | None = None, threads: int = 0) -> Scorer:
    """A bundle folder (manifest.json: scored by its runtime backend, as on the device) or a checkpoint."""
    path = Path(path)
    if (path / "manifest.json").is_file():
        from edgedf.runtime.backends import BackendOptions, open_classifier
        from edgedf.runtime.bundle import load_bundle

        bundle = load_bundle(path)
        clf = open_classifier(bundle, backend, BackendOptions(threads=threads))
        return Scorer(str(path), bundle.spec, clf.p_fake)
    from .checkpoint import load_checkpoint

    return checkpoint_scorer(load_checkpoint(path), str(path))


@dataclass
class DatasetScores:
    name: str
    items: list[Scored]
    prepare_report: PrepareReport | None = None


def crops_for(
    data: str | os.PathLike,
    spec: FaceCropSpec,
    fmt: str,
    cache: Path,
    frames: int,
    workers: int,
    on_progress: Callable[[int, int], None] | None = None,
    **list_kw: Any,
) -> tuple[Path, PrepareReport | None]:
    """A crops folder for `data` made with the model's spec (prepared into `cache` if raw)."""
    data = Path(data)
    if (data / INDEX_NAME).is_file():
        _, data_spec = read_index(data)
        if data_spec != spec:
            raise EdgedfError(f"{data} was prepared with another preprocessing spec than the model's")
        return data, None
    key = hashlib.sha1(f"{data.resolve()}|{fmt}|{frames}|{spec.to_json()}|{sorted(list_kw.items())}".encode())
    out = cache / f"{data.name}-{key.hexdigest()[:10]}"
    items = list_items(data, fmt, **list_kw)
    report = prepare(items, out, spec, PrepareOptions(frames=frames), workers=workers, on_progress=on_progress)
    return out, report


def score_crops(
    scorer: Scorer | Checkpoint, crops: Path, split: str | None = None, batch_size: int = 64
) -> list[Scored]:
    """Scores of a crops folder's records (`split`: one split, or several joined by commas)."""
    if isinstance(scorer, Checkpoint):
        scorer = checkpoint_scorer(scorer)
    records, spec = read_index(crops)
    if split:
        wanted = set(split.split(","))
        records = [r for r in records if r.split in wanted]
    if not records:
        raise EdgedfError(f"{crops} has no crops{f' in split {split}' if split else ''}")
    store = CropStore(crops, records, spec.input_size, max_bytes=0)
    out: list[Scored] = []
    for i in range(0, len(records), batch_size):
        chunk: list[CropRecord] = records[i : i + batch_size]
        p = scorer.p_fake(spec.to_input(np.stack([store[i + j] for j in range(len(chunk))])))
        name = crops.name
        for r, s in zip(chunk, p, strict=True):
            group = r.group if r.source or r.method else name
            out.append(Scored(float(s), int(r.label), f"{group}:{r.video}", group))
    return out


def summarize(datasets: list[DatasetScores], threshold: float = 0.5) -> dict[str, Any]:
    """Per group of every dataset, per dataset pooled, and everything pooled."""
    result: dict[str, Any] = {"threshold": threshold, "datasets": {}}
    everything: list[Scored] = []
    for ds in datasets:
        result["datasets"][ds.name] = evaluate(ds.items, threshold)
        everything += ds.items
    if len(datasets) > 1:
        result["pooled"] = evaluate(
            [Scored(s.score, s.label, f"{s.group}:{s.video}", "all") for s in everything], threshold
        )["all"]
    return result
