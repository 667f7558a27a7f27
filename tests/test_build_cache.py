"""The compile check and the JIT build share kernel objects (one nvcc run per source and arch, not two).

No nvcc runs here: the compile step is faked, and what is checked is which objects the build reuses.
"""

from __future__ import annotations

import subprocess

import pytest

from nezha_kernels.compile_check import nvcc as nvcc_check
from nezha_kernels.cuda_ext import build
from nezha_kernels.cuda_ext.sources import KERNEL_SOURCES


@pytest.fixture
def cache(monkeypatch, tmp_path):
    monkeypatch.setenv(build.BUILD_DIR_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(build, "nvcc_version", lambda nvcc: f"fake {nvcc} 13.0")
    monkeypatch.setattr(nvcc_check, "nvcc_version", lambda nvcc: f"fake {nvcc} 13.0")
    return tmp_path


def _fake_nvcc(calls):
    """subprocess.run / Popen stand-in that writes the object named after -o and records the source."""

    class Proc:
        returncode = 0
        stdout = "ptxas info    : Used 10 registers\n"
        stderr = ""

        def __init__(self, cmd, **_):
            calls.append(cmd[2])
            out = cmd[cmd.index("-o") + 1]
            with open(out, "w") as f:
                f.write(f"object of {cmd[2]} for {cmd[cmd.index('-gencode') + 1]}")

        def communicate(self):
            return self.stdout, None

    return Proc


def test_the_build_reuses_what_the_compile_check_compiled(cache, monkeypatch):
    calls: list[str] = []
    fake = _fake_nvcc(calls)
    monkeypatch.setattr(subprocess, "run", fake)
    for source in KERNEL_SOURCES:
        nvcc_check._compile("nvcc", source, 80, str(cache))
    assert len(calls) == len(KERNEL_SOURCES)

    monkeypatch.setattr(subprocess, "Popen", fake)
    out_dir = cache / "build_sm80"
    out_dir.mkdir()
    objects = build._compile_kernels("nvcc", (80,), out_dir)
    assert len(calls) == len(KERNEL_SOURCES), "the build ran nvcc although every object was in the shared cache"
    for obj, source in zip(objects, KERNEL_SOURCES, strict=True):
        assert obj.read_text() == f"object of {build.CSRC / source} for arch=compute_80,code=sm_80"

    # Another arch set is another object: compiled, not taken from the sm_80 compile.
    out_dir = cache / "build_sm80_90"
    out_dir.mkdir()
    build._compile_kernels("nvcc", (80, 90), out_dir)
    assert len(calls) == 2 * len(KERNEL_SOURCES)


def test_the_shared_object_key_follows_sources_flags_and_nvcc(cache, monkeypatch):
    first = build.object_cache_path("nvcc", KERNEL_SOURCES[0], (80,))
    assert first == build.object_cache_path("nvcc", KERNEL_SOURCES[0], (80,))
    assert first != build.object_cache_path("nvcc", KERNEL_SOURCES[0], (90,))
    assert first != build.object_cache_path("nvcc", KERNEL_SOURCES[1], (80,))
    monkeypatch.setattr(build, "nvcc_version", lambda nvcc: "fake 13.1")
    assert first != build.object_cache_path("nvcc", KERNEL_SOURCES[0], (80,))
    monkeypatch.setattr(build, "nvcc_version", lambda nvcc: "fake nvcc 13.0")
    monkeypatch.setattr(build, "sources_digest", lambda names: "edited")
    assert first != build.object_cache_path("nvcc", KERNEL_SOURCES[0], (80,))


def test_a_narrowed_compile_check_leaves_the_build_its_own_objects(cache, monkeypatch):
    # run(bf16_archs=...) compiles without the bf16 instantiations (-DNEZHA_NO_BF16) on the other archs: such an
    # object must not stand in for the full one a JIT build links.
    fake, seen = _fake_nvcc([]), []
    monkeypatch.setattr(nvcc_check, "find_nvcc", lambda: "nvcc")

    def recording(cmd, **kw):
        seen.append(cmd)
        return fake(cmd, **kw)

    monkeypatch.setattr(subprocess, "run", recording)
    nvcc_check.run((80, 90), bf16_archs=(90,))
    narrowed = {c[c.index("-gencode") + 1] for c in seen if "-DNEZHA_NO_BF16" in c}
    assert narrowed == {"arch=compute_80,code=sm_80"} and len(seen) == 2 * len(KERNEL_SOURCES)
    assert not build.object_cache_path("nvcc", KERNEL_SOURCES[0], (80,)).exists()
    assert build.object_cache_path("nvcc", KERNEL_SOURCES[0], (90,)).exists()


def test_a_narrowed_compile_check_compiles_the_simt_sources_on_their_archs_only(cache, monkeypatch):
    # run(simt_archs=...) leaves the SIMT sources out on the other archs (CI's time); every tensor-core source still
    # compiles for every arch.
    seen: list = []
    monkeypatch.setattr(nvcc_check, "find_nvcc", lambda: "nvcc")
    monkeypatch.setattr(subprocess, "run", _fake_nvcc(seen))
    nvcc_check.run((80, 90), simt_archs=(90,))
    assert sorted(seen) == sorted(
        str(build.CSRC / src) for src in KERNEL_SOURCES for arch in (80, 90)
        if src not in nvcc_check.SIMT_SOURCES or arch == 90
    )  # fmt: skip
    assert set(nvcc_check.SIMT_SOURCES) < set(KERNEL_SOURCES)
