"""A run's configuration as plain data: flags to a JSON-safe dict, flags inherited from a checkpoint's
configuration, and the code revision."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path


def config_to_dict(args) -> dict:
    """argparse namespace (or dict) -> a JSON-safe plain dict (paths and other objects become strings)."""
    config = vars(args) if not isinstance(args, dict) else args
    return json.loads(json.dumps(config, default=str))


def git_revision(repo_dir: str | os.PathLike | None = None) -> dict:
    """``{"commit": HEAD or None, "dirty": True/False/None}``; None where git or the repository is missing."""
    repo_dir = repo_dir or Path(__file__).resolve().parent.parent

    def git(*cmd):
        return subprocess.run(["git", *cmd], cwd=repo_dir, capture_output=True, text=True, timeout=10)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return {"commit": None, "dirty": None}
        status = git("status", "--porcelain", "--untracked-files=no")
        return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def inherit_flags(args, config: dict, fallbacks: dict) -> None:
    """Flags left at None take the value recorded in a checkpoint's ``config``, else ``fallbacks``."""
    for name, fallback in fallbacks.items():
        if getattr(args, name, None) is None:
            setattr(args, name, config.get(name, fallback))
