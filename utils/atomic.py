"""Result files written whole or not at all: a crash or a full disk never leaves half a JSON file behind."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def cannot_write(folder: str | os.PathLike, create: bool = True) -> str:
    """Why no file can be written in ``folder`` ('' when one can): the OS's reason (a read-only file system,
    permissions, a file in the way). ``folder`` is created when missing; with ``create=False`` nothing is left
    behind: a missing folder is judged by its nearest existing parent."""
    folder = Path(folder).absolute()
    try:
        if create:
            folder.mkdir(parents=True, exist_ok=True)
        existing = next(p for p in (folder, *folder.parents) if p.exists())
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        return error.strerror or str(error)
    return ""


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to a hidden temporary file beside ``path`` (creating the folder), then rename it. The
    temporary file is named by process, so that processes writing one file at once (a shared cache) never
    write into each other's."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
