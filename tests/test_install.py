"""The README's install commands resolve against the package index alone, and the slow-marking of compile tests.

The dry run is pip's own resolver with `--isolated` (no pip.conf, no PIP_* variables: no local wheel folders or
mirrors) against the default index; `--use-feature=fast-deps` reads each wheel's metadata with range requests
instead of downloading the CUDA wheels (GBs), so it takes seconds of network, not minutes.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Words in pip's output when it could not reach the index at all (no network, proxy refused, DNS).
_OFFLINE = (
    "NewConnectionError",
    "Network is unreachable",
    "Temporary failure in name resolution",
    "Failed to establish a new connection",
    "ProxyError",
    "No matching distribution found for setuptools",
)


def _offline_line(output: str) -> str:
    return next((line.strip() for line in output.splitlines() if any(w in line for w in _OFFLINE)), "")[:200]


def _skip_without_index() -> None:
    """A few seconds: one metadata request through pip, no retries, so an offline machine skips at once instead
    of after the resolver's retries on every package."""
    cmd = [sys.executable, "-m", "pip", "index", "versions", "pip", "--isolated", "--timeout", "5", "--retries", "0"]
    try:
        probe = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.skip("pip cannot reach the package index: no answer within 60 s")
    if probe.returncode != 0:
        pytest.skip(
            "pip cannot reach the package index: "
            + (_offline_line(probe.stdout + probe.stderr) or probe.stderr.strip()[-200:])
        )


def _extras() -> dict[str, list[str]]:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def test_bench_extra_is_a_subset_of_test_extra():
    """So one resolution of `.[test]` (below) also shows that the main job's `.[bench]` resolves."""
    extras = _extras()
    assert set(extras["bench"]) <= set(extras["test"]), set(extras["bench"]) - set(extras["test"])


@pytest.mark.slow  # ~15-30 s of network (pip's metadata requests), little CPU
def test_readme_install_resolves_against_the_index_alone(tmp_path):
    """`pip install -r requirements/cpu.txt -e ".[test]"` (command 2; command 1's `.[bench]` is a subset) resolves with
    no local wheels. Before: ResolutionImpossible, the index's torch 2.13.0 needing triton 3.7.1 against a 3.9.0 pin."""
    _skip_without_index()
    report = tmp_path / "report.json"
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--isolated",
        "--dry-run",
        "--ignore-installed",
        "--use-feature=fast-deps",
        "--quiet",
        "--timeout",
        "15",
        "--retries",
        "1",
        "--report",
        str(report),
        "-r",
        "requirements/cpu.txt",
        "-e",
        ".[test]",
    ]
    try:
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)
        if done.returncode != 0 and "fast-deps" in done.stderr:  # a pip without the feature: download instead
            cmd.remove("--use-feature=fast-deps")
            done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired:
        pytest.skip("pip did not finish resolving within 240 s (slow or unreachable package index)")
    output = done.stdout + done.stderr
    if done.returncode != 0 and any(word in output for word in _OFFLINE):
        pytest.skip("pip cannot reach the package index: " + _offline_line(output))
    assert done.returncode == 0, output[-3000:]
    chosen = {
        item["metadata"]["name"].lower(): item["metadata"]["version"]
        for item in json.loads(report.read_text())["install"]
    }
    assert chosen["torch"].split("+")[0] == "2.13.0", chosen["torch"]
    assert chosen["transformers"] == "4.57.6"
    major, minor, patch = (int(part) for part in chosen["triton"].split(".")[:3])
    assert (3, 7, 1) <= (major, minor, patch) <= (3, 9, 0), chosen["triton"]


def _slow(function: ast.FunctionDef) -> bool:
    return any(ast.unparse(d).startswith("pytest.mark.slow") for d in function.decorator_list)


def test_every_nvcc_test_is_marked_slow():
    """tests/test_cuda_build.py: a test that runs nvcc (needs_nvcc, or the `extension` fixture that builds every
    kernel) is marked slow, so the quick subset never compiles CUDA (before: ~25 min silent on a machine with nvcc)."""
    tree = ast.parse((ROOT / "tests/test_cuda_build.py").read_text())
    compiling = [
        f
        for f in tree.body
        if isinstance(f, ast.FunctionDef)
        and f.name.startswith("test_")
        and (
            any(ast.unparse(d) == "needs_nvcc" for d in f.decorator_list) or "extension" in [a.arg for a in f.args.args]
        )
    ]
    assert len(compiling) >= 3, [f.name for f in compiling]
    assert [f.name for f in compiling if not _slow(f)] == []
