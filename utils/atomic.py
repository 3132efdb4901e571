"""Result files written whole or not at all: a crash or a full disk never leaves half a JSON file behind."""

from __future__ import annotations

import os
from pathlib import Path


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to a hidden temporary file beside ``path`` (creating the folder), then rename it. The
    temporary file is named by process, so that processes writing one file at once (a shared cache) never
    write into each other's."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
