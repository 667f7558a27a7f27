"""SASS analysis: parse ``nvdisasm -g -gi`` output, classify instructions, find loops and count their paths.

Input: the text nvdisasm prints for a cubin with line info (``nvdisasm -c -g -gi FILE``): per function a
``.text.<name>`` section, labels ``.L_x_N:``, instructions ``/*0a60*/ @!P0 BRA `(.L_x_0) ;`` and source
comments ``//## File "f.py", line 12 inlined at "g.py", line 40``. A run of consecutive comment lines is one
inline chain, innermost first; it applies to the instructions below it.

Control flow: basic blocks start at the entry, at every label a branch names and after every branch; a
conditional branch (guard predicate, or a predicate operand as in ``BRA P6, target``) also falls through.
A ``CALL`` to a ``.L`` label of the function is a branch too: nvcc's sm_80 loop exit (``@P1 CALL.REL.NOINC
`(.L_x_9)`` before the back edge ``BRA `(.L_x_3)``); a CALL of a subroutine (``$__internal_...``, which RETs)
falls through. ``BRA.CONV ~URZ, target`` (a __syncwarp on sm_80) is read as the converged warp's jump: its
fall-through, the CALL of the warpsync helper for a diverged warp, is left out of the paths.
Loops are natural loops of back edges (an edge to a block that dominates its source); loops sharing a
header are one loop; a loop's parent is the smallest loop that strictly contains it. The self-loop trap
nvcc and triton put after the last EXIT (``.L_x_9: BRA `(.L_x_9)``) is not a loop.

Paths: inside a loop (its inner loops collapsed to one node each, which adds nothing to the outer count) the
DAG from the header to a latch (a block with an edge back to the header) is searched by dynamic programming
for the path that avoids blocks of role "band" (the far path), and for the path with the most band blocks
(the band path); a band block that every iteration passes counts as common code; each path takes as few
"rare" blocks as it can (code the common case skips: roles.py), then the most instructions. Instructions are
counted as issued: a predicated-off instruction still takes an issue slot.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter

from .sass_opcodes import (
    CLASSES,
    async_in_flight,
    classify,
    mma_fma,
    mma_shape,
    shared_bytes,
    wgmma_batches,
)

__all__ = [
    "Instruction",
    "Function",
    "Block",
    "Loop",
    "Path",
    "CLASSES",
    "parse",
    "classify",
    "analyze_cfg",
    "best_paths",
    "straight_line",
    "mma_shape",
    "mma_fma",
    "shared_bytes",
    "wgmma_batches",
    "async_in_flight",
]


_FUNC = re.compile(r"^\s*\.text\.(\S+?):?\s*$|^\s*\.section\s+\.text\.([^,\s]+)")
_LABEL = re.compile(r"^\s*(\.L\w+|[A-Za-z_$][\w$.]*):\s*$")
_INSTR = re.compile(r"^\s*/\*([0-9a-f]+)\*/\s+(@!?U?P[T0-9]+\s+)?([A-Z][A-Za-z0-9_.]*)\s*([^;]*);")
_FILE = re.compile(r'//## File "([^"]+)", line (\d+)((?: inlined at "[^"]+", line \d+)*)')
_INLINED = re.compile(r'inlined at "([^"]+)", line (\d+)')
_TARGET = re.compile(r"`\(([^)]+)\)")


@dataclasses.dataclass
class Instruction:
    addr: int
    pred: str  # guard predicate ("@!P0") or ""
    opcode: str  # with modifiers: "HGMMA.64x16x16.F32.BF16"
    operands: str
    frames: tuple[tuple[str, int], ...] = ()  # source (file, line), innermost first
    cls: str = ""

    def __post_init__(self):
        if not self.cls:
            self.cls = classify(self.opcode)

    @property
    def base(self) -> str:
        return self.opcode.split(".")[0]

    @property
    def target(self) -> str | None:
        m = _TARGET.search(self.operands)
        return m.group(1) if m else None

    @property
    def local_call(self) -> bool:
        """A ``CALL`` to a ``.L`` label of the function itself: nvcc's loop exit on sm_80 (``@P1 CALL.REL.NOINC
        `(.L_x_9)`` then ``BRA `(.L_x_3)``, the back edge), a jump that returns nowhere; a call of a subroutine
        (``$__internal_..._slowpath``, which ends in RET) is not one and falls through like a plain instruction."""
        return self.base == "CALL" and (self.target or "").startswith(".L")

    @property
    def ends_block(self) -> bool:
        return self.base in ("BRA", "BRX", "JMP", "JMX", "RET", "EXIT", "KILL") or self.local_call

    @property
    def conditional(self) -> bool:
        """A control transfer that may not happen (guarded, a predicate operand, or BRA.DIV)."""
        if self.pred or ".DIV" in self.opcode:
            return True
        if self.base == "BRA":
            head = self.operands.split("`")[0]
            return bool(re.search(r"(?<!\w)!?U?P[0-6]\b", head))
        return False


@dataclasses.dataclass
class Block:
    index: int
    label: str | None
    instrs: list[Instruction]
    succ: list[int] = dataclasses.field(default_factory=list)
    role: str = ""  # "far", "band", "other" or "" (no source role)

    @property
    def start(self) -> int:
        return self.instrs[0].addr


@dataclasses.dataclass
class Loop:
    header: int
    body: set[int]
    latches: set[int]
    parent: Loop | None = None
    children: list[Loop] = dataclasses.field(default_factory=list)
    index: int = 0

    @property
    def depth(self) -> int:
        return 0 if self.parent is None else self.parent.depth + 1

    @property
    def own_blocks(self) -> set[int]:
        """The body's blocks outside its inner loops."""
        return self.body - set().union(*(c.body for c in self.children))


@dataclasses.dataclass
class Path:
    blocks: list[int]
    instrs: list[Instruction]
    inner_loops: list[int]  # indices of the inner loops the path passes (counted apart)
    band_blocks: int = 0
    rare_blocks: int = 0

    def counts(self) -> Counter:
        return Counter(i.cls for i in self.instrs)


@dataclasses.dataclass
class Function:
    name: str
    instrs: list[Instruction]
    labels: dict[str, int]  # label -> index of the instruction it precedes
    blocks: list[Block] = dataclasses.field(default_factory=list)
    loops: list[Loop] = dataclasses.field(default_factory=list)


def parse(text: str) -> list[Function]:
    """The functions of an ``nvdisasm -g -gi`` (or ``cuobjdump -sass``) listing, instructions in order."""
    functions: list[Function] = []
    current: Function | None = None
    chain: list[tuple[str, int]] = []
    frames: tuple[tuple[str, int], ...] = ()
    pending: list[str] = []
    cuobjdump_func = re.compile(r"^\s*Function\s*:\s*(\S+)")
    for line in text.splitlines():
        m = _FUNC.match(line) or cuobjdump_func.match(line)
        if m:
            name = next(g for g in m.groups() if g)
            if current is None or current.name != name:
                current = Function(name, [], {})
                functions.append(current)
                chain, frames, pending = [], (), []
            continue
        if current is None:
            continue
        f = _FILE.search(line)
        if f:
            if not chain:  # the first line of a run is the innermost location with its inline chain
                chain = [(f.group(1), int(f.group(2)))]
                chain += [(p, int(n)) for p, n in _INLINED.findall(f.group(3))]
            frames = tuple(chain)
            continue
        chain = []
        lab = _LABEL.match(line)
        if lab:
            pending.append(lab.group(1))
            continue
        ins = _INSTR.match(line)
        if ins:
            pred = (ins.group(2) or "").strip()
            instr = Instruction(int(ins.group(1), 16), pred, ins.group(3), ins.group(4).strip(), frames)
            for name in pending:
                current.labels[name] = len(current.instrs)
            pending = []
            current.instrs.append(instr)
    return [f for f in functions if f.instrs]


def _build_blocks(fn: Function) -> list[Block]:
    instrs = fn.instrs
    leaders = {0} | set(fn.labels.values())
    for i, ins in enumerate(instrs):
        if ins.ends_block and i + 1 < len(instrs):
            leaders.add(i + 1)
    starts = sorted(x for x in leaders if x < len(instrs))
    by_instr = {}
    names = {v: k for k, v in fn.labels.items()}
    blocks = []
    for bi, s in enumerate(starts):
        e = starts[bi + 1] if bi + 1 < len(starts) else len(instrs)
        blocks.append(Block(bi, names.get(s), instrs[s:e]))
        by_instr[s] = bi
    for b in blocks:
        last = b.instrs[-1]
        fall = b.index + 1 if b.index + 1 < len(blocks) else None
        succ = []
        if last.base == "BRA" or last.local_call:
            tgt = last.target
            if tgt in fn.labels and fn.labels[tgt] in by_instr:
                succ.append(by_instr[fn.labels[tgt]])
            if last.conditional and fall is not None:
                succ.append(fall)
        elif last.base in ("EXIT", "RET", "KILL"):
            if last.conditional and fall is not None:
                succ.append(fall)
        elif last.base in ("BRX", "JMX", "JMP"):
            pass  # indirect: successors unknown; nothing falls through
        elif fall is not None:
            succ.append(fall)
        b.succ = list(dict.fromkeys(succ))
    return blocks


def _dominators(blocks: list[Block]) -> list[set[int]]:
    n = len(blocks)
    preds = [[] for _ in range(n)]
    for b in blocks:
        for s in b.succ:
            preds[s].append(b.index)
    reach, stack = {0}, [0]
    while stack:
        for s in blocks[stack.pop()].succ:
            if s not in reach:
                reach.add(s)
                stack.append(s)
    dom = [set(reach) for _ in range(n)]
    dom[0] = {0}
    changed = True
    while changed:
        changed = False
        for b in sorted(reach - {0}):
            ps = [dom[p] for p in preds[b] if p in reach]
            new = set.intersection(*ps) | {b} if ps else {b}
            if new != dom[b]:
                dom[b], changed = new, True
    for b in range(n):
        if b not in reach:
            dom[b] = set()
    return dom


def _is_trap(block: Block) -> bool:
    """The self-loop after the last EXIT: one unconditional BRA to itself."""
    return len(block.instrs) == 1 and block.instrs[0].base == "BRA" and block.succ == [block.index]


def analyze_cfg(fn: Function) -> Function:
    """Fill fn.blocks and fn.loops (outermost first, by header address); returns fn."""
    blocks = _build_blocks(fn)
    dom = _dominators(blocks)
    preds = [[] for _ in blocks]
    for b in blocks:
        for s in b.succ:
            preds[s].append(b.index)
    loops: dict[int, Loop] = {}
    for b in blocks:
        for s in b.succ:
            if s in dom[b.index] and not _is_trap(blocks[s]):
                body, stack = {s, b.index}, [b.index]
                while stack:
                    x = stack.pop()
                    if x == s:
                        continue
                    for p in preds[x]:
                        if p not in body:
                            body.add(p)
                            stack.append(p)
                loop = loops.setdefault(s, Loop(s, set(), set()))
                loop.body |= body
                loop.latches.add(b.index)
    ordered = sorted(loops.values(), key=lambda lp: (-len(lp.body), blocks[lp.header].start))
    for i, lp in enumerate(ordered):
        parents = [o for o in ordered[:i] if lp.body < o.body or (lp.body <= o.body and o is not lp)]
        if parents:
            lp.parent = min(parents, key=lambda o: len(o.body))
            lp.parent.children.append(lp)
    ordered.sort(key=lambda lp: blocks[lp.header].start)
    for i, lp in enumerate(ordered):
        lp.index = i
    fn.blocks, fn.loops = blocks, ordered
    return fn


def _collapsed(fn: Function, region: set[int], children: list[Loop]):
    """Node of each block of ``region``: a block, or ("loop", child index) for blocks of an inner loop."""
    node = {b: b for b in region}
    for child in children:
        for b in child.body:
            node[b] = ("loop", child.index)
    return node


def _dag_paths(fn: Function, region: set[int], children: list[Loop], entry: int, ends: set, back_to: int | None):
    """Successors of the collapsed DAG of ``region``: {node: [node]}, edges to ``back_to`` dropped."""
    node = _collapsed(fn, region, children)
    succ: dict = {}
    for b in region:
        u = node[b]
        succ.setdefault(u, [])
        for s in fn.blocks[b].succ:
            if s not in region or s == back_to:
                continue
            v = node[s]
            if v != u and v not in succ[u]:
                succ[u].append(v)
    return node, succ


def _topo(succ: dict, start) -> list:
    order, seen, stack = [], set(), [(start, iter(succ.get(start, [])))]
    seen.add(start)
    while stack:
        u, it = stack[-1]
        for v in it:
            if v not in seen:
                seen.add(v)
                stack.append((v, iter(succ.get(v, []))))
                break
        else:
            order.append(u)
            stack.pop()
    return order[::-1]


def _best(fn: Function, succ: dict, start, ends: set, key, allowed) -> list | None:
    """Node sequence from ``start`` to a node of ``ends`` maximizing ``key(node)`` summed (tuples add
    elementwise), over nodes where ``allowed(node)``; None when no such path exists."""
    order = _topo(succ, start)
    best: dict = {}
    prev: dict = {}
    if not allowed(start):
        return None
    best[start] = key(start)
    for u in order:
        if u not in best:
            continue
        for v in succ.get(u, []):
            if not allowed(v):
                continue
            cand = tuple(a + b for a, b in zip(best[u], key(v), strict=True))
            if v not in best or cand > best[v]:
                best[v], prev[v] = cand, u
    reached = [e for e in ends if e in best]
    if not reached:
        return None
    end = max(reached, key=lambda e: best[e])
    path = [end]
    while path[-1] != start:
        path.append(prev[path[-1]])
    return path[::-1]


def _make_path(fn: Function, nodes: list) -> Path:
    blocks = [n for n in nodes if isinstance(n, int)]
    inner = [n[1] for n in nodes if not isinstance(n, int)]
    instrs = [i for b in blocks for i in fn.blocks[b].instrs]
    return Path(
        blocks,
        instrs,
        inner,
        sum(fn.blocks[b].role == "band" for b in blocks),
        sum(fn.blocks[b].role == "rare" for b in blocks),
    )


def _weight(fn: Function, n) -> int:
    return len(fn.blocks[n].instrs) if isinstance(n, int) else 0


def best_paths(fn: Function, loop: Loop) -> dict[str, Path]:
    """{"far": the band-free path, "band": the path through the most band blocks} of one iteration of
    ``loop``; a key is missing when no such path exists (no band-free path, or no band block). Both take as
    few "rare" blocks (code the common case skips) as they can, then the most instructions."""
    node, succ = _dag_paths(fn, loop.body, loop.children, loop.header, set(), loop.header)
    ends = {node[b] for b in loop.latches}
    start = node[loop.header]

    def reaches_end_without(skip, avoid=frozenset()) -> bool:
        seen, stack = {start}, [start]
        while stack:
            u = stack.pop()
            if u in ends:
                return True
            for v in succ.get(u, []):
                if v != skip and v not in seen and v not in avoid:
                    seen.add(v)
                    stack.append(v)
        return False

    # A "band" block every common-case iteration passes (a join the compiler gave a band line) is common code, not
    # band (a rare early exit, e.g. a skipped causal tile, does not make it avoidable).
    rare = {n for n in succ if isinstance(n, int) and fn.blocks[n].role == "rare"}
    avoidable_rare = frozenset(n for n in rare if reaches_end_without(n))  # a rare join every path passes is not
    common = {
        n
        for n in succ
        if isinstance(n, int) and fn.blocks[n].role == "band" and not reaches_end_without(n, avoidable_rare)
    }

    def role(n):
        if not isinstance(n, int) or n in common:
            return ""
        return fn.blocks[n].role

    out = {}
    far = _best(fn, succ, start, ends, lambda n: (-int(role(n) == "rare"), _weight(fn, n)), lambda n: role(n) != "band")
    if far is not None:
        out["far"] = _make_path(fn, far)
    if any(role(n) == "band" for n in succ):
        band = _best(
            fn,
            succ,
            start,
            ends,
            lambda n: (int(role(n) == "band"), -int(role(n) == "rare"), _weight(fn, n)),
            lambda n: True,
        )
        if band is not None and any(role(n) == "band" for n in band):
            out["band"] = _make_path(fn, band)
    return out


def straight_line(fn: Function) -> Path:
    """The entry-to-exit path outside every loop (top-level loops collapsed) with the fewest rare blocks, then
    the most instructions: the prologue and epilogue a program runs once."""
    region = set(range(len(fn.blocks))) - {b.index for b in fn.blocks if _is_trap(b)}
    top = [lp for lp in fn.loops if lp.parent is None]
    node, succ = _dag_paths(fn, region, top, 0, set(), None)
    ends = {node[b.index] for b in fn.blocks if b.index in region and not succ.get(node[b.index])}

    # heaviest first; among equal ones, the path through the most loops (the one a real call takes)
    def key(n):
        rare = isinstance(n, int) and fn.blocks[n].role == "rare"
        return (-int(rare), _weight(fn, n), int(not isinstance(n, int)))

    path = _best(fn, succ, node[0], ends, key, lambda n: True)
    return _make_path(fn, path or [node[0]])
