"""Atomic file writes: the one implementation every writer in pdfgc uses (checkpoints, exports, videos, reports,
preprocessed shards).

A file is written under a temporary name in its destination folder and renamed over the destination at the end.
Rename within one folder is atomic on POSIX, so a reader (or a resumed run) sees either the old file or the complete
new one, never a truncated file; on any error the temporary file is removed.
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_path(path, *, fsync: bool = False, make_parents: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to `path` for the caller to write; on success it gets the user's usual file
    permissions (mkstemp creates 0600 files), is optionally fsync'ed, and replaces `path`.

    Example: `with atomic_path(out) as tmp: torch.save(obj, tmp)`.
    """
    path = Path(path)
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".tmp_{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _default_mode())
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_bytes(path, data: bytes, *, fsync: bool = False) -> Path:
    """Write `data` to `path` atomically (see `atomic_path`)."""
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path, text: str, *, fsync: bool = False) -> Path:
    """Write UTF-8 `text` to `path` atomically (see `atomic_path`)."""
    return atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)
