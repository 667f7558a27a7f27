"""`nezha-kernels compile-check`: compile every GPU kernel for real architectures, without a GPU.

Each component module exposes ``run(archs) -> list[CompileRow]`` (and may accept ``progress=``, a callable
given each row as it is done); this module gathers the rows, prints one table (kernel x config x arch:
role, status, registers, shared memory, spills) and fails on any error.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
import threading
import time

from .rows import CompileRow

__all__ = ["CompileRow", "run_all", "format_table", "config_role", "main", "COMPONENTS"]

# Component name -> module implementing run(archs).
COMPONENTS = {
    "triton": "nezha_kernels.compile_check.triton_aot",
    "cuda": "nezha_kernels.compile_check.nvcc",
}
DEFAULT_ARCHS = (80, 90)
# Seconds without news after which a still-running component says it is alive.
HEARTBEAT_S = 15.0
# Seconds between progress lines of a component that reports its rows.
PROGRESS_EVERY_S = 5.0

DESCRIPTION = """\
Compile every GPU kernel of this package for real GPU architectures on this machine, without a GPU,
and print one row per kernel, config and architecture: registers, shared memory and spills.

  triton  the Triton kernels, compiled ahead of time with triton's own compiler (needs triton)
  cuda    the CUDA C++ kernels of csrc/, compiled with nvcc -Xptxas -v (needs nvcc >= 12; skipped without)

Time: about 1.5 minutes on 2 cores with a cold cache, a few seconds once cached (triton's cache and
~/.cache/nezha_kernels); progress goes to stderr, the table to stdout.

Exit status: 0 when everything compiles; 1 on a compile error, shared memory above the per-block limit,
or a register spill in a CUDA kernel (Triton spills are reported, not failed: see the legend below the
table)."""

LEGEND = """\
role     main: the tile a call runs first (the only one with NEZHA_KERNELS_TRITON_AUTOTUNE=0);
         candidate: another tile the autotuner times on the GPU, keeping the fastest; single: the only
         config of that kernel (every CUDA kernel instantiation, the Triton delta kernel).
spill B  bytes per thread of local memory (stack frame + spill stores): values that did not fit in
         registers. Not an error in itself (results stay exact) but slower. Main Triton configs and CUDA
         kernels are meant to be spill-free (a CUDA spill fails the check); a spilling candidate only
         costs autotuning time, since the autotuner keeps it only if it is still the fastest."""


# triton_aot's config label: "<dtype> D=<head dim> <BLOCK_M>x<BLOCK_N> w<warps> s<stages> <variant>"
_TRITON_LABEL = re.compile(r"^(fp16|bf16|fp32) D=(\d+) (\d+)x(\d+) w(\d+) s(\d+)\b")
_ELEM_BYTES = {"fp16": 2, "bf16": 2, "fp32": 4}


def config_role(row: CompileRow) -> str:
    """ "main", "candidate" or "single" (see LEGEND); "" when the label does not say."""
    if row.component == "cuda" or row.kernel == "bwd_delta":
        return "single"
    label = _TRITON_LABEL.match(row.config)
    if row.component != "triton" or label is None:
        return ""
    from ..triton_kernels import configs
    from . import triton_aot

    dtype, d, bm, bn, warps, stages = label.group(1), *map(int, label.groups()[1:])
    features = triton_aot.VARIANT_FEATURES.get(row.config[label.end() :].strip())
    kept = configs.candidates(
        row.kernel, configs.gpu_tiles(row.kernel), d, _ELEM_BYTES[dtype], features, row.arch // 10
    )
    main_m, main_n, main_w, main_s = kept[0]
    main_stages = configs.stages_for(main_s, row.arch // 10, row.kernel, features)
    is_main = (bm, bn, warps, stages) == (main_m, main_n, main_w, main_stages)
    return "main" if is_main else "candidate"


class _Reporter:
    """Progress on stderr: a line per component, a count of finished rows every PROGRESS_EVERY_S where
    the component reports rows, and a heartbeat when nothing was heard for HEARTBEAT_S seconds (a
    component without a progress hook is silent otherwise)."""

    def __init__(self, stream=None, heartbeat_s: float | None = None):
        self.stream = stream or sys.stderr
        self.heartbeat_s = HEARTBEAT_S if heartbeat_s is None else heartbeat_s
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        self._last = time.monotonic()

    def _say(self, text: str) -> None:
        with self._lock:
            self._last = time.monotonic()
            print(text, file=self.stream, flush=True)

    def start(self, component: str, archs) -> None:
        self.component, self.count, self.begin = component, 0, time.monotonic()
        self._say(f"compile-check: {component} kernels for {', '.join(f'sm_{a}' for a in archs)} ...")
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(min(1.0, self.heartbeat_s / 2)):
            if time.monotonic() - self._last >= self.heartbeat_s:
                done = f", {self.count} rows done" if self.count else ""
                self._say(
                    f"  {self.component}: still compiling, {time.monotonic() - self.begin:.0f} s{done} "
                    "(a cold cache takes minutes; a warm one, seconds)"
                )

    def row(self, row: CompileRow) -> None:
        """Count a finished row; say so every few seconds (errors at once) rather than once per row."""
        self.count += 1
        if not row.ok or time.monotonic() - self._last >= PROGRESS_EVERY_S:
            self._say(
                f"  {self.component}: {self.count} done, {time.monotonic() - self.begin:.0f} s "
                f"(last: {row.kernel} {row.config} sm_{row.arch}: {row.status})"
            )

    def finish(self, rows: int) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._say(f"  {self.component}: {rows} rows in {time.monotonic() - self.begin:.0f} s")


def _accepts_progress(fn) -> bool:
    try:
        return "progress" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def run_all(archs=DEFAULT_ARCHS, components=None, reporter: _Reporter | None = None) -> list[CompileRow]:
    rows: list[CompileRow] = []
    for name, module_name in COMPONENTS.items():
        if components and name not in components:
            continue
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue  # component not part of this version
            raise
        if reporter is None:
            rows.extend(module.run(tuple(archs)))
            continue
        reporter.start(name, archs)
        found: list[CompileRow] = []
        try:
            # per-row progress where the component reports it; the heartbeat covers the others
            kwargs = {"progress": reporter.row} if _accepts_progress(module.run) else {}
            found = module.run(tuple(archs), **kwargs)
        finally:
            reporter.finish(len(found))
        rows.extend(found)
    return rows


def _note(row: CompileRow, role: str) -> str:
    if row.message:
        return row.message[:80]
    if row.ok and row.spill_bytes:
        return "spills (main config)" if role == "main" else "spills (autotune candidate)"
    return ""


def format_table(rows: list[CompileRow]) -> str:
    header = ("component", "kernel", "config", "arch", "role", "status", "regs", "smem B", "spill B", "message")
    body = []
    for r in rows:
        role = config_role(r)
        body.append(
            (
                r.component,
                r.kernel,
                r.config,
                f"sm_{r.arch}",
                role,
                r.status,
                "" if r.registers is None else str(r.registers),
                "" if r.shared_bytes is None else str(r.shared_bytes),
                "" if r.spill_bytes is None else str(r.spill_bytes),
                _note(r, role),
            )
        )
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths, strict=True)).rstrip() for b in body]
    return "\n".join(lines)


def summary(rows: list[CompileRow]) -> str:
    """ "N ok, M failed", plus how many main / candidate configs spill."""
    failed = sum(not r.ok for r in rows)
    text = f"{len(rows) - failed} ok, {failed} failed"
    spilling = [config_role(r) for r in rows if r.ok and r.spill_bytes]
    if spilling:
        text += (
            f"; {spilling.count('main')} main config(s) and {spilling.count('candidate')} autotune candidate(s) spill"
        )
    return text


def _parser():
    import argparse

    parser = argparse.ArgumentParser(
        prog="nezha-kernels compile-check",
        description=DESCRIPTION,
        epilog="Columns of the table:\n" + LEGEND,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--arch",
        type=int,
        action="append",
        metavar="SM",
        help="compute capability to compile for, as 80 or 90 (repeatable; default: 80 and 90)",
    )
    parser.add_argument(
        "--only",
        choices=sorted(COMPONENTS),
        action="append",
        help="check only this component (repeatable; default: all)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    profile = parser.add_argument_group("static profile (--profile)")
    profile.add_argument(
        "--profile",
        action="store_true",
        help="instead of the compile table: the static SASS profile of each kernel's main configs (loops, "
        "instructions per score by class, MMA, async copies, an H100 issue model's predicted times)",
    )
    profile.add_argument("--out", metavar="DIR", help="with --profile: where the .sass files and profile.json go")
    profile.add_argument(
        "--dtype", action="append", choices=("bf16", "fp16"), help="with --profile: repeatable (default: bf16)"
    )
    profile.add_argument(
        "--head-dim", type=int, action="append", metavar="D", help="with --profile: repeatable (default: 64 and 128)"
    )
    profile.add_argument(
        "--listed-stages",
        action="store_true",
        help="with --profile: compile the Triton tiles' listed num_stages even where this triton's sm_90 "
        "pipeliner is known to fail (configs.stages_for lowers them to 1 otherwise)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.profile:
        if not args.out:
            parser.error("--profile needs --out DIR")
        from .profile import run_profile

        return run_profile(
            args.out,
            args.arch or (90, 80),
            args.dtype or ("bf16",),
            args.head_dim or (64, 128),
            args.only or tuple(COMPONENTS),
            quiet=args.quiet,
            listed_stages=args.listed_stages,
        )
    if args.out or args.dtype or args.head_dim or args.listed_stages:
        parser.error("--out, --dtype, --head-dim and --listed-stages go with --profile")
    reporter = None if args.quiet else _Reporter()
    rows = run_all(args.arch or DEFAULT_ARCHS, args.only, reporter)
    if not rows:
        print("no kernels to compile here (no nvcc for the CUDA kernels, no triton for the Triton ones)")
        return 0
    print(format_table(rows))
    print("\n" + LEGEND)
    print(f"\n{summary(rows)}")
    return 1 if any(not r.ok for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
