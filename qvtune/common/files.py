"""Writing files that other processes read while they are being replaced: run records, the
tokenization cache shared by a sweep's jobs, checkpoints. Nothing heavy is imported here."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Replace `path` so that readers see the old file or the new one, never a half-written one.

    `write` fills a temporary file beside `path` whose name is unique, so concurrent writers never
    share one; it is flushed to disk before it is renamed into place, so a crash (a killed job, a
    lost node) leaves the old file rather than an empty new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
