"""The per-user cache of facts about data folders (frame counts, video probes): $XDG_CACHE_HOME/vssl."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def cache_file(kind: str, folder: str | os.PathLike) -> Path:
    """``$XDG_CACHE_HOME/vssl/<kind>/<key>.json`` (default ``~/.cache``), the key naming ``folder``'s real path."""
    cache_home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    key = hashlib.sha1(str(Path(folder).resolve()).encode()).hexdigest()[:16]
    return cache_home / "vssl" / kind / f"{key}.json"
