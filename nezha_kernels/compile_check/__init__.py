"""`python -m nezha_kernels compile-check`: compile every GPU kernel for real architectures without a GPU.

Each component module exposes ``run(archs) -> list[CompileRow]``; this module gathers the rows, prints
one table (kernel x config x arch: status, registers, shared memory, spills) and fails on any error.
"""

from __future__ import annotations

import dataclasses
import importlib
import sys

__all__ = ["CompileRow", "run_all", "format_table", "main", "COMPONENTS"]

# Component name -> module implementing run(archs).
COMPONENTS = {
    "triton": "nezha_kernels.compile_check.triton_aot",
    "cuda": "nezha_kernels.compile_check.nvcc",
}
DEFAULT_ARCHS = (80, 90)


@dataclasses.dataclass
class CompileRow:
    component: str        # "triton" or "cuda"
    kernel: str           # kernel name
    config: str           # tile config / dtype / head dim, human readable
    arch: int             # 80, 90
    status: str           # "ok" or "error"
    registers: int | None = None
    shared_bytes: int | None = None
    spill_bytes: int | None = None   # stack + local memory; > 0 means spills
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def run_all(archs=DEFAULT_ARCHS, components=None) -> list[CompileRow]:
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
        rows.extend(module.run(tuple(archs)))
    return rows


def format_table(rows: list[CompileRow]) -> str:
    header = ("component", "kernel", "config", "arch", "status", "regs", "smem B", "spill B", "message")
    body = [
        (r.component, r.kernel, r.config, f"sm_{r.arch}", r.status,
         "" if r.registers is None else str(r.registers),
         "" if r.shared_bytes is None else str(r.shared_bytes),
         "" if r.spill_bytes is None else str(r.spill_bytes),
         r.message[:80])
        for r in rows
    ]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths)) for b in body]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="nezha-kernels compile-check", description=__doc__)
    parser.add_argument("--arch", type=int, action="append", help="SM arch (repeatable), default 80 and 90")
    parser.add_argument("--only", choices=sorted(COMPONENTS), action="append", help="components to check")
    args = parser.parse_args(argv)
    rows = run_all(args.arch or DEFAULT_ARCHS, args.only)
    print(format_table(rows))
    failed = [r for r in rows if not r.ok]
    print(f"\n{len(rows) - len(failed)} ok, {len(failed)} failed")
    if not rows:
        print("no kernels to compile in this version")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
