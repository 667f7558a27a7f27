"""Source roles of SASS instructions: which loop of the algorithm (far field, band, other) a line belongs to.

The static profile reports a kernel's loops by role: "far" (key tiles beyond the band: plain flash work),
"band" (tiles that meet the band |j - i| < R) and "other" (prologue/epilogue chunk loops and the like).
Roles come from the source lines the compiler's line info (``nvdisasm -g -gi``) names, innermost inline
frame first, through a role map built from each source file. THE CONVENTION kernel authors follow (Triton
and CUDA alike), strongest first:

1. Functions whose name holds ``far_loop``, ``far_tile``, ``band_loop`` or ``band_tile`` (``_fwd_far_tile``,
   ``dq_band_loop``, ``far_tile_nomask``): every line of the function has that role. Put a far loop's body
   (or the whole loop) in a ``*far_tile*`` / ``*far_loop*`` function and a band loop's in a ``*band_tile*`` /
   ``*band_loop*`` one. (A bare ``band`` word is not enough: ``load_band_table`` serves the prologue too.)
2. A marker comment on a loop header or an ``if``: ``# profile: far`` / ``band`` / ``other`` (Python) or
   ``// profile: far`` (C++) gives that role to the lines of the statement's block.
3. Today's kernels (before the rebuild) have one key loop with an in-band branch: an ``if`` whose condition
   names ``in_band`` or ``band`` (also ``tile_in_band(...)``), or both ``rel_min`` and ``rel_max`` (the
   Triton backward's ``if (rel_min < R) & (rel_max > -R)``), marks its body "band" and its ``else`` "far"
   (C++: a braced block, or the one statement of a braceless ``if``). The loop's far path is then the
   heaviest path through the loop that avoids band blocks, the band path the one through the most band
   blocks (see sass.best_paths).
4. Role "rare": code the common case (no masks, no dropout) skips. Functions with a ``rare`` word in their
   name, a ``profile: rare`` marker, a C++ ``if`` whose condition tests a pointer against ``nullptr`` (an
   optional mask), and today's Philox functions (``philox*``, ``dropout_uniform``). Paths take as few rare
   blocks as they can, then the heaviest (Triton kernels compile features out as constexprs: no rare code).

Triton 3.6 writes no inline chains into its line info (3.9 does): there an instruction of an inlined helper
(``dot``, ``tl.max``) carries only the helper's own line, so a role reaches it only through its block's vote
(a third of the block) or the if-else rule below; keep far / band loop bodies mostly in their own function or
marked block, not in shared helpers, so the vote carries.

The innermost region wins where regions nest. An instruction takes the role of its innermost frame that
has one (a generic helper such as ``dot`` inlined into a ``*far_tile*`` function is "far"). A block takes
the role at least a third of its instructions have (the most common one); the unmarked arm of a two-way
branch whose other arm is far (band) is band (far). A loop with no band block is
"far" when most of its roled blocks are far, else "other"; a loop none of whose blocks has a role (triton 3.6's
split band loops) takes the one far / band role its own instructions name, if they name exactly one.
"""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

__all__ = ["role_map", "function_at", "instruction_role", "assign_roles", "loop_role", "ROLE_WORD", "MARKER"]

ROLE_WORD = re.compile(r"(?:^|_)(far|band)_(?:loop|tile)")
MARKER = re.compile(r"(?:#|//)\s*profile:\s*(far|band|rare|other)\b")
_LEGACY_TEST = ("rel_min", "rel_max")
_IN_BAND = re.compile(r"(?:^|_)(?:in_)?band$", re.I)
# Today's CUDA feature code the common case skips: Philox dropout (dropout_keep short-circuits it at p = 0).
_LEGACY_RARE_FUNCTIONS = re.compile(r"philox|dropout_uniform", re.I)
_RARE_WORD = re.compile(r"(?:^|_)rare(?:_|$)", re.I)


def _name_role(name: str) -> str | None:
    m = ROLE_WORD.search(name.lower())
    if m:
        return m.group(1)
    return "rare" if _RARE_WORD.search(name) or _LEGACY_RARE_FUNCTIONS.search(name) else None


def _python_regions(text: str) -> list[tuple[int, int, str]]:
    """(first line, last line, role) regions of a Python source."""
    tree = ast.parse(text)
    lines = text.splitlines()
    regions = []

    def block_span(stmts):
        return stmts[0].lineno, max(getattr(s, "end_lineno", s.lineno) for s in stmts)

    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            role = _name_role(node.name)
            if role:
                regions.append((node.lineno, node.end_lineno, role))
        if isinstance(node, ast.For | ast.While | ast.If):
            marker = MARKER.search(lines[node.lineno - 1]) if node.lineno <= len(lines) else None
            if marker and node.body:
                regions.append((*block_span(node.body), marker.group(1)))
                continue
        if isinstance(node, ast.If):
            names = {n.id for n in ast.walk(node.test) if isinstance(n, ast.Name)}
            banded = any(_IN_BAND.search(n) for n in names) or all(t in names for t in _LEGACY_TEST)
            if banded:
                regions.append((*block_span(node.body), "band"))
                if node.orelse:
                    regions.append((*block_span(node.orelse), "far"))
    return regions


def _strip_cpp(text: str) -> str:
    """Comments and string literals blanked (same length, newlines kept) so braces can be counted."""

    def blank(m):
        return re.sub(r"[^\n]", " ", m.group(0))

    return re.sub(r'//[^\n]*|/\*.*?\*/|"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'', blank, text, flags=re.S)


def _brace_block(code: str, start: int) -> tuple[int, int] | None:
    """(offset of the "{" at or after ``start``, offset of its matching "}") or None."""
    open_at = code.find("{", start)
    if open_at < 0:
        return None
    depth = 0
    for i in range(open_at, len(code)):
        if code[i] == "{":
            depth += 1
        elif code[i] == "}":
            depth -= 1
            if depth == 0:
                return open_at, i
    return None


def _cpp_regions(text: str) -> list[tuple[int, int, str]]:
    code = _strip_cpp(text)
    code_lines = code.splitlines()

    def line_of(offset):
        return code.count("\n", 0, offset) + 1

    def region(span, role):
        """Lines of a brace block; its closing line is left out when it starts with the brace ("} else {")."""
        first, last = line_of(span[0]), line_of(span[1])
        if last > first and code_lines[last - 1].lstrip().startswith("}"):
            last -= 1
        return first, last, role

    regions = []
    # Function definitions: name(...) [qualifiers] { ... }, no ";" between ")" and "{".
    for m in re.finditer(r"\b([A-Za-z_]\w*)\s*\([^;{}]*\)\s*(?:const\s*)?\{", code):
        role = _name_role(m.group(1))
        if role and m.group(1) not in ("if", "for", "while", "switch"):
            span = _brace_block(code, m.end() - 1)
            if span:
                regions.append(region(span, role))
    lines = text.splitlines()
    for i, line in enumerate(lines):
        marker = MARKER.search(line)
        if marker and re.search(r"\b(for|while|if)\b", code_lines[i]):
            offset = sum(len(x) + 1 for x in code_lines[:i])
            span = _brace_block(code, offset)
            if span:
                regions.append(region(span, marker.group(1)))
    for m in re.finditer(r"\bif\s*\(", code):
        depth, j = 1, m.end()
        while j < len(code) and depth:
            depth += {"(": 1, ")": -1}.get(code[j], 0)
            j += 1
        cond = code[m.end() : j]
        names = set(re.findall(r"[A-Za-z_]\w*", cond))
        if any(_IN_BAND.search(n) for n in names) or all(t in names for t in _LEGACY_TEST):
            role, other = "band", "far"
        elif "nullptr" in names and "==" not in cond:
            role, other = "rare", None
        else:
            continue
        if not code[j:].lstrip().startswith("{"):  # braceless: the statement up to its ";"
            end = code.find(";", j)
            if end > 0:
                regions.append((line_of(m.start()), line_of(end), role))
            continue
        span = _brace_block(code, j)
        if not span:
            continue
        regions.append(region(span, role))
        rest = code[span[1] + 1 :]
        after = re.match(r"\s*else\s*\{", rest)
        if after and other:
            span2 = _brace_block(code, span[1] + 1 + after.end() - 1)
            if span2:
                regions.append(region(span2, other))
    return regions


@functools.lru_cache(maxsize=64)
def role_map(path: str) -> dict[int, str]:
    """{line: role} of a source file (Python by its .py suffix, else C++); {} when unreadable."""
    try:
        text = Path(path).read_text()
    except OSError:
        return {}
    try:
        regions = _python_regions(text) if path.endswith(".py") else _cpp_regions(text)
    except SyntaxError:
        return {}
    out: dict[int, tuple[int, str]] = {}
    for first, last, role in regions:
        size = last - first
        for line in range(first, last + 1):
            if line not in out or size < out[line][0]:
                out[line] = (size, role)
    return {line: role for line, (_, role) in out.items()}


@functools.lru_cache(maxsize=256)
def _function_map(path: str) -> dict[int, str]:
    """{line: name of the innermost function holding it} of a Python source; {} for C++ or when unreadable."""
    if not path.endswith(".py"):
        return {}
    try:
        tree = ast.parse(Path(path).read_text())
    except (OSError, SyntaxError):
        return {}
    out: dict[int, tuple[int, str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            size = (node.end_lineno or node.lineno) - node.lineno
            for line in range(node.lineno, (node.end_lineno or node.lineno) + 1):
                if line not in out or size < out[line][0]:
                    out[line] = (size, node.name)
    return {line: name for line, (_, name) in out.items()}


def function_at(path: str, line: int) -> str:
    """Name of the innermost Python function holding ``line`` of ``path`` ("" when none: C++, module level)."""
    return _function_map(path).get(line, "")


def instruction_role(frames) -> str:
    """Role of an instruction from its (file, line) inline frames, innermost first; "" when none has one."""
    for path, line in frames:
        role = role_map(path).get(line)
        if role:
            return role
    return ""


def assign_roles(fn) -> None:
    """Set each block's role (sass.Block.role): the most common role among its instructions when at least a
    third of them have it (a block of common code that holds the few instructions of an ``if (band)``
    test stays common), else ""."""
    from collections import Counter

    for block in fn.blocks:
        votes = Counter(r for r in (instruction_role(i.frames) for i in block.instrs) if r)
        top = votes.most_common(1)
        block.role = top[0][0] if top and 3 * top[0][1] >= len(block.instrs) else ""
    _other_arm(fn)


def _other_arm(fn) -> None:
    """The other arm of a band / far if-else: where a two-way branch leads to one block of role far (band) and
    one without a role entered only from that branch, the latter is band (far). Needed where line info has
    no inline chains (triton 3.6): the band arm's instructions then carry their helpers' lines, not the
    ``if in_band`` body's."""
    preds: dict[int, int] = {}
    for b in fn.blocks:
        for s in b.succ:
            preds[s] = preds.get(s, 0) + 1
    flip = {"far": "band", "band": "far"}
    for b in fn.blocks:
        if len(b.succ) != 2:
            continue
        x, y = (fn.blocks[i] for i in b.succ)
        for marked, bare in ((x, y), (y, x)):
            if marked.role in flip and not bare.role and preds.get(bare.index) == 1:
                bare.role = flip[marked.role]


def loop_role(fn, loop) -> str:
    """ "far" or "other" for a loop without band blocks (see the module docstring); "band" when every block
    that has a role is band; a loop none of whose blocks has a role takes the one far / band role its
    instructions name, if they name exactly one."""
    from collections import Counter

    own = loop.own_blocks
    votes = Counter(fn.blocks[b].role for b in own if fn.blocks[b].role in ("far", "band", "other"))
    if not votes:
        # No block reaches a third (triton 3.6: no inline chains, most of a band loop's instructions carry their
        # helpers' lines): the loop's own far / band instructions decide when they name one role only.
        seen = {instruction_role(i.frames) for b in own for i in fn.blocks[b].instrs}
        seen &= {"far", "band"}
        return seen.pop() if len(seen) == 1 else "other"
    if set(votes) == {"band"}:
        return "band"
    return "far" if votes.get("far", 0) >= votes.get("other", 0) else "other"
