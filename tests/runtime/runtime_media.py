"""Test media and bundles, made on the fly: a real face (skimage's astronaut) moved and scaled across frames."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = ROOT.parent / "shared" / "data"


def astronaut_bgr() -> np.ndarray:
    from skimage import data

    return cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)


def face_frames(n: int, size=(640, 360), face=True, moving=True) -> list[np.ndarray]:
    """n frames (BGR): the astronaut's head and shoulders on a grey background, sliding and zooming."""
    w, h = size
    astro = astronaut_bgr()[0:300, 100:380]  # head and shoulders, 300x280
    out = []
    for i in range(n):
        frame = np.full((h, w, 3), 90, np.uint8)
        cv2.putText(frame, f"{i}", (10, h - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (200, 200, 200), 1)
        if face:
            k = i / max(n - 1, 1) if moving else 0.0
            s = 0.8 * h / astro.shape[0] * (1.0 + 0.15 * k)
            crop = cv2.resize(astro, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
            ch, cw = crop.shape[:2]
            x0 = int(0.1 * w + k * (w - cw - 0.2 * w))
            y0 = max(0, (h - ch) // 2)
            crop = crop[: h - y0, : w - x0]
            frame[y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]] = crop
        out.append(frame)
    return out


TEST_BUNDLE = (
    Path(__file__).resolve().parents[1] / "assets" / "tiny_bundle"
)  # scripts/make_default_bundle.py --test-bundle


def write_h264(path: Path, frames: list[np.ndarray], fps: int = 30) -> Path:
    """A real H.264 mp4 through PyAV (libx264); the OpenCV wheel cannot encode H.264."""
    import av

    h, w = frames[0].shape[:2] if frames else (64, 64)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.options = {"preset": "ultrafast"}
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(cv2.cvtColor(f, cv2.COLOR_BGR2RGB), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def load_bundle_maker():
    spec = importlib.util.spec_from_file_location("make_default_bundle", ROOT / "scripts" / "make_default_bundle.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.make_bundle


class MjpegServer:
    """An MJPEG-over-HTTP camera on loopback (multipart/x-mixed-replace, as many IP cameras serve it).

    `plan`: what each successive connection gets: ("serve", n_frames, "stall" | "close"), ("refuse",)
    (HTTP 404), or ("forever",) (frames until the client goes away). Connections past the plan are refused.
    """

    def __init__(self, plan: list[tuple], frames: list[np.ndarray] | None = None, fps: float = 25.0):
        import http.server
        import socketserver
        import threading
        import time

        jpgs = [cv2.imencode(".jpg", f)[1].tobytes() for f in (frames or face_frames(40))]
        connections = [0]

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                k = connections[0]
                connections[0] += 1
                step = plan[k] if k < len(plan) else ("refuse",)
                if step[0] == "refuse":
                    self.send_response(404)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                n = step[1] if step[0] == "serve" else None
                i = 0
                try:
                    while n is None or i < n:
                        jpg = jpgs[i % len(jpgs)]
                        head = b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpg)
                        self.wfile.write(head + jpg + b"\r\n")
                        self.wfile.flush()
                        i += 1
                        time.sleep(1.0 / fps)
                    if step[2] == "stall":
                        time.sleep(60)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/video.mjpg"
        self.connections = connections
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
