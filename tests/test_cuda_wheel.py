"""A non-editable install ships the CUDA sources: build a wheel, install it into a fresh venv, and check there that
the JIT build and the emulator read every listed source from the installed package, byte for byte.

Slow (~30 s: a wheel build and a venv); needs only pip, setuptools and venv, no compiler.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from nezha_kernels.cuda_ext import sources
from nezha_kernels.cuda_ext.build import sources_digest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
# What a source distribution holds (MANIFEST.in): the package, the CUDA sources, the build files.
SDIST_PARTS = ("nezha_kernels", "csrc", "setup.py", "pyproject.toml", "MANIFEST.in", "README.md")

PROBE = """
import json, nezha_kernels
from nezha_kernels.cuda_ext import build, emulator, sources
print(json.dumps({"package": nezha_kernels.__file__, "csrc": str(build.CSRC), "emu_flags": emulator._flags(()),
                  "extension": build.sources_digest(sources.EXTENSION_FILES),
                  "emulator": build.sources_digest(sources.EMULATOR_FILES),
                  "missing": [n for n in sources.PACKAGED_FILES if not (build.CSRC / n).is_file()]}))
"""


def _run(cmd, **kwargs):
    # Without PYTHONPATH: a checkout on it would shadow the installed package (and satisfy pip with its metadata).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, **kwargs)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_wheel_ships_the_cuda_sources(tmp_path):
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.so", "*.o", "*.egg-info")
    for part in SDIST_PARTS:
        (shutil.copytree if (REPO / part).is_dir() else shutil.copy2)(
            REPO / part, src / part, **({"ignore": ignore} if (REPO / part).is_dir() else {})
        )
    _run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", tmp_path / "dist", src]
    )
    (wheel,) = (tmp_path / "dist").glob("nezha_kernels-*.whl")

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv])
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", wheel])
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip())
    # Then reuse this environment's torch (itself maybe a venv, which --system-site-packages does not reach): a
    # plain path line, so this environment's own .pth files (an editable nezha_kernels) do not run there.
    (site / "_outer_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    found = json.loads(_run([python, "-c", PROBE], cwd=tmp_path))
    assert Path(found["package"]).is_relative_to(site), found["package"]  # the installed copy, not this checkout
    assert Path(found["csrc"]) == site / "nezha_kernels" / sources.PACKAGED_DIR
    assert found["missing"] == []
    assert found["extension"] == sources_digest(sources.EXTENSION_FILES)
    assert found["emulator"] == sources_digest(sources.EMULATOR_FILES)
    assert f"-I{found['csrc']}" in found["emu_flags"]
