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

from .checkpoint import Checkpoint
from .data import INDEX_NAME, CropRecord, CropStore, read_index
from .metrics import Scored, evaluate
from .prepare import PrepareOptions, PrepareReport, list_items, prepare


@dataclass
class DatasetScores:
    name: str
    items: list[Scored]
    prepare_report: PrepareReport | None = None


def crops_for(
    data: str | os.PathLike,
    ck: Checkpoint,
    fmt: str,
    cache: Path,
    frames: int,
    workers: int,
    on_progress: Callable[[int, int], None] | None = None,
    **list_kw: Any,
) -> tuple[Path, PrepareReport | None]:
    """A crops folder for `data` made with the checkpoint's spec (prepared into `cache` if raw)."""
    data = Path(data)
    if (data / INDEX_NAME).is_file():
        _, spec = read_index(data)
        if spec != ck.spec:
            raise EdgedfError(f"{data} was prepared with another preprocessing spec than the checkpoint's")
        return data, None
    key = hashlib.sha1(f"{data.resolve()}|{fmt}|{frames}|{ck.spec.to_json()}|{sorted(list_kw.items())}".encode())
    out = cache / f"{data.name}-{key.hexdigest()[:10]}"
    items = list_items(data, fmt, **list_kw)
    report = prepare(items, out, ck.spec, PrepareOptions(frames=frames), workers=workers, on_progress=on_progress)
    return out, report


@torch.no_grad()
def score_crops(ck: Checkpoint, crops: Path, split: str | None = None, batch_size: int = 64) -> list[Scored]:
    records, spec = read_index(crops)
    if split:
        records = [r for r in records if r.split == split]
    if not records:
        raise EdgedfError(f"{crops} has no crops{f' in split {split}' if split else ''}")
    if "fake" not in ck.labels:
        raise EdgedfError(f"checkpoint labels {ck.labels} have no 'fake' class")
    fake = ck.labels.index("fake")
    store = CropStore(crops, records, spec.input_size, max_bytes=0)
    model = ck.model.eval()
    device = next(model.parameters()).device
    out: list[Scored] = []
    for i in range(0, len(records), batch_size):
        chunk: list[CropRecord] = records[i : i + batch_size]
        x = torch.from_numpy(spec.to_input(np.stack([store[i + j] for j in range(len(chunk))]))).to(device)
        p = model(x).float().softmax(-1)[:, fake].cpu().numpy()
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
