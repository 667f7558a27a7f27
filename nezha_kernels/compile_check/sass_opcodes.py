"""What a SASS opcode is: its class (CLASSES, classify), its MMA shape and multiply-adds, the shared-memory
bytes it moves; and counts over one loop path's instructions (wgmma batches, cp.async groups in flight).

Split from sass.py (parsing and control flow), which re-exports every name here.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .sass import Instruction

__all__ = ["CLASSES", "classify", "mma_shape", "mma_fma", "shared_bytes", "wgmma_batches", "async_in_flight"]

# Instruction classes, in table order.
CLASSES = (
    "mma",
    "ex2",
    "fp32",
    "select",
    "int",
    "mem_global",
    "mem_shared",
    "mem_async",
    "sync",
    "branch",
    "other",
)

# Opcode (first dot-separated part) -> class. MUFU, BRA variants and the U* uniform ops are handled in classify.
_BY_OP = {}
for _cls, _ops in {
    "mma": "HGMMA HMMA IMMA DMMA QGMMA IGMMA BGMMA HMMA2 UTCHMMA UTCQMMA",
    "fp32": "FADD FMUL FFMA FMNMX FCHK F2F F2FP FRND HADD2 HMUL2 HFMA2 HMNMX2 I2F F2I I2FP F2IP FSWZADD DADD DMUL "
    "DFMA F2FP.BF16 FMUL2 FADD2 FFMA2",
    "select": "FSEL SEL FSETP ISETP PSETP PLOP3 P2R R2P HSETP2 DSETP ISETP.64 FSET ISET VOTEU",
    "int": "IMAD IADD3 IADD LOP3 LEA SHF SHL SHR VIADD VIADDMNMX IABS SGXT PRMT IMNMX VIMNMX BMSK POPC FLO BREV "
    "IMUL LOP IADD32I IMAD.WIDE BFE BFI",
    "mem_global": "LDG STG LD ST RED ATOM ATOMG REDG LDL STL CCTL",
    "mem_shared": "LDS STS LDSM STSM ATOMS REDS",
    "mem_async": "LDGSTS LDGDEPBAR UTMALDG UTMASTG UTMAPF UBLKCP UTMACCTL UTMAREDG UBLKRED",
    "sync": "BAR MEMBAR FENCE DEPBAR WARPGROUP SYNCS WARPSYNC ERRBAR ARRIVES CGAERRBAR ELECT",
    "branch": "BRA BRX JMP JMX CALL RET EXIT BSSY BSYNC BREAK BPT YIELD KILL NANOSLEEP",
}.items():
    for _op in _ops.split():
        _BY_OP[_op] = _cls
# Uniform-datapath twins of integer and select ops (ULOP3, UIADD3, UISETP, USEL, ...).
_UNIFORM = {
    "int": "ULOP3 UIADD3 USHF UIMAD ULEA USGXT UPRMT UFLO UPOPC UBMSK UBREV UIABS UIMNMX",
    "select": "UISETP USEL UPLOP3 UP2UR UR2UP",
}
for _cls, _ops in _UNIFORM.items():
    for _op in _ops.split():
        _BY_OP[_op] = _cls


def classify(opcode: str) -> str:
    """The class (one of CLASSES) of an opcode with its modifiers, e.g. "MUFU.EX2" -> "ex2"."""
    base = opcode.split(".")[0]
    if base == "MUFU":
        return "ex2" if opcode.startswith("MUFU.EX2") else "fp32"
    return _BY_OP.get(base, "other")


_SHAPE = re.compile(r"^(HGMMA|HMMA|IMMA|QGMMA|IGMMA)\.(\d+)(?:x(\d+)x(\d+))?")


def mma_shape(opcode: str) -> str:
    """ "HGMMA.64x16x16" / "HMMA.16816" / "HMMA.1688" from an MMA opcode."""
    m = _SHAPE.match(opcode)
    if not m:
        return opcode.split(".")[0]
    if m.group(3):
        return f"{m.group(1)}.{m.group(2)}x{m.group(3)}x{m.group(4)}"
    return f"{m.group(1)}.{m.group(2)}"


def mma_fma(opcode: str) -> float:
    """Multiply-adds one warp's instruction contributes: HGMMA m x n x k is issued by each of the 4 warps of
    the warpgroup (m n k / 4 each); HMMA.16816 is 16 x 8 x 16, HMMA.1688 16 x 8 x 8 per warp."""
    m = _SHAPE.match(opcode)
    if not m:
        return 0.0
    if m.group(3):
        return int(m.group(2)) * int(m.group(3)) * int(m.group(4)) / 4
    digits = m.group(2)
    dims = {"16816": (16, 8, 16), "1688": (16, 8, 8), "884": (8, 8, 4), "16832": (16, 8, 32)}.get(digits)
    return float(dims[0] * dims[1] * dims[2]) if dims else 0.0


def shared_bytes(ins: Instruction) -> int:
    """Bytes one warp's LDS / STS / LDSM / STSM moves: 32 lanes x the access width (32 bits unless the
    opcode says .64 / .128; narrower accesses still take a 128 B wavefront), ldmatrix 128 B per 8 x 8 matrix
    (LDSM.16.M88.4: 4 matrices)."""
    if ins.base in ("LDSM", "STSM"):
        last = ins.opcode.rsplit(".", 1)[-1]
        return 128 * (int(last) if last in ("1", "2", "4") else 1)
    if ins.base in ("LDS", "STS", "ATOMS", "REDS"):
        width = 32
        for part in ins.opcode.split(".")[1:]:
            if part in ("64", "128"):
                width = int(part)
        return 4 * width
    return 0


def wgmma_batches(instrs: list[Instruction]) -> list[int]:
    """wgmma in flight at each wait: the HGMMA issued since the previous WARPGROUP.DEPBAR, at each
    WARPGROUP.DEPBAR along ``instrs`` (one loop iteration). The HGMMA after the last wait are added to the
    first wait's count: they are still outstanding when the next iteration reaches it."""
    groups, n = [], 0
    for ins in instrs:
        if ins.base == "HGMMA":
            n += 1
        elif ins.opcode.startswith("WARPGROUP.DEPBAR"):
            groups.append(n)
            n = 0
    if n and groups:
        groups[0] += n
    elif n:
        groups.append(n)
    return [g for g in groups if g]


_WAIT = re.compile(r"SB(\d)\s*,\s*(0x[0-9a-f]+|\d+)")


def async_in_flight(instrs: list[Instruction]) -> dict:
    """cp.async groups over two passes of a loop path: commits (LDGDEPBAR) per pass, the waits'
    allowed-pending counts (DEPBAR.LE SBn, N) and the most groups outstanding at any point of the second pass
    (the steady state); also LDGSTS and UTMALDG per pass."""
    commits = sum(i.base == "LDGDEPBAR" for i in instrs)
    waits = []
    outstanding, peak = 0, 0
    for rep in range(2):
        for ins in instrs:
            if ins.base == "LDGDEPBAR":
                outstanding += 1
            elif ins.base == "DEPBAR" and "SB" in ins.operands:
                m = _WAIT.search(ins.operands)
                if m:
                    n = int(m.group(2), 0)
                    outstanding = min(outstanding, n)
                    if rep == 0:
                        waits.append(n)
            if rep == 1:
                peak = max(peak, outstanding)
    return {
        "ldgsts": sum(i.base == "LDGSTS" for i in instrs),
        "commit_groups": commits,
        "wait_pending": waits,
        "groups_in_flight": peak,
        "tma_loads": sum(i.base == "UTMALDG" for i in instrs),
    }
