"""Tiny bundles and labelled folders for the devices tests, made on the fly (torch only to make them)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np


def astronaut_bgr() -> np.ndarray:
    from skimage import data

    return cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)


def tiny_checkpoint(variant: str, out: Path, seed: int = 0, dim: int = 32) -> Path:
    """A random tiny ViT (32 px), random biases and norm weights, p(fake) spread over (0, 1) (train.smoke.perturb)."""
    from edgedf.train.checkpoint import save_checkpoint

    return save_checkpoint(_tiny_vit(variant, seed, dim).eval(), out)


def _tiny_vit(variant: str = "fp", seed: int = 0, dim: int = 32):
    import torch

    from edgedf.train.smoke import perturb
    from edgedf.train.vit import ViTConfig, build_model

    torch.manual_seed(seed)
    cfg = ViTConfig(preset=None, img_size=32, patch_size=8, dim=dim, depth=2, heads=2, variant=variant)
    return perturb(build_model(cfg), seed)


def export(ck: Path, target: str, precision: str, out: Path) -> Path:
    from edgedf.export.api import ExportOptions, export_bundle

    # 0.9: the static int8 Q/DQ lowerings may flip a crop or two of 32 near p = 0.5 on these sensitive test models
    opts = ExportOptions(target=target, precision=precision, out=out, verify_n=32, calib_n=32, min_agreement=0.9)
    path, _ = export_bundle(ck, opts)
    return path


def tamper_parity(src: Path, out: Path, agreement: float | None) -> Path:
    """A copy of a bundle whose manifest records failed parity (agreement < 0.99), or none (None)."""
    shutil.copytree(src, out)
    m = json.loads((out / "manifest.json").read_text())
    if agreement is None:
        m["parity"] = None
    else:
        for r in m["parity"]["backends"].values():
            if r.get("status") == "ok":
                r["decisive_agreement"] = agreement
    (out / "manifest.json").write_text(json.dumps(m))
    return out


def tamper_reference(src: Path, out: Path) -> Path:
    """A copy of a bundle whose stored reference logits are swapped between the classes (hash updated), as if
    this machine's kernels computed something else than the export machine's."""
    from edgedf.runtime.bundle import file_entry

    shutil.copytree(src, out)
    with np.load(out / "reference.npz", allow_pickle=False) as z:
        images, logits = z["images"], z["logits"]
    np.savez_compressed(out / "reference.npz", images=images, logits=logits[:, ::-1])
    m = json.loads((out / "manifest.json").read_text())
    m["files"]["reference.npz"] = file_entry(out / "reference.npz")
    (out / "manifest.json").write_text(json.dumps(m))
    return out


def face_images(n: int, variant: str) -> list[np.ndarray]:
    """n astronaut photos, shifted and scaled; variant 'fake' is blurred and colour-shifted (a separable cue)."""
    astro = astronaut_bgr()
    out = []
    for i in range(n):
        s = 0.6 + 0.1 * i
        img = cv2.resize(astro, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
        img = np.roll(img, 7 * i, axis=1)
        if variant == "fake":
            img = cv2.GaussianBlur(img, (0, 0), 2.0)
            img = np.clip(img.astype(np.int16) + np.array([40, -20, 30]), 0, 255).astype(np.uint8)
        out.append(img)
    return out


def labelled_folder(root: Path, n: int = 4, identical: bool = False) -> Path:
    """root/real/*.jpg and root/fake/*.jpg; identical=True puts the same images in both (AUC exactly 0.5)."""
    for label in ("real", "fake"):
        d = root / label
        d.mkdir(parents=True)
        for i, img in enumerate(face_images(n, "real" if identical else label)):
            cv2.imwrite(str(d / f"{label}_{i}.jpg"), img)
    return root


def tiny_qat_checkpoint(out: Path, seed: int = 1) -> Path:
    """The tiny fp ViT prepared for QAT with observed activation ranges, as `edgedf train --qat` leaves it."""
    import torch

    from edgedf.train.checkpoint import save_checkpoint
    from edgedf.train.qat import observe, prepare_qat

    m = prepare_qat(_tiny_vit("fp", seed))
    observe(m, [torch.randn(8, 3, 32, 32) for _ in range(2)])
    return save_checkpoint(m.eval(), out)


def chromium() -> str | None:
    """A real headless browser, when installed (`apt-get install chromium`; .ci/run installs it)."""
    import shutil

    return next((p for n in ("chromium", "chromium-browser", "google-chrome") if (p := shutil.which(n))), None)


def render_in_browser(page: Path, width: int = 1280) -> dict:
    """Open `page` in headless Chromium at `width` px and measure it after load: the page's scroll width
    against the window (does anything run off the side?), each image's decoded width, and the text of
    every table cell as the browser laid it out."""
    import html
    import json
    import re
    import subprocess

    probe = page.with_name(f".{page.stem}.probe.html")
    js = (
        "<script>window.addEventListener('load', () => { const d = document.documentElement;"
        " document.body.setAttribute('data-probe', JSON.stringify({scrollWidth: d.scrollWidth,"
        " clientWidth: d.clientWidth, images: [...document.images].map(i => i.naturalWidth),"
        " cells: [...document.querySelectorAll('td')].map(c => c.innerText)})); });</script>"
    )
    probe.write_text(page.read_text().replace("</body>", js + "</body>"))
    try:
        out = subprocess.run(
            [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--window-size={width},900", "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
            capture_output=True, text=True, timeout=180,
        )  # fmt: skip
    finally:
        probe.unlink(missing_ok=True)
    m = re.search(r'data-probe="([^"]*)"', out.stdout)
    assert m, f"the page did not load in Chromium: {out.stderr[-500:]}"
    return json.loads(html.unescape(m.group(1)))
