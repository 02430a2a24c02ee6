"""`edgedf prepare`: sample frames, detect and align faces with the runtime's own code, write crops + index.

Layouts (the published ones; see ../shared/data/README.md):
- ffpp:    original_sequences/youtube/<comp>/videos/NNN.mp4 (real) and
           manipulated_sequences/<method>/<comp>/videos/NNN_MMM.mp4 (fake); splits from the official
           train/val/test.json (lists of [NNN, MMM] pairs).
- celebdf: Celeb-real/, YouTube-real/ (real), Celeb-synthesis/ (fake); List_of_testing_videos.txt
           (`<1 real | 0 fake> <relative path>`) names the test split, everything else is train.
- dfdc:    folders of mp4 with a metadata.json {file: {label: REAL|FAKE, original, split?}}.
- folder:  real/ and fake/ (images, videos, animated WebP/GIF; any depth), or with `label` set, every
           file under ROOT with that label (its first sub-folder is the source, e.g. faces/utkface).
- labels:  labelled crops or frames: every `labels.csv` under ROOT (columns `file` and `label` real|fake|0|1,
           optional `method`, `video`, `target_id`, `split`); files are relative to their labels.csv.
           The split is the `split` column, else the labels.csv folder's name when it is
           train/val/dev/test (dev counts as val), else the FF++ official split of `target_id` when
           --splits is given, else train. Frames of one `video` share a record video id, so
           evaluation pools them per video. Tight crops (DFDC's) need --pad so the detector sees
           the whole face: see PrepareOptions.pad.

Per video K frames evenly spaced (DeepfakeBench's 32 by default), per image its one frame; in each
frame the largest face (DeepfakeBench) is aligned by `edgedf.runtime.align` per the FaceCropSpec.
Landmarks are stored in crop pixels, for self-blending. Unreadable sources and frames without a face are
counted in report.json and printed, never dropped silently.

Resumable: each source's records go to parts/<key>.json when it is done (atomically), so a restarted
prepare skips finished sources; index.jsonl is assembled from the parts at the end.
"""

from __future__ import annotations

import csv
import hashlib
import json
import multiprocessing as mp
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edgedf.runtime.errors import EdgedfError
from edgedf.runtime.fsutil import atomic_write_bytes, atomic_write_json
from edgedf.runtime.spec import FaceCropSpec

from .data import INDEX_NAME, REPORT_NAME, SPEC_NAME

FORMATS = ("ffpp", "celebdf", "dfdc", "folder", "labels")
FFPP_METHODS = ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures", "FaceShifter")
FFPP_COMPRESSIONS = ("raw", "c23", "c40")
MEDIA_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"}
VIDEO_EXTS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"}


@dataclass
class Item:
    """One source to prepare: an image, a video or an animation."""

    path: str
    video: str  # id, unique within the crops folder
    label: int
    source: str
    method: str = ""
    compression: str = ""
    split: str = "train"
    group: str = ""  # labels format: the video a frame comes from; records carry it as their `video`

    @property
    def key(self) -> str:
        return hashlib.sha1(self.video.encode()).hexdigest()[:16]


# ---------------------------------------------------------------- layouts -> items


def _media(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in MEDIA_EXTS)


def _ffpp_splits(splits_dir: Path) -> dict[str, str]:
    """{video key: split} for 'NNN' and 'NNN_MMM' (both orders) from the official json files."""
    out: dict[str, str] = {}
    for split in ("train", "val", "test"):
        f = splits_dir / f"{split}.json"
        if not f.is_file():
            raise EdgedfError(f"FF++ split file missing: {f} (pass --splits DIR with train/val/test.json)")
        for a, b in json.loads(f.read_text()):
            out[a] = out[b] = split
            out[f"{a}_{b}"] = out[f"{b}_{a}"] = split
    return out


def ffpp_items(
    root: Path,
    splits_dir: Path | None,
    compressions: Iterable[str] = ("c23",),
    methods: Iterable[str] = FFPP_METHODS,
) -> list[Item]:
    splits_dir = splits_dir or root / "splits"
    split_of = _ffpp_splits(splits_dir)
    items: list[Item] = []
    for comp in compressions:
        if comp not in FFPP_COMPRESSIONS:
            raise EdgedfError(f"unknown FF++ compression {comp!r}; choose from {', '.join(FFPP_COMPRESSIONS)}")
        real_dir = root / "original_sequences" / "youtube" / comp / "videos"
        for p in sorted(real_dir.glob("*.mp4")) if real_dir.is_dir() else []:
            items.append(Item(str(p), f"real/{comp}/{p.stem}", 0, "ffpp", "", comp, split_of.get(p.stem, "unsplit")))
        for method in methods:
            if method not in FFPP_METHODS:
                raise EdgedfError(f"unknown FF++ method {method!r}; choose from {', '.join(FFPP_METHODS)}")
            d = root / "manipulated_sequences" / method / comp / "videos"
            for p in sorted(d.glob("*.mp4")) if d.is_dir() else []:
                items.append(
                    Item(str(p), f"{method}/{comp}/{p.stem}", 1, "ffpp", method, comp, split_of.get(p.stem, "unsplit"))
                )
    if not items:
        raise EdgedfError(f"no FF++ videos under {root} (expected original_sequences/ and manipulated_sequences/)")
    return items


def celebdf_items(root: Path) -> list[Item]:
    test_list = root / "List_of_testing_videos.txt"
    test: set[str] = set()
    if test_list.is_file():
        for line in test_list.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2:
                test.add(parts[1])
    items = []
    for folder, label in (("Celeb-real", 0), ("YouTube-real", 0), ("Celeb-synthesis", 1)):
        d = root / folder
        for p in sorted(d.glob("*.mp4")) if d.is_dir() else []:
            rel = f"{folder}/{p.name}"
            method = folder if label else ""
            items.append(
                Item(str(p), f"{folder}/{p.stem}", label, "celebdf", method, "", "test" if rel in test else "train")
            )
    if not items:
        raise EdgedfError(f"no Celeb-DF videos under {root} (expected Celeb-real/, YouTube-real/, Celeb-synthesis/)")
    return items


def dfdc_items(root: Path) -> list[Item]:
    items = []
    metas = sorted(root.rglob("metadata.json"))
    if not metas:
        raise EdgedfError(f"no metadata.json under {root} (DFDC folders carry one each)")
    for meta_file in metas:
        try:
            meta = json.loads(meta_file.read_text())
        except json.JSONDecodeError as e:
            raise EdgedfError(f"{meta_file} is not valid JSON ({e.msg})") from None
        folder = meta_file.parent
        for name, info in sorted(meta.items()):
            label = {"REAL": 0, "FAKE": 1}.get(str(info.get("label", "")).upper())
            if label is None:
                raise EdgedfError(f"{meta_file}: {name} has label {info.get('label')!r}, expected REAL or FAKE")
            rel = folder.relative_to(root) / name
            vid = str(rel.with_suffix("")).replace(os.sep, "/")
            split = str(info.get("split", "train"))
            items.append(Item(str(folder / name), vid, label, "dfdc", "fake" if label else "", "", split))
    return items


def _split_by_hash(video: str, val_fraction: float) -> str:
    h = int(hashlib.sha1(video.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "val" if h < val_fraction else "train"


def folder_items(root: Path, label: str | None = None, val_fraction: float = 0.0) -> list[Item]:
    items = []
    if label is not None:
        if label not in ("real", "fake"):
            raise EdgedfError(f"--label must be real or fake, got {label!r}")
        for p in _media(root):
            rel = p.relative_to(root)
            source = rel.parts[0] if len(rel.parts) > 1 else root.name
            vid = str(rel.with_suffix("")).replace(os.sep, "/")
            items.append(Item(str(p), vid, int(label == "fake"), source, "", "", _split_by_hash(vid, val_fraction)))
    else:
        if not (root / "real").is_dir() and not (root / "fake").is_dir():
            raise EdgedfError(
                f"{root} has neither real/ nor fake/ (or pass --label real|fake for a folder of one class)"
            )
        for name, lab in (("real", 0), ("fake", 1)):
            d = root / name
            for p in _media(d) if d.is_dir() else []:
                vid = f"{name}/" + str(p.relative_to(d).with_suffix("")).replace(os.sep, "/")
                items.append(Item(str(p), vid, lab, root.name, "", "", _split_by_hash(vid, val_fraction)))
    if not items:
        raise EdgedfError(f"no images or videos under {root}")
    return items


SPLIT_FOLDERS = {"train": "train", "val": "val", "dev": "val", "test": "test"}
LABEL_VALUES = {"real": 0, "0": 0, "fake": 1, "1": 1}


def labels_items(root: Path, splits_dir: Path | None = None) -> list[Item]:
    split_of = _ffpp_splits(splits_dir) if splits_dir else {}
    files = sorted(root.rglob("labels.csv"))
    if not files:
        raise EdgedfError(f"no labels.csv under {root} (the labels format needs file,label columns)")
    items: list[Item] = []
    for lf in files:
        with open(lf, newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"file", "label"} <= set(reader.fieldnames):
                raise EdgedfError(f"{lf}: needs the columns file and label (has {reader.fieldnames})")
            folder_split = SPLIT_FOLDERS.get(lf.parent.name)
            prefix = lf.parent.relative_to(root)  # "." for a labels.csv at the root
            for n, row in enumerate(reader, 2):
                label = LABEL_VALUES.get(str(row["label"]).strip().lower())
                if label is None:
                    raise EdgedfError(f"{lf}:{n}: label {row['label']!r} is not real, fake, 0 or 1")
                rel = Path(row["file"])
                if rel.is_absolute() or ".." in rel.parts:
                    raise EdgedfError(f"{lf}:{n}: file {row['file']!r} must be relative to its labels.csv")
                split = (row.get("split") or "").strip() or folder_split
                if not split and split_of and row.get("target_id"):
                    split = split_of.get(row["target_id"].strip(), "unsplit")
                vid = (prefix / rel.with_suffix("")).as_posix()
                group = (row.get("video") or "").strip()
                method = (row.get("method") or "").strip()
                method = "" if method in ("original", "real") or not label else method or "fake"
                items.append(
                    Item(str(lf.parent / rel), vid, label, root.name, method, "", split or "train",
                         (prefix / group).as_posix() if group else vid)
                )  # fmt: skip
    if not items:
        raise EdgedfError(f"the labels.csv files under {root} list no files")
    return items


def list_items(
    root: str | os.PathLike,
    fmt: str,
    *,
    splits_dir: str | os.PathLike | None = None,
    compressions: Iterable[str] = ("c23",),
    methods: Iterable[str] = FFPP_METHODS,
    label: str | None = None,
    val_fraction: float = 0.0,
) -> list[Item]:
    root = Path(root)
    if not root.is_dir():
        raise EdgedfError(f"dataset root not found: {root}")
    if fmt == "ffpp":
        return ffpp_items(root, Path(splits_dir) if splits_dir else None, compressions, methods)
    if fmt == "celebdf":
        return celebdf_items(root)
    if fmt == "dfdc":
        return dfdc_items(root)
    if fmt == "folder":
        return folder_items(root, label, val_fraction)
    if fmt == "labels":
        return labels_items(root, Path(splits_dir) if splits_dir else None)
    raise EdgedfError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")


# ---------------------------------------------------------------- per-source work


@dataclass
class PrepareOptions:
    frames: int = 32  # per video, evenly spaced
    detector: str = "retinaface"
    threads: int = 1  # per worker process (detector session)
    # Border added on each side before detection, as a fraction of the image size. Crops as tight as
    # DFDC's cut the face at the chin and forehead, and RetinaFace then misses it or boxes it badly;
    # with a border it sees a whole face. The border is only for detection: the aligned crop is cut
    # from the original pixels (the aligner fills outside pixels by reflection, as at run time).
    pad: float = 0.0


@dataclass
class ItemResult:
    key: str
    video: str
    records: list[dict[str, Any]] = field(default_factory=list)
    frames: int = 0  # frames looked at
    no_face: int = 0
    error: str | None = None  # the source could not be read


_WORKER: dict[str, Any] = {}


def _init_worker(spec_json: str, out: str, opts: dict[str, Any]) -> None:
    cv2.setNumThreads(1)
    from edgedf.runtime.backends import BackendOptions
    from edgedf.runtime.detect import open_detector

    o = PrepareOptions(**opts)
    _WORKER.update(
        spec=FaceCropSpec.from_json(spec_json),
        out=Path(out),
        opts=o,
        detector=open_detector(o.detector, options=BackendOptions(threads=o.threads)),
    )


def _safe(video: str) -> str:
    return re.sub(r"[^A-Za-z0-9._/-]", "_", video)


def prepare_item(item: Item) -> ItemResult:
    """Detect, align and write the crops of one source (runs in a worker)."""
    from edgedf.runtime.align import align_face, crop_transform
    from edgedf.runtime.decode import Sampling, open_source

    spec: FaceCropSpec = _WORKER["spec"]
    out: Path = _WORKER["out"]
    opts: PrepareOptions = _WORKER["opts"]
    det = _WORKER["detector"]
    res = ItemResult(item.key, item.video)
    try:
        src = open_source(item.path)
    except EdgedfError as e:
        res.error = str(e)
        return res
    except Exception as e:  # a broken file must not take the whole run down
        res.error = f"cannot open {item.path}: {type(e).__name__}: {e}"
        return res
    crop_dir = out / "crops" / _safe(item.video)
    try:
        for frame in src.frames(Sampling("frames", opts.frames)):
            res.frames += 1
            faces = _detect_padded(det, frame.image, opts.pad)
            if len(faces) == 0:
                res.no_face += 1
                continue
            areas = (faces.boxes[:, 2] - faces.boxes[:, 0]) * (faces.boxes[:, 3] - faces.boxes[:, 1])
            i = int(np.argmax(areas))
            lm, box = faces.landmarks[i], faces.boxes[i]
            crop = align_face(frame.image, lm, spec, box)
            m = crop_transform(lm, spec, box)
            lm_crop = np.asarray(lm, np.float64) @ m[:, :2].T + m[:, 2]
            ok, buf = cv2.imencode(".png", crop)
            if not ok:
                raise EdgedfError(f"cannot encode a crop of {item.path}")
            rel = f"crops/{_safe(item.video)}/{frame.index:06d}.png"
            crop_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(out / rel, buf.tobytes())
            res.records.append(
                {
                    "path": rel,
                    "video": item.group or item.video,
                    "frame": int(frame.index),
                    "label": item.label,
                    "source": item.source,
                    "method": item.method,
                    "compression": item.compression,
                    "split": item.split,
                    "landmarks": np.round(lm_crop, 2).tolist(),
                    "score": round(float(faces.scores[i]), 4),
                }
            )
    except EdgedfError as e:
        res.error = str(e)
    except Exception as e:
        res.error = f"cannot decode {item.path}: {type(e).__name__}: {e}"
    finally:
        src.close()
    if res.frames == 0 and res.error is None:
        res.error = f"{item.path}: no frames could be read"
    return res


def _detect_padded(det: Any, image: np.ndarray, pad: float) -> Any:
    """Faces in `image`, detected on a copy with a mid-grey border of `pad` x size on each side."""
    if pad <= 0:
        return det.detect(image)
    h, w = image.shape[:2]
    py, px = int(round(h * pad)), int(round(w * pad))
    padded = cv2.copyMakeBorder(image, py, py, px, px, cv2.BORDER_CONSTANT, value=(127, 127, 127))
    faces = det.detect(padded)
    if len(faces):
        faces.boxes[:, [0, 2]] -= px
        faces.boxes[:, [1, 3]] -= py
        faces.landmarks[..., 0] -= px
        faces.landmarks[..., 1] -= py
    return faces


def _run_item(item: Item) -> ItemResult:
    res = prepare_item(item)
    atomic_write_json(_WORKER["out"] / "parts" / f"{item.key}.json", asdict(res))
    return res


@dataclass
class PrepareReport:
    sources: int = 0
    resumed: int = 0  # sources done in an earlier run
    unreadable: list[str] = field(default_factory=list)  # "video: reason"
    frames: int = 0
    no_face_frames: int = 0
    crops: int = 0
    by_split: dict[str, int] = field(default_factory=dict)
    by_group: dict[str, int] = field(default_factory=dict)


def _ray_item(init_args: tuple, cwd: str, item: Item) -> ItemResult:
    """One source on a Ray worker: the detector is opened once per worker process."""
    if _WORKER.get("args") != init_args:
        if os.path.isdir(cwd):  # relative paths as the driver meant them (shared storage)
            os.chdir(cwd)
        _init_worker(*init_args)
        _WORKER["args"] = init_args
    return _run_item(item)


def _prepare_on_ray(todo: list[Item], init_args: tuple, address: str | None, on_done: Callable[[], None]) -> None:
    """The per-source units as Ray tasks (a crashed worker's source is retried once by Ray); crops and parts
    are written by the workers into `out`, which must be shared storage on a multi-node cluster."""
    from edgedf.runtime.scale import ray_init

    ray = ray_init(address)
    from ray.exceptions import RayError

    task = ray.remote(num_cpus=1, max_retries=1)(_ray_item)
    cap = 4 * max(1, int(ray.cluster_resources().get("CPU", 1)))  # in flight: the cluster busy, memory bounded
    queue, running = list(reversed(todo)), {}
    while queue or running:
        while queue and len(running) < cap:
            it = queue.pop()
            running[task.remote(init_args, os.getcwd(), it)] = it
        (ref,), _ = ray.wait(list(running), num_returns=1)
        it = running.pop(ref)
        try:
            ray.get(ref)
        except RayError as e:  # lost twice (worker or node died): the source is reported, the run goes on
            res = ItemResult(key=it.key, video=it.video, error=f"worker lost twice: {type(e).__name__}")
            atomic_write_json(Path(init_args[1]) / "parts" / f"{it.key}.json", asdict(res))
        on_done()


def prepare(
    items: list[Item],
    out: str | os.PathLike,
    spec: FaceCropSpec,
    opts: PrepareOptions | None = None,
    workers: int = 1,
    on_progress: Callable[[int, int], None] | None = None,
    ray_address: str | None = None,
    use_ray: bool = False,
) -> PrepareReport:
    """Prepare `items` into `out` (resumable); returns the report also written to out/report.json.

    `workers` local processes, or with `use_ray` Ray tasks on the cluster at `ray_address` (None: Ray's
    autodetection). Either way the index is assembled once, here, from the per-source parts.
    """
    opts = opts or PrepareOptions()
    out = Path(out)
    (out / "parts").mkdir(parents=True, exist_ok=True)
    spec_file = out / SPEC_NAME
    if spec_file.exists():
        old = FaceCropSpec.from_json(spec_file.read_text())
        if old != spec:
            raise EdgedfError(f"{out} was prepared with another preprocessing spec; use a new --out")
    else:
        atomic_write_bytes(spec_file, (spec.to_json() + "\n").encode())
    seen: set[str] = set()
    for it in items:
        if it.video in seen:
            raise EdgedfError(f"duplicate video id {it.video!r}")
        seen.add(it.video)
    done = {p.stem for p in (out / "parts").glob("*.json")}
    todo = [it for it in items if it.key not in done]
    report = PrepareReport(sources=len(items), resumed=len(items) - len(todo))
    if on_progress:
        on_progress(report.resumed, len(items))
    init_args = (spec.to_json(), str(out.resolve()), asdict(opts))
    if todo:
        if use_ray:
            n = [report.resumed]

            def one_done() -> None:
                n[0] += 1
                if on_progress:
                    on_progress(n[0], len(items))

            _prepare_on_ray(todo, init_args, ray_address, one_done)
        elif workers <= 1:
            _init_worker(*init_args)
            for n, it in enumerate(todo, 1):
                _run_item(it)
                if on_progress:
                    on_progress(report.resumed + n, len(items))
        else:
            ctx = mp.get_context("spawn")  # a fork would copy OpenCV's and ORT's thread pools (deadlocks)
            with ctx.Pool(workers, initializer=_init_worker, initargs=init_args) as pool:
                for n, _ in enumerate(pool.imap_unordered(_run_item, todo, chunksize=4), 1):
                    if on_progress:
                        on_progress(report.resumed + n, len(items))
    lines = []
    for it in items:
        part = json.loads((out / "parts" / f"{it.key}.json").read_text())
        report.frames += part["frames"]
        report.no_face_frames += part["no_face"]
        if part["error"]:
            report.unreadable.append(f"{it.video}: {part['error']}")
        for rec in part["records"]:
            lines.append(json.dumps(rec))
            report.crops += 1
            report.by_split[rec["split"]] = report.by_split.get(rec["split"], 0) + 1
            g = "/".join(p for p in (rec["source"], rec["method"] or ("fake" if rec["label"] else "real")) if p)
            report.by_group[g] = report.by_group.get(g, 0) + 1
    atomic_write_bytes(out / INDEX_NAME, ("\n".join(lines) + "\n" if lines else "").encode())
    atomic_write_json(out / REPORT_NAME, asdict(report))
    return report
