"""One row of the compile check: a kernel, a config and an architecture, with what the compiler reported.

Its own module so that the component modules (triton_aot, nvcc) and the package that gathers their rows import it
without importing each other.
"""

from __future__ import annotations

import dataclasses

__all__ = ["CompileRow"]


@dataclasses.dataclass
class CompileRow:
    component: str  # "triton" or "cuda"
    kernel: str  # kernel name
    config: str  # tile config / dtype / head dim, human readable
    arch: int  # 80, 90
    status: str  # "ok" or "error"
    registers: int | None = None
    shared_bytes: int | None = None
    spill_bytes: int | None = None  # stack + local memory; > 0 means spills
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"
