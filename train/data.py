"""Datasets over prepared face crops (a crops folder written by `edgedf prepare`) and ImageNet-style folders.

A crops folder holds `index.jsonl` (one record per crop: path, video, frame, label, method, compression,
split, source, landmarks in crop pixels), `spec.json` (the FaceCropSpec the crops were made with) and
the crop images. Training reads the crops as they are: the spec that made them goes into the
checkpoint, so the runtime makes the same crops.

Sampling is stateless: the batch sampler maps a global sample number to (epoch permutation, position),
and every random draw of a sample comes from a generator seeded by (seed, sample number). A resumed or
multi-process run therefore sees exactly the batches an uninterrupted single run would.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from edgedf.runtime.errors import EdgedfError
from edgedf.runtime.spec import FaceCropSpec

from .sbi import BLEND_RATIOS, SBIConfig, jpeg, post_blend, self_blend

INDEX_NAME = "index.jsonl"
SPEC_NAME = "spec.json"
REPORT_NAME = "report.json"
LABELS = {"real": 0, "fake": 1}
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass
class CropRecord:
    path: str  # relative to the crops folder
    video: str
    frame: int
    label: int  # 0 real, 1 fake
    source: str = ""  # dataset / sub-folder, e.g. "ffpp", "utkface"
    method: str = ""  # manipulation method ("" for real)
    compression: str = ""
    split: str = "train"
    landmarks: list[list[float]] | None = None  # 5 points in crop pixels

    @property
    def group(self) -> str:
        return "/".join(p for p in (self.source, self.method) if p) or "all"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CropRecord:
        keys = cls.__dataclass_fields__.keys()
        return cls(**{k: v for k, v in d.items() if k in keys})


def read_index(crops_dir: str | os.PathLike) -> tuple[list[CropRecord], FaceCropSpec]:
    root = Path(crops_dir)
    index, spec_file = root / INDEX_NAME, root / SPEC_NAME
    if not index.is_file() or not spec_file.is_file():
        raise EdgedfError(f"{root} is not a crops folder (no {INDEX_NAME} / {SPEC_NAME}; make one with edgedf prepare)")
    spec = FaceCropSpec.from_json(spec_file.read_text())
    records = []
    with open(index) as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    records.append(CropRecord.from_dict(json.loads(line)))
                except (json.JSONDecodeError, TypeError) as e:
                    raise EdgedfError(f"{index}:{n}: bad record ({e})") from None
    return records, spec


class CropStore:
    """Crop pixels by record number; all decoded into one uint8 array up front when that fits `max_bytes`."""

    def __init__(self, root: Path, records: Sequence[CropRecord], size: int, max_bytes: float = 4e9):
        self.root, self.records, self.size = root, list(records), size
        self.array: np.ndarray | None = None
        if len(self.records) * size * size * 3 <= max_bytes:
            self.array = np.empty((len(self.records), size, size, 3), np.uint8)
            for i in range(len(self.records)):
                self.array[i] = self._read(i)

    def _read(self, i: int) -> np.ndarray:
        p = self.root / self.records[i].path
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if img is None:
            raise EdgedfError(f"cannot read crop {p}")
        if img.shape[:2] != (self.size, self.size):
            raise EdgedfError(f"crop {p} is {img.shape[1]}x{img.shape[0]}, the spec says {self.size}px")
        return img

    def __getitem__(self, i: int) -> np.ndarray:
        return self.array[i] if self.array is not None else self._read(i)

    def __len__(self) -> int:
        return len(self.records)


def thumbnail(img: np.ndarray, side: int = 32) -> np.ndarray:
    """A crop as a zero-mean unit vector of its grey side x side thumbnail: copies of one photo (re-encoded,
    resized, slightly shifted) have cosine similarity near 1, aligned crops of different people well below."""
    g = cv2.resize(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), (side, side), interpolation=cv2.INTER_AREA)
    v = g.astype(np.float32).ravel()
    v -= v.mean()
    return v / (np.linalg.norm(v) + 1e-6)


def _flip(img: np.ndarray, lm: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    img = img[:, ::-1]
    if lm is not None:
        lm = lm.copy()
        lm[:, 0] = img.shape[1] - 1 - lm[:, 0]
        lm = lm[[1, 0, 2, 4, 3]]  # left and right swap places
    return np.ascontiguousarray(img), lm


def require_landmarks(store: CropStore) -> None:
    missing = [r.path for r in store.records if r.landmarks is None]
    if missing:
        raise EdgedfError(f"self-blending needs landmarks; {len(missing)} crops have none (e.g. {missing[0]})")


@dataclass
class Curriculum:
    """Easier blends first: colour changes `start_strength` times stronger and only full blends, easing
    linearly to the paper's distribution over `samples` training samples (0: no curriculum)."""

    samples: int = 0
    start_strength: float = 2.0

    def at(self, sample_no: int) -> tuple[float, tuple[float, ...]]:
        if self.samples <= 0 or sample_no >= self.samples:
            return 1.0, BLEND_RATIOS
        t = sample_no / self.samples
        strength = self.start_strength + (1.0 - self.start_strength) * t
        ratios = BLEND_RATIOS if t > 0.5 else (0.75, 1.0, 1.0, 1.0)
        return strength, ratios


class SBIPairs(Dataset):
    """Real crops and their self-blended pseudo-fakes: item (index, sample_no) -> (real [3,S,S], fake [3,S,S]).

    Pairs go into the same batch (as in the paper), so the only difference the model can learn from is
    the blend. `train=False` gives a fixed validation set: no flip, blends seeded by the index.
    """

    def __init__(
        self,
        store: CropStore,
        spec: FaceCropSpec,
        seed: int = 0,
        train: bool = True,
        sbi: SBIConfig | None = None,
        curriculum: Curriculum | None = None,
    ):
        require_landmarks(store)
        self.store, self.spec, self.seed, self.train = store, spec, seed, train
        self.sbi = sbi or SBIConfig()
        self.curriculum = curriculum or Curriculum()

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, key: tuple[int, int] | int) -> tuple[torch.Tensor, torch.Tensor]:
        idx, sample_no = key if isinstance(key, tuple) else (key, key)
        img = self.store[idx]
        lm = np.asarray(self.store.records[idx].landmarks, np.float32)
        if self.train:
            rng = np.random.default_rng([self.seed, sample_no])
            if rng.random() < 0.5:
                img, lm = _flip(img, lm)
            strength, ratios = self.curriculum.at(sample_no)
        else:
            rng = np.random.default_rng([self.seed, 1_000_003, idx])
            strength, ratios = 1.0, BLEND_RATIOS
        fake, _ = self_blend(img, lm, rng, self.sbi, strength=strength, ratios=ratios)
        return torch.from_numpy(self.spec.to_input(img)[0]), torch.from_numpy(self.spec.to_input(fake)[0])


def collate_pairs(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    reals = torch.stack([b[0] for b in batch])
    fakes = torch.stack([b[1] for b in batch])
    y = torch.cat([torch.zeros(len(batch), dtype=torch.long), torch.ones(len(batch), dtype=torch.long)])
    return torch.cat([reals, fakes]), y


class LabeledCrops(Dataset):
    """Prepared crops with their own labels (real and fake data): (index, sample_no) -> (x, label)."""

    def __init__(self, store: CropStore, spec: FaceCropSpec, seed: int = 0, train: bool = True):
        self.store, self.spec, self.seed, self.train = store, spec, seed, train

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, key: tuple[int, int] | int) -> tuple[torch.Tensor, int]:
        idx, sample_no = key if isinstance(key, tuple) else (key, key)
        img = self.store[idx]
        if self.train and np.random.default_rng([self.seed, sample_no]).random() < 0.5:
            img, _ = _flip(img, None)
        return torch.from_numpy(self.spec.to_input(img)[0]), self.store.records[idx].label


def margin_jitter(img: np.ndarray, rng: np.random.Generator, scale: float = 0.1, shift: float = 0.03) -> np.ndarray:
    """Zoom by 1/(1 +- scale) and shift by +-shift of the size about the centre (reflected border): crops
    of other margins and slightly off-centre, as the official SBI crops with a random margin."""
    h, w = img.shape[:2]
    s = rng.uniform(1 - scale, 1 + scale)
    m = cv2.getRotationMatrix2D((w / 2, h / 2), 0.0, s)
    m[:, 2] += rng.uniform(-shift, shift, 2) * (w, h)
    return cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def resolution_augment(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A face seen smaller than the crop: downscaled to 25..75 % (sometimes blurred), upscaled back and
    often recompressed. Applied to real and fake alike, so that low resolution is never a fake cue."""
    h, w = img.shape[:2]
    f = rng.uniform(0.25, 0.75)
    small = cv2.resize(img, (max(int(w * f), 8), max(int(h * f), 8)), interpolation=cv2.INTER_AREA)
    if rng.random() < 0.5:
        small = cv2.GaussianBlur(small, (0, 0), rng.uniform(0.3, 1.0))
    out = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    return jpeg(out, int(rng.integers(30, 96))) if rng.random() < 0.6 else out


@dataclass
class Augment:
    """Training augmentation of a crop and (for self-blends) its pair, the same draw for each image:
    flip, margin jitter, resolution (p `low_res`), then the paper's post-blend transforms."""

    low_res: float = 0.3
    margin: float = 0.1

    def __call__(self, images: list[np.ndarray], rng: np.random.Generator, sbi: SBIConfig) -> list[np.ndarray]:
        seed = int(rng.integers(2**63))
        out = []
        for img in images:
            r = np.random.default_rng(seed)
            if r.random() < 0.5:
                img, _ = _flip(img, None)
            if self.margin > 0:
                img = margin_jitter(img, r, self.margin)
            if r.random() < self.low_res:
                img = resolution_augment(img, r)
            out.append(img)
        return post_blend(out, rng, sbi)


class MixedDetect(Dataset):
    """Real fakes and pseudo-fakes in one stream: (index, sample_no) -> [(x, label), ...].

    Each sample draws (from a generator seeded by the sample number, so resumes are exact) one
    component by `weights`: a labelled crops folder gives one crop, label drawn 50/50 first so every
    folder is balanced; the self-blend component gives a real face and its blend, as a pair.
    """

    def __init__(
        self,
        labeled: Sequence[CropStore],
        weights: Sequence[float],
        spec: FaceCropSpec,
        sbi_store: CropStore | None = None,
        sbi_weight: float = 0.0,
        seed: int = 0,
        augment: Augment | None = None,
        sbi: SBIConfig | None = None,
    ):
        self.stores = list(labeled)
        self.by_label = [[np.array([i for i, r in enumerate(st.records) if r.label == y]) for y in (0, 1)]
                         for st in self.stores]  # fmt: skip
        for st, (reals, fakes) in zip(self.stores, self.by_label, strict=True):
            if not len(reals) or not len(fakes):
                raise EdgedfError(f"{st.root}: a labelled crops folder needs real and fake training crops")
        p = list(weights) + ([sbi_weight] if sbi_store is not None else [])
        if len(weights) != len(self.stores) or min(p) < 0 or sum(p) <= 0:
            raise EdgedfError("labeled_weights: one non-negative weight per labelled crops folder")
        self.p = np.asarray(p, float) / sum(p)
        if sbi_store is not None:
            require_landmarks(sbi_store)
        self.sbi_store, self.spec, self.seed = sbi_store, spec, seed
        self.augment, self.sbi = augment, sbi or SBIConfig()

    def __len__(self) -> int:
        return sum(len(s) for s in self.stores) + (len(self.sbi_store) if self.sbi_store is not None else 0)

    @property
    def images_per_item(self) -> float:
        return 1.0 + (float(self.p[-1]) if self.sbi_store is not None else 0.0)

    def __getitem__(self, key: tuple[int, int] | int) -> list[tuple[torch.Tensor, int]]:
        _, sample_no = key if isinstance(key, tuple) else (key, key)
        rng = np.random.default_rng([self.seed, 13, sample_no])
        c = int(rng.choice(len(self.p), p=self.p))
        if c == len(self.stores):
            i = int(rng.integers(len(self.sbi_store)))
            img = self.sbi_store[i]
            lm = np.asarray(self.sbi_store.records[i].landmarks, np.float32)
            fake, _ = self_blend(img, lm, rng, self.sbi)
            images, labels = [img, fake], [0, 1]
        else:
            y = int(rng.integers(2))
            pool = self.by_label[c][y]
            images, labels = [self.stores[c][int(pool[rng.integers(len(pool))])]], [y]
        if self.augment is not None:
            images = self.augment(images, rng, self.sbi)
        return [(torch.from_numpy(self.spec.to_input(im)[0]), y) for im, y in zip(images, labels, strict=True)]


def collate_mixed(batch: list, size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """MixedDetect's lists of (x, label) (or plain (x, label) items, as validation gives) -> (x, y).

    Items hold one or two images, so a batch of them varies in length from step to step; `size` cuts it
    or tops it up (from its own start) to exactly that many images. Training uses it: every new batch
    length is a new input shape, which cuDNN and oneDNN plan and compile afresh.
    """
    flat = [item for items in batch for item in (items if isinstance(items, list) else [items])]
    if size is not None and flat:
        flat = (flat * -(-size // len(flat)))[:size]
    return torch.stack([x for x, _ in flat]), torch.tensor([y for _, y in flat], dtype=torch.long)


class ImageFolder(Dataset):
    """ImageNet-style `root/<class>/*.jpg` for pretraining, with the standard augmentation
    (random resized crop 0.08-1 of the area, aspect 3/4-4/3, horizontal flip, colour jitter 0.4) in
    training and resize (size / 0.875) + centre crop in validation. Images are fed through the spec's
    colour order and normalisation like face crops."""

    def __init__(
        self,
        root: str | os.PathLike,
        spec: FaceCropSpec,
        classes: Sequence[str] | None = None,
        seed: int = 0,
        train: bool = True,
    ):
        root = Path(root)
        if not root.is_dir():
            raise EdgedfError(f"image folder not found: {root}")
        self.classes = list(classes or sorted(p.name for p in root.iterdir() if p.is_dir()))
        if not self.classes:
            raise EdgedfError(f"{root} has no class sub-folders")
        self.items: list[tuple[Path, int]] = []
        for c, name in enumerate(self.classes):
            d = root / name
            if d.is_dir():
                self.items += [(p, c) for p in sorted(d.rglob("*")) if p.suffix.lower() in IMAGE_EXTS]
        if not self.items:
            raise EdgedfError(f"{root} has no images ({', '.join(IMAGE_EXTS)})")
        self.spec, self.seed, self.train = spec, seed, train

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: tuple[int, int] | int) -> tuple[torch.Tensor, int]:
        idx, sample_no = key if isinstance(key, tuple) else (key, key)
        path, label = self.items[idx]
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            raise EdgedfError(f"cannot read image {path}")
        s = self.spec.input_size
        if self.train:
            img = random_resized_crop(img, s, np.random.default_rng([self.seed, sample_no]))
        else:
            h, w = img.shape[:2]
            r = (s / 0.875) / min(h, w)
            img = cv2.resize(img, (max(round(w * r), s), max(round(h * r), s)), interpolation=cv2.INTER_AREA)
            h, w = img.shape[:2]
            y0, x0 = (h - s) // 2, (w - s) // 2
            img = img[y0 : y0 + s, x0 : x0 + s]
        return torch.from_numpy(self.spec.to_input(np.ascontiguousarray(img))[0]), label


def random_resized_crop(img: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    h, w = img.shape[:2]
    for _ in range(10):
        area = h * w * rng.uniform(0.08, 1.0)
        ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        cw, ch = int(round(np.sqrt(area * ratio))), int(round(np.sqrt(area / ratio)))
        if 0 < cw <= w and 0 < ch <= h:
            x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            break
    else:
        cw = ch = min(h, w)
        x0, y0 = (w - cw) // 2, (h - ch) // 2
    out = cv2.resize(img[y0 : y0 + ch, x0 : x0 + cw], (size, size), interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.5:
        out = out[:, ::-1]
    x = out.astype(np.float32)
    b, c, s = rng.uniform(0.6, 1.4, 3)  # brightness, contrast, saturation jitter 0.4
    x *= b
    x = (x - x.mean()) * c + x.mean()
    gray = x.mean(axis=2, keepdims=True)
    x = (x - gray) * s + gray
    return np.clip(x, 0, 255).astype(np.uint8)


class StepBatchSampler:
    """Infinite batches of (index, sample_no) for steps start_step, start_step + 1, ...

    Global sample g of a step lies at `perm(epoch = g // n)[g % n]`; rank r of W takes its slice of the
    global batch. The permutations depend on (seed, epoch) only, so resuming at any step is exact.
    """

    def __init__(self, n: int, batch_size: int, seed: int = 0, start_step: int = 0, rank: int = 0, world: int = 1):
        if n < 1:
            raise EdgedfError("the training set is empty")
        self.n, self.b, self.seed, self.start, self.rank, self.world = n, batch_size, seed, start_step, rank, world
        self._perm: tuple[int, np.ndarray] | None = None

    def _index(self, g: int) -> int:
        epoch = g // self.n
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, np.random.default_rng([self.seed, 7, epoch]).permutation(self.n))
        return int(self._perm[1][g % self.n])

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step = self.start
        while True:
            g0 = step * self.b * self.world + self.rank * self.b
            yield [(self._index(g), g) for g in range(g0, g0 + self.b)]
            step += 1

    def __len__(self) -> int:  # "infinite"; DataLoader only needs this for len(loader)
        return 2**62
