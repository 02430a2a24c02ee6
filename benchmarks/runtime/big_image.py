"""Peak memory of `edgedf run` on a 100 MP photo (12000x9000 JPEG), whole process, built-in bundle.

    python benchmarks/runtime/big_image.py

The photo is made here (skimage's astronaut scaled up, JPEG q90). It is decoded at 1/4 scale inside the
JPEG decoder (runtime/decode.py, ImageSource), so the full-size 324 MB frame never exists. Peak RSS is the
child process's own VmHWM. Results: big_image.json and big_image.md beside this script.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "tests" / "runtime"))


# the CLI with its own peak RSS (VmHWM) printed at exit: ru_maxrss of a child would carry over the parent's
# peak (this script holds the full-size image while writing the JPEG)
CHILD = """
import atexit, sys
def hwm():
    line = [x for x in open("/proc/self/status") if x.startswith("VmHWM")][0]
    print("VmHWM", line.split()[1], file=sys.stderr)
atexit.register(hwm)
sys.argv = ["edgedf", "run", sys.argv[1], "--json", sys.argv[2]]
from edgedf.cli import main
main()
"""


def main() -> None:
    from runtime_media import face_frames

    from edgedf.devices.bench import host_info

    tmp = Path(tempfile.mkdtemp())
    photo = tmp / "photo_100mp.jpg"
    img = cv2.resize(face_frames(1, size=(1280, 960))[0], (12000, 9000), interpolation=cv2.INTER_CUBIC)
    cv2.imwrite(str(photo), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
    del img
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", CHILD, str(photo), str(tmp / "r.json")],
                       capture_output=True, text=True, cwd=tmp)  # fmt: skip
    wall = time.perf_counter() - t0
    peak = int(p.stderr.split("VmHWM ")[-1].split()[0]) / 1024
    rep = json.loads((tmp / "r.json").read_text())
    s = rep["sources"][0]
    result = {
        "host": host_info(),
        "photo": "12000x9000 JPEG q90 (108 MP), " + f"{photo.stat().st_size / 1e6:.1f} MB",
        "exit_code": p.returncode,
        "peak_rss_mb": round(peak, 1),
        "wall_s": round(wall, 2),
        "decoded_size": [s["info"]["width"], s["info"]["height"]],
        "faces": s["video"]["n_frames_with_face"],
        "verdict": s["video"]["verdict"],
        "warnings": s["warnings"],
    }
    (HERE / "big_image.json").write_text(json.dumps(result, indent=2) + "\n")
    h = result["host"]
    md = (
        "# A 100 MP photo\n\n"
        f"`python benchmarks/runtime/big_image.py` on {h['cpu']}, {h['cores']} cores: `edgedf run` on a "
        f"{result['photo']}, built-in bundle, whole process.\n\n"
        "| peak RSS | wall | decoded at | face found | verdict | exit |\n|---|---|---|---|---|---|\n"
        f"| {peak:.0f} MB | {wall:.1f} s | {result['decoded_size'][0]}x{result['decoded_size'][1]} | "
        f"{'yes' if result['faces'] else 'no'} | {result['verdict']} | {p.returncode} |\n"
    )
    (HERE / "big_image.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
