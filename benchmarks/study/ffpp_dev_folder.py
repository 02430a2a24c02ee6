"""A labelled folder (real/, fake/) of the FF++ c23 dev frames for `edgedf study` / `edgedf bench`: symlinks to
the frames of ../shared/data/ffpp_c23_faces whose target id is in the official val or test split (the ids the
shipped detector never trained on). Nothing is copied.

    python benchmarks/study/ffpp_dev_folder.py OUT [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[3] / "shared" / "data")
    args = ap.parse_args()
    root = args.data / "ffpp_c23_faces"
    splits = [json.loads((args.data / "ffpp_splits" / f"{s}.json").read_text()) for s in ("val", "test")]
    ids = {i for split in splits for pair in split for i in pair}
    counts = {"real": 0, "fake": 0}
    with open(root / "labels.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["target_id"] not in ids:
                continue
            dst = args.out / row["label"] / row["file"].replace("/", "__")
            dst.parent.mkdir(parents=True, exist_ok=True)
            if not dst.is_symlink():
                dst.symlink_to((root / row["file"]).resolve())
            counts[row["label"]] += 1
    print(f"{args.out}: {counts['real']} real, {counts['fake']} fake frames")


if __name__ == "__main__":
    main()
