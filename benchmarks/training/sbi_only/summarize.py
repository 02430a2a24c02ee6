"""Markdown tables from a run's metrics.jsonl and `edgedf eval --json` files (used for results.md).

cd benchmarks/training/sbi_only && python summarize.py metrics.jsonl eval_*.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def curve(metrics: Path) -> str:
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    train = {r["step"]: r for r in rows if "loss" in r}
    lines = [
        "| step | minutes | train loss (last 20 steps) | img/s | val AUC | val EER | val ACC |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "val_auc" not in r:
            continue
        t = train.get(r["step"], {})
        lines.append(
            f"| {r['step']} | {t.get('minutes', float('nan')):.1f} | {t.get('loss', float('nan')):.3f} | "
            f"{t.get('img_s', float('nan')):.0f} | {r['val_auc']:.4f} | {r['val_eer']:.4f} | {r['val_acc']:.4f} |"
        )
    return "\n".join(lines)


def f(v) -> str:
    return "-" if v is None else f"{v:.4f}"


def table(eval_json: Path) -> str:
    res = json.loads(eval_json.read_text())
    lines = [
        f"`{res['checkpoint']}` (ACC at p(fake) >= {res['threshold']})",
        "",
        "| set | group | frames | videos | frame AUC | video AUC | EER | AP | ACC |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    rows = [(n, g, m) for n, groups in res["datasets"].items() for g, m in groups.items()]
    if "pooled" in res:
        rows.append(("pooled", "all", res["pooled"]))
    for n, g, m in rows:
        lines.append(
            f"| {n} | {g} | {m['frames']} | {m['videos']} | {f(m['frame_auc'])} | {f(m['video_auc'])} | "
            f"{f(m['eer'])} | {f(m['ap'])} | {f(m['acc'])} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        p = Path(arg)
        print(curve(p) if p.suffix == ".jsonl" else table(p))
        print()
