"""Atomic writes: an interrupted run never leaves a half-written file or directory behind."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import EdgedfError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_output_file(path: str | os.PathLike, what: str = "output") -> Path:
    """Where a file output may go: a regular file (through a symbolic link: its target) or a new name in an
    existing directory. Devices, FIFOs, sockets and directories are refused, before any work is done, so
    that an atomic replace never turns /dev/full (or a pipe) into a regular file. Returns the path to write."""
    p = Path(path)
    real = Path(os.path.realpath(p))
    if real.exists():
        if real.is_dir():
            raise EdgedfError(f"{what} {p} is a directory; give a file name")
        if not real.is_file():
            raise EdgedfError(f"{what} {p} is not a regular file (a device, FIFO or socket): refusing to replace it")
        if not os.access(real, os.W_OK):
            raise EdgedfError(f"{what} {p} is not writable")
    elif not real.parent.is_dir():
        raise EdgedfError(f"{what} {p}: directory {real.parent} does not exist")
    elif not os.access(real.parent, os.W_OK):
        raise EdgedfError(f"{what} {p}: directory {real.parent} is not writable")
    return real


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` through a temporary file and a rename; a symbolic link is written through
    (its target is replaced, the link stays), and anything that is not a regular file is refused."""
    path = Path(path)
    if path.is_symlink() or (path.exists() and not path.is_file()):
        path = check_output_file(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside `target`; on success it is renamed to `target`.

    On any exception the temporary directory is removed and `target` is untouched.
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise EdgedfError(f"output path already exists: {target} (choose another --out or remove it)")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if target.exists():  # overwrite: move the old one aside only once the new one is complete
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_versioned_json(path: Path, fmt: str, max_version: int, what: str, required: tuple[str, ...]) -> dict[str, Any]:
    """Read a checkpoint config or bundle manifest: JSON object, right `format`, a `format_version` this
    edgedf understands, the `required` keys. Every failure is one line naming `what` and the problem."""
    if not path.is_file():
        raise EdgedfError(f"{what} {path.parent} has no {path.name}")
    try:
        d = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EdgedfError(f"{what} file {path} is not valid JSON ({e})") from None
    if not isinstance(d, dict) or d.get("format") != fmt:
        raise EdgedfError(f"{path} is not an edgedf {what} file (format != {fmt!r})")
    version = d.get("format_version")
    if not isinstance(version, int) or version > max_version:
        raise EdgedfError(
            f"{what} {path.parent} has format version {version}; this edgedf reads up to {max_version} (upgrade edgedf)"
        )
    missing = [k for k in required if k not in d]
    if missing:
        raise EdgedfError(f"{what} file {path} lacks {', '.join(missing)}")
    return d
