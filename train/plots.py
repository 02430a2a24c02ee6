"""Training curves from metrics.jsonl as one PNG (loss, validation AUC/accuracy, learning rate)."""

from __future__ import annotations

import json
import os
from pathlib import Path


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """Records of metrics.jsonl; when a step was logged twice (a resumed run), the later record wins."""
    by_key: dict[tuple, dict] = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            by_key[(rec.get("step", 0), "loss" in rec)] = rec
    return [by_key[k] for k in sorted(by_key)]


def plot_curves(metrics: str | os.PathLike, png: str | os.PathLike, title: str | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgedf.runtime.fsutil import atomic_write_bytes

    recs = read_metrics(metrics)
    train = [r for r in recs if "loss" in r]
    val = [r for r in recs if any(k.startswith("val_") for k in r)]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    if train:
        axes[0].plot([r["step"] for r in train], [r["loss"] for r in train], lw=0.8)
    if val and "val_loss" in val[0]:
        axes[0].plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", ms=3, label="val")
        axes[0].legend()
    axes[0].set(title="loss", xlabel="step")
    for key in ("val_auc", "val_acc"):
        pts = [(r["step"], r[key]) for r in val if r.get(key) is not None]
        if pts:
            axes[1].plot(*zip(*pts, strict=True), "o-", ms=3, label=key)
    axes[1].set(title="validation", xlabel="step")
    axes[1].grid(alpha=0.3)
    axes[1].legend()
    if train:
        axes[2].plot([r["step"] for r in train], [r["lr"] for r in train])
    axes[2].set(title="learning rate", xlabel="step")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(png, buf.getvalue())
    return Path(png)
