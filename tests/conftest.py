import os
import sys
from collections import OrderedDict
from pathlib import Path

# Under pytest-xdist (the README's `-n auto`: one worker per core) each worker keeps to one OpenMP thread, and so do
# the subprocesses its tests start: two workers of two threads each on two cores made PyTorch's OpenMP threads spin at
# every barrier for the thread that is not running (benchmarks/NOTES.md "OpenMP on a shared machine"). Set before any
# test module imports torch; an explicit OMP_NUM_THREADS is kept.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

# An interpreting process (the Triton interpreter suites' subprocesses) rounds float32 -> bfloat16 as a GPU does.
if os.environ.get("TRITON_INTERPRET") == "1":
    import interpreter_rounding

    interpreter_rounding.install()

# Make `tests/formula.py` importable as `formula` and the package importable from a plain checkout.
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _skip_reason(report) -> tuple[str, str]:
    """(file, reason) of a skipped test's report."""
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        path, reason = longrepr[0], longrepr[2]
    else:
        path, reason = report.nodeid, str(longrepr)
    reason = reason[len("Skipped: ") :] if reason.startswith("Skipped: ") else reason
    return Path(str(path).split("::")[0]).name, reason


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Skips folded to one line per reason (pyproject's addopts leave skips out of -r): without a GPU
    dozens of tests skip for the same few reasons, and the interpreter file's placeholders (they run in
    its TRITON_INTERPRET=1 subprocess) would otherwise take a line each. `-rs` gives pytest's own list."""
    chars = config.option.reportchars or ""
    if "s" in chars or "a" in chars or "A" in chars:
        return
    folded: OrderedDict[str, OrderedDict[str, int]] = OrderedDict()
    for report in terminalreporter.stats.get("skipped", []):
        name, reason = _skip_reason(report)
        files = folded.setdefault(reason, OrderedDict())
        files[name] = files.get(name, 0) + 1
    if not folded:
        return
    terminalreporter.write_sep("-", "skipped, by reason (-rs lists each)")
    for reason, files in sorted(folded.items(), key=lambda item: -sum(item[1].values())):
        where = ", ".join(f"{name} ({n})" if n > 1 else name for name, n in files.items())
        terminalreporter.write_line(f"SKIPPED {sum(files.values())}: {reason} -- {where}")
