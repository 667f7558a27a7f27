"""A progress bar: tqdm on a terminal, one plain line per step otherwise (logs, CI, no tqdm installed).

Each step is announced when it starts (`start`, then `advance` when it ends), so the line that stays up names the
step that is running.

Labels are shortened at a word boundary to fit the line. Each step also samples the load average, so
the run can say afterwards whether other work competed for the CPU (see timing.timing_warnings).
"""

from __future__ import annotations

import shutil
import sys
import textwrap
import time

from .timing import load_average

# Columns of a plain progress line before its label: "[########################] 20/20  581.6s  ".
_PLAIN_PREFIX = 44
# Columns tqdm needs for its own bar and counters before the postfix.
_TQDM_PREFIX = 70


def shorten(label: str, width: int) -> str:
    """``label`` cut at a word boundary to at most ``width`` columns, " ..." marking the cut."""
    width = max(width, 20)
    return label if len(label) <= width else textwrap.shorten(label, width, placeholder=" ...")


class Progress:
    def __init__(self, total: int, description: str = "bench", stream=None):
        self.total, self.done, self.start_time = total, 0, time.perf_counter()
        self.stream = stream or sys.stderr
        self.peak_load = load_average()
        self._bar = None
        if getattr(self.stream, "isatty", lambda: False)():
            try:
                from tqdm import tqdm

                self._bar = tqdm(total=total, desc=description, file=self.stream, dynamic_ncols=True)
            except ImportError:
                pass

    def _sample_load(self) -> None:
        load = load_average()
        if load is not None:
            self.peak_load = load if self.peak_load is None else max(self.peak_load, load)

    def start(self, label: str) -> None:
        """Announce the step about to run (step done + 1 of total): the line stays up while it runs, so it names
        what is running, never what just finished."""
        self._sample_load()
        columns = shutil.get_terminal_size((120, 24)).columns
        if self._bar is not None:
            self._bar.set_postfix_str(shorten(label, columns - _TQDM_PREFIX), refresh=True)
            return
        width = 24
        filled = width * self.done // max(self.total, 1)
        elapsed = time.perf_counter() - self.start_time
        print(
            f"[{'#' * filled}{'.' * (width - filled)}] {min(self.done + 1, self.total)}/{self.total} "
            f"{elapsed:6.1f}s  {shorten(label, columns - _PLAIN_PREFIX)}",
            file=self.stream,
            flush=True,
        )

    def advance(self, label: str | None = None) -> None:
        """Finish the running step; with ``label``, a step that ends as it starts (skipped) is announced first."""
        if label is not None:
            self.start(label)
        self.done += 1
        self._sample_load()
        if self._bar is not None:
            self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
