"""Pseudo-fake AUC of a checkpoint on the held-out real faces of a crops folder (split val), each with a
self-blend drawn from SEEDS other than the one training validated with.

    python benchmarks/training/sbi_only/pseudo_fake_auc.py runs/sbi_bit_tiny/model runs/crops/faces112 1 2
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from edgedf.train.checkpoint import load_checkpoint
from edgedf.train.data import CropStore, SBIPairs, collate_pairs, read_index
from edgedf.train.metrics import binary_metrics


def main(ckpt: str, crops: str, *seeds: str) -> None:
    ck = load_checkpoint(ckpt)
    records, spec = read_index(crops)
    val = [r for r in records if r.split == "val" and r.label == 0]
    store = CropStore(Path(crops), val, spec.input_size)
    for seed in seeds or ("1",):
        ds = SBIPairs(store, spec, seed=int(seed), train=False)
        scores, labels = [], []
        with torch.no_grad():
            for x, y in DataLoader(ds, batch_size=128, collate_fn=collate_pairs):
                scores.append(ck.model(x).softmax(-1)[:, 1])
                labels.append(y)
        m = binary_metrics(torch.cat(labels).numpy(), torch.cat(scores).numpy())
        n = len(val)
        print(f"seed {seed}: {n} real + {n} blends: AUC {m['auc']:.4f} EER {m['eer']:.4f} ACC {m['acc']:.4f}")


if __name__ == "__main__":
    main(*sys.argv[1:])
