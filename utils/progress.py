"""Progress bars that suit where the output goes: a tqdm bar on a terminal; in a log file or a pipe, one
plain line every 10 % of the work or every 30 s, so that a redirected log holds a few lines per loop
instead of one carriage-return update per step (no lines filled with spaces). Imports no torch, so the
data-preparation scripts use it too."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

PLAIN_EVERY_PERCENT = 10
PLAIN_EVERY_SECONDS = 30.0


class PlainProgress:
    """The part of tqdm's interface the project uses (update, set_postfix_str, write, close), printing
    ``desc: n/total (p%), elapsed, postfix`` lines."""

    def __init__(self, total: int, *, desc: str, initial: int = 0, file: TextIO | None = None,
                 every_percent: float = PLAIN_EVERY_PERCENT, every_seconds: float = PLAIN_EVERY_SECONDS,
                 clock: Callable[[], float] = time.monotonic):
        self.total, self.n, self.desc = total, initial, desc
        self.file = file or sys.stderr
        self.every_percent, self.every_seconds, self.clock = every_percent, every_seconds, clock
        self.postfix = ""
        self.start = self.last_time = clock()
        self.last_percent = self._percent()
        self.printed_n = initial

    def _percent(self) -> float:
        return 100.0 * self.n / self.total if self.total else 100.0

    def _print(self) -> None:
        elapsed = self.clock() - self.start
        share = f" ({self._percent():.0f}%)" if self.total else ""
        postfix = f", {self.postfix}" if self.postfix else ""
        print(f"{self.desc}: {self.n}/{self.total}{share}, {elapsed:.0f} s{postfix}", file=self.file,
              flush=True)
        self.last_time, self.last_percent, self.printed_n = self.clock(), self._percent(), self.n

    def update(self, n: int = 1) -> None:
        self.n += n
        if (self._percent() - self.last_percent >= self.every_percent
                or self.clock() - self.last_time >= self.every_seconds):
            self._print()

    def set_postfix_str(self, text: str = "", refresh: bool = True) -> None:
        self.postfix = text

    def write(self, text: str, file: TextIO | None = None) -> None:
        print(text, file=file or self.file, flush=True)

    def close(self) -> None:
        if self.n != self.printed_n:  # the last line gives the final count
            self._print()


def progress_bar(total: int, *, desc: str, initial: int = 0, unit: str = "it", file: TextIO | None = None,
                 leave: bool = True):
    """A tqdm bar when ``file`` (default stderr) is a terminal, else a ``PlainProgress`` (which names no unit)."""
    file = file or sys.stderr
    if getattr(file, "isatty", lambda: False)():
        from tqdm import tqdm

        return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, file=file, leave=leave)
    return PlainProgress(total, desc=desc, initial=initial, file=file)
