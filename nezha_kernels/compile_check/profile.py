"""`nezha-kernels compile-check --profile --out DIR`: the static profile of every GPU kernel, from its SASS.

Each kernel's main configs are compiled for the requested archs as the JIT would (profile_triton,
profile_cuda), disassembled with triton's nvdisasm, and analysed (profile_analyze, sass, roles): resources,
MMA kinds, async copies, and per loop and path role (far / band / other, see roles.py for the convention
kernel authors follow) the warp-instructions of one iteration by class, per score. The H100 issue model
(issue_model.py) predicts each kernel's time at L = 512 .. 16k for B*H = 16 * 16 heads.

A rebuilt kernel joins by its job tables: profile_triton.KERNELS / TILE_GEOMETRY (and triton_aot's
KERNEL_FUNCTIONS, make_job and launch_signature for its arguments), profile_cuda.GEOMETRY for a CUDA kernel; loop roles
follow the convention in roles.py.

Writes DIR/<kernel>_sm<arch>_<dtype>_d<D>.sass (the nvdisasm listing with line info) and DIR/profile.json
(one row per kernel, backend, arch, dtype and head dim), prints a table of loops and one of predictions.
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

from . import issue_model, sass
from .profile_row import HEADS, LENGTHS, R, analyze_row

__all__ = ["LENGTHS", "HEADS", "R", "profile_rows", "format_loops", "format_model", "run_profile"]


def _add_ratios(rows: list[dict]) -> None:
    """Each forward row's (Triton or CUDA) predicted time over the plain flash forward's (same arch, dtype, D)."""
    ref = {
        (r["arch"], r["dtype"], r["head_dim"]): r
        for r in rows
        if r["kernel"] == "plain_flash_fwd" and r.get("status") == "ok"
    }
    for r in rows:
        base = ref.get((r["arch"], r["dtype"], r["head_dim"]))
        if base is None or r.get("status") != "ok" or r is base or "fwd" not in r["kernel"]:
            continue
        for p, q in zip(r["model"]["predictions"], base["model"]["predictions"], strict=True):
            p["vs_plain_flash_fwd"] = round(p["time_us"] / q["time_us"], 2) if q["time_us"] else None


def profile_rows(
    archs,
    dtypes,
    head_dims,
    components=("triton", "cuda"),
    out_dir: Path | None = None,
    say=None,
    triton_kernels=None,
    plain: bool = True,
    listed_stages: bool = False,
):
    """Every profile row for ``archs`` x ``dtypes`` x ``head_dims`` of the chosen components (Triton: the
    kernels ``triton_kernels``, default all, and the plain flash reference if ``plain``)."""
    say = say or (lambda text: None)
    rows: list[dict] = []
    if "triton" in components:
        from . import profile_triton

        try:
            import triton
        except ImportError:
            triton = None
        if triton is not None:
            jobs = profile_triton.jobs(
                archs, dtypes, head_dims, triton_kernels or profile_triton.KERNELS, plain, listed_stages
            )
            say(f"profile: {len(jobs)} triton compiles (cached ones are instant) ...")
            results = profile_triton.compile_jobs(
                jobs,
                progress=lambda job, res: say(
                    f"  compiled {job['kernel']} sm_{job['arch']} {job['dtype']} d{job['head_dim']}"
                ),
            )
            for job, res in zip(jobs, results, strict=True):
                rows_, cols, trips, band_cols = profile_triton.TILE_GEOMETRY[job["kernel"]](job["constexprs"])
                meta = {
                    "kernel": job["kernel"],
                    "backend": "triton",
                    "arch": job["arch"],
                    "compiler": f"triton {triton.__version__}",
                    "dtype": job["dtype"],
                    "head_dim": job["head_dim"],
                    "tile": job["tile"],
                    "warps": job["warps"],
                    "stages": job["stages"],
                    "rows": rows_,
                    "cols": cols,
                    "band_cols": band_cols,
                    "other_trips": trips,
                }
                if "error" in res:
                    rows.append({**meta, "status": "error", "message": res["error"]})
                    continue
                meta["shared_bytes"] = res["shared"]
                rows.append(analyze_row(meta, res["cubin"], res["name"], out_dir))
    if "cuda" in components:
        try:
            from . import profile_cuda
        except ModuleNotFoundError as exc:
            if exc.name != "nezha_kernels.compile_check.profile_cuda":
                raise
        else:
            rows += profile_cuda.rows(archs, dtypes, head_dims, out_dir, say)
    _add_ratios(rows)
    return rows


def _fmt(x, digits=3) -> str:
    if x is None:
        return "-"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def _table(header, body) -> str:
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(header)]
    lines = [
        "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip(),
        "  ".join("-" * w for w in widths),
    ]
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths, strict=True)).rstrip() for b in body]
    return "\n".join(lines)


def format_loops(rows: list[dict]) -> str:
    header = ("kernel", "be", "arch", "dtype", "D", "tile w s", "regs", "spill", "smem", "loop", "role", "instr",
              "scores", "/score", "ex2/sc", "mma", "wgmma/wait", "async")  # fmt: skip
    body = []
    for r in rows:
        base = (
            r["kernel"],
            r["backend"],
            f"sm_{r['arch']}",
            r["dtype"],
            str(r["head_dim"]),
            f"{r['tile'][0]}x{r['tile'][1]} w{r['warps']} s{r['stages']}",
        )
        if r.get("status") != "ok":
            body.append((*base, "", "", "", "", "error", (r.get("message") or "")[:60], *[""] * 6))
            continue
        res = (_fmt(r["registers"]), _fmt(r["spill_bytes"]), _fmt(r["shared_bytes"]))
        for e in r["loops"] or [None]:
            if e is None:
                body.append((*base, *res, "-", "-", *[""] * 7))
                continue
            mma = " ".join(f"{n}x{k}" for k, n in e["mma"].items())
            a = e["async"]
            asy = []
            if a["ldgsts"]:
                asy.append(f"cp.async {a['groups_in_flight']}/{a['commit_groups']}g")
            if a["tma_loads"]:
                asy.append(f"tma {a['tma_loads']}")
            batches = e["wgmma_batches"]
            body.append(
                (
                    *base,
                    *res,
                    f"{e['loop']}{'.' * e['depth']}",
                    e["role"],
                    str(e["total"]),
                    _fmt(e["scores_per_iter"], 0),
                    _fmt(e["per_score"]),
                    _fmt(e["ex2_per_score"], 2),
                    mma,
                    f"max {max(batches)}" if batches else "-",
                    " ".join(asy) or "-",
                )
            )
    return _table(header, body)


def format_model(rows: list[dict]) -> str:
    header = ("kernel", "be", "arch", "dtype", "D", *(f"L={n} us (bound, x plain)" for n in LENGTHS))
    body = []
    for r in rows:
        if r.get("status") != "ok":
            continue
        cells = [issue_model.prediction_cell(p, 1) for p in r["model"]["predictions"]]
        body.append((r["kernel"], r["backend"], f"sm_{r['arch']}", r["dtype"], str(r["head_dim"]), *cells))
    return _table(header, body)


def dump_json(doc: dict) -> str:
    """The profile document as JSON with one row per line (compact, and diffs stay row by row)."""
    head = {k: v for k, v in doc.items() if k != "rows"}
    rows = ",\n".join(json.dumps(r, separators=(",", ":")) for r in doc["rows"])
    text = json.dumps(head, indent=1)
    return text[:-2] + ',\n "rows": [\n' + rows + "\n ]\n}\n"


def run_profile(
    out: str, archs, dtypes, head_dims, components, quiet: bool = False, listed_stages: bool = False
) -> int:
    """The --profile entry point: write DIR's files, print the tables; 1 if any row failed."""
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)

    def say(text):
        if not quiet:
            print(text, file=sys.stderr, flush=True)

    rows = profile_rows(
        tuple(archs), tuple(dtypes), tuple(head_dims), tuple(components), out_dir, say, listed_stages=listed_stages
    )
    doc = {
        "generated_by": "nezha-kernels compile-check --profile" + (" --listed-stages" if listed_stages else ""),
        "python": platform.python_version(),
        "model": {
            "issue_per_clock": issue_model.ISSUE_PER_CLOCK,
            "ex2_per_clock": issue_model.EX2_PER_CLOCK,
            "fma_per_clock_wgmma": issue_model.FMA_PER_CLOCK_WGMMA,
            "fma_per_clock_mma_sync": issue_model.FMA_PER_CLOCK_MMA_SYNC,
            "shared_bytes_per_clock": issue_model.SHARED_BYTES_PER_CLOCK,
            "sms": issue_model.SMS,
            "clock_hz": issue_model.CLOCK_HZ,
            "lengths": list(LENGTHS),
            "B*H": f"{HEADS[0]}*{HEADS[1]}",
            "R": R,
        },
        "classes": list(sass.CLASSES),
        "rows": rows,
    }
    (out_dir / "profile.json").write_text(dump_json(doc))
    print(format_loops(rows))
    print()
    print(format_model(rows))
    failed = [r for r in rows if r.get("status") != "ok"]
    print(f"\n{len(rows) - len(failed)} rows ok, {len(failed)} failed; written to {out_dir}/profile.json")
    return 1 if failed else 0
