"""Benchmark result rows: one schema for op and model rows, CSV and JSON writing that appends.

Every row carries what makes it comparable across machines: the op, provider, mode, dtype, shape,
device name and the nezha_kernels / torch / triton versions, plus a run id (UTC time of the run).
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import json
import os
import platform
from collections.abc import Iterable
from pathlib import Path

__all__ = [
    "Row",
    "FIELDS",
    "environment",
    "write_csv",
    "write_json",
    "read_csv",
    "read_json",
    "rows_from_records",
    "latest_per_cell",
    "is_ok",
]

OK = "ok"


@dataclasses.dataclass
class Row:
    """One measured (or marked) cell.

    bench: "op" or "model"; op: what ran ("relative_attention", "nezha-base"); provider: backend or peer
    ("torch", "sdpa", "hf-4.57.6"); mode: "fwd" / "bwd" / "fwd+bwd" for ops, "infer" / "train" for models.
    status: "ok", "OOM", "timeout", "skipped: why", "n/a: why" or "error: message" (no numbers then).
    Times in milliseconds (median and the 20th / 80th percentiles), memory in MiB (peak rise over
    the inputs / weights), tflops from the FLOP formula in op_bench.attention_flops (ops only).
    """

    bench: str
    op: str
    provider: str
    mode: str
    dtype: str
    batch: int
    heads: int
    seq_len: int
    head_dim: int
    status: str = OK
    median_ms: float | None = None
    p20_ms: float | None = None
    p80_ms: float | None = None
    reps: int | None = None
    tflops: float | None = None
    peak_mib: float | None = None
    vs_sdpa: float | None = None  # op rows: SDPA flash's median / ours (bench/ratios.py)
    vs_twin: float | None = None  # op rows of the relative kernels: the plain twin's median / ours
    note: str = ""
    device: str = ""
    device_name: str = ""
    nezha_kernels: str = ""
    torch: str = ""
    triton: str = ""
    python: str = ""
    run_id: str = ""

    @property
    def shape(self) -> str:
        if self.bench == "op":
            return f"[{self.batch}, {self.heads}, {self.seq_len}, {self.head_dim}]"
        return f"{self.batch} x {self.seq_len}"

    def as_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["shape"] = self.shape
        return out


FIELDS = [f.name for f in dataclasses.fields(Row)] + ["shape"]


def is_ok(row: Row) -> bool:
    return row.status == OK


def _device_name(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    model = platform.processor() or platform.machine()
    try:  # the marketing name is far more useful than "x86_64"
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model} ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def environment(device: str) -> dict[str, str]:
    """The identifying columns shared by every row of one run on ``device``."""
    import torch

    from .. import __version__

    try:
        import triton

        triton_version = triton.__version__
    except Exception:  # triton is optional
        triton_version = "none"
    return {
        "device": device,
        "device_name": _device_name(device),
        "nezha_kernels": __version__,
        "torch": torch.__version__,
        "triton": triton_version,
        "python": platform.python_version(),
        "run_id": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def _cell(value) -> str:
    if value is None:
        return ""
    return str(value)  # floats: the shortest text that reads back exactly


def read_csv(path: str | os.PathLike) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


_INT_FIELDS = {"batch", "heads", "seq_len", "head_dim", "reps"}
_FLOAT_FIELDS = {"median_ms", "p20_ms", "p80_ms", "tflops", "peak_mib", "vs_sdpa", "vs_twin"}


def rows_from_records(records: Iterable[dict]) -> list[Row]:
    """Rows back from CSV or JSON records (e.g. to re-plot or re-print a committed run)."""
    names = {f.name for f in dataclasses.fields(Row)}
    rows = []
    for record in records:
        kwargs = {}
        for key, value in record.items():
            if key not in names:
                continue  # "shape" is derived; unknown columns come from other versions
            if key in _INT_FIELDS | _FLOAT_FIELDS:
                kwargs[key] = None if value in ("", None) else (int(value) if key in _INT_FIELDS else float(value))
            else:
                kwargs[key] = value
        rows.append(Row(**kwargs))
    return rows


def read_json(path: str | os.PathLike) -> list[Row]:
    """The rows of a results.json (all runs appended to it)."""
    return rows_from_records(json.loads(Path(path).read_text()))


def latest_per_cell(rows: Iterable[Row]) -> list[Row]:
    """Of rows appended over several runs, the newest run's row of each cell (bench, op, provider, mode, dtype,
    shape, device name), in first-seen order: what re-plotting a results file shows."""
    latest: dict[tuple, Row] = {}
    for row in rows:
        key = (row.bench, row.op, row.provider, row.mode, row.dtype, row.batch, row.seq_len, row.head_dim)
        key += (row.note if row.bench == "length-mix" else "", row.device_name)
        if key not in latest or row.run_id >= latest[key].run_id:
            latest[key] = row
    return list(latest.values())


def write_csv(rows: Iterable[Row], path: str | os.PathLike, append: bool = True) -> Path:
    """Write rows to ``path``; with ``append`` keep the rows already there (older runs stay side by side).

    A file written with a different column set is rewritten under the union of both column sets.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = [{k: _cell(v) for k, v in row.as_dict().items()} for row in rows]
    old: list[dict] = read_csv(path) if append and path.exists() else []
    fields = list(FIELDS)
    for record in old:
        fields += [k for k in record if k not in fields]
    mode = "w"
    if old and list(old[0]) == FIELDS:
        mode, old = "a", []  # same schema: a true append
    with open(path, mode, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, restval="")
        if mode == "w":
            writer.writeheader()
        writer.writerows(old + new)
    return path


def write_json(rows: Iterable[Row], path: str | os.PathLike, append: bool = True) -> Path:
    """Write rows as a JSON list of objects; with ``append`` extend the list already in ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    records = json.loads(path.read_text()) if append and path.exists() else []
    records += [row.as_dict() for row in rows]
    path.write_text(json.dumps(records, indent=1) + "\n")
    return path
