"""The resumable job runner of frame and flow extraction: one job per video, in a process pool, a failures
file kept up to date (also when interrupted), and the conventions both share (temporary folder names, the
class-folder walk, the dry run)."""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2

from utils.malloc import keep_freed_memory_for_reuse
from utils.progress import progress_bar

TMP_SUFFIX = ".tmp-extract"
OLD_SUFFIX = ".old-extract"  # a folder being replaced by --redo, deleted once the new one is in place


class ExtractError(RuntimeError):
    """A configuration problem that stops the whole run (as opposed to one bad video)."""


@dataclass(frozen=True)
class Result:
    video: Path
    status: str  # "done" | "failed"
    frames: int = 0
    reason: str = ""


def check_job_args(args: argparse.Namespace) -> None:
    """The flags that frame and flow extraction share."""
    if not 1 <= args.quality <= 100:
        raise ExtractError(f"--quality must be in 1..100, got {args.quality}")
    if args.workers < 1:
        raise ExtractError(f"--workers must be >= 1, got {args.workers}")


def class_entries(root: Path, keep: Callable[[os.DirEntry], bool]) -> list[Path]:
    """The entries ``root/<Class>/<name>`` that ``keep`` accepts, sorted. os.scandir, not glob: real file
    names contain glob metacharacters such as ``[`` and ``]`` (HMDB51)."""
    found = []
    with os.scandir(root) as classes:
        for class_entry in classes:
            if class_entry.is_dir():
                with os.scandir(class_entry.path) as entries:
                    found += [Path(e.path) for e in entries if keep(e)]
    return sorted(found)


def dry_run(args: argparse.Namespace, found: int) -> int:
    """Print the resolved configuration and the number of videos found as JSON; the exit status."""
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    config["videos_found"] = found
    print(json.dumps(config, indent=2))
    return 0


def _init_worker() -> None:
    cv2.setNumThreads(1)  # the pool already uses every core; nested threads only oversubscribe
    keep_freed_memory_for_reuse()


def read_failures(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    failures = {}
    for line in path.read_text().splitlines():
        video, _, reason = line.partition("\t")
        if video:
            failures[video] = reason
    return failures


def write_failures(path: Path, failures: dict[str, str]) -> None:
    if not failures:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(f"{video}\t{reason}\n" for video, reason in sorted(failures.items())))
    os.replace(tmp, path)


@contextmanager
def _results(function: Callable[[tuple], Result], payloads: list[tuple], workers: int) -> Iterator[Iterator[Result]]:
    """``function`` over ``payloads``, in a process pool when ``workers`` > 1, in completion order."""
    pool = None
    try:
        if workers > 1 and len(payloads) > 1:
            # spawn, not fork: a forked child can deadlock on decoder thread pools the parent already started.
            context = multiprocessing.get_context("spawn")
            pool = context.Pool(min(workers, len(payloads)), initializer=_init_worker)
            yield pool.imap_unordered(function, payloads)
        else:
            yield (function(p) for p in payloads)
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()


def run_jobs(function: Callable[[tuple], Result], payloads: list[tuple], skipped: list[Path], failures_path: Path,
             workers: int, desc: str) -> tuple[int, int, int]:
    """Run the jobs, keeping ``failures_path`` up to date (also when interrupted); (done, failed, frames)."""
    failures = read_failures(failures_path)
    for key in skipped:
        failures.pop(str(key), None)
    done = failed = frames = 0
    failed_now: set[str] = set()
    try:
        with _results(function, payloads, workers) as results:
            bar = progress_bar(len(payloads), desc=desc, unit="video")
            for result in results:
                bar.update()
                if result.status == "done":
                    done += 1
                    frames += result.frames
                    failures.pop(str(result.video), None)
                else:
                    failed += 1
                    failures[str(result.video)] = result.reason
                    failed_now.add(str(result.video))
                    bar.write(f"FAILED {result.video}: {result.reason}", file=sys.stderr)
            bar.close()
    finally:
        # Entries of videos outside this run stay (another --list may share the frame root) unless
        # the video is gone. Written also when interrupted: keep what was learned so far.
        failures = {v: r for v, r in failures.items() if v in failed_now or os.path.exists(v)}
        write_failures(failures_path, failures)
    return done, failed, frames
