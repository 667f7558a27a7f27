"""nezha-base forward on CPU: nezha_kernels.models (torch backend) vs transformers 4.57 NEZHA.

Batch 4 x 512 tokens, float32, random weights, eval mode, no grad. Each model runs in its own fresh
subprocess. Memory method (Linux): resident set size from /proc/self/status. "model" = VmRSS after
building the model minus before (weights plus any buffers, e.g. HF's position tables); "forward peak" =
VmHWM during the timed forwards minus VmRSS just before them, with the high-water mark reset by writing
5 to /proc/self/clear_refs after the warm-up (so construction transients do not hide it). torch's CPU
allocations are not visible to tracemalloc, the RSS sees them. Time: median (and min/max) of N forwards
after one warm-up.

    python benchmarks/bench_model_cpu.py [--batch 4] [--length 512] [--repeats 3]
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import gc, json, statistics, sys, time
sys.path.insert(0, sys.argv[5])
import torch

def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024  # MiB
    raise KeyError(key)

provider, batch, length, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.manual_seed(0)
if provider == "transformers":
    import transformers
    config_cls, model_cls, extra = transformers.NezhaConfig, transformers.NezhaModel, {}
    version = transformers.__version__
else:
    import nezha_kernels
    from nezha_kernels.models import NezhaConfig as config_cls, NezhaModel as model_cls
    extra = {"attn_backend": "torch"}
    version = nezha_kernels.__version__
ids = torch.randint(1, 21128, (batch, length))
mask = torch.ones(batch, length, dtype=torch.long)
mask[1, length // 2:] = 0  # some padding, as in real batches
gc.collect()
before_model = status("VmRSS")
model = model_cls(config_cls(**extra)).eval()  # nezha-base defaults
gc.collect()
model_mib = status("VmRSS") - before_model
with torch.no_grad():
    model(ids, attention_mask=mask)  # warm-up
    gc.collect()
    base = status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model(ids, attention_mask=mask)
        times.append(time.perf_counter() - t0)
    peak = status("VmHWM") - base
print(json.dumps({"provider": provider, "version": version, "model_mib": round(model_mib, 1),
                  "forward_peak_mib": round(peak, 1), "median_s": round(statistics.median(times), 3),
                  "min_s": round(min(times), 3), "max_s": round(max(times), 3)}))
"""


def run(provider: str, batch: int, length: int, repeats: int) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, provider, str(batch), str(length), str(repeats), str(ROOT)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        if "No module named 'transformers'" in proc.stderr:
            return {"provider": provider, "status": "skipped: transformers not installed"}
        return {"provider": provider, "status": f"error: {tail[:160]}"}
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    row["status"] = "ok"
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--csv", default=str(ROOT / "benchmarks" / "results" / "model_cpu.csv"))
    args = parser.parse_args()
    import torch

    machine = f"{platform.machine()} {platform.processor() or ''}".strip()
    rows = []
    for provider in ("nezha_kernels", "transformers"):
        row = run(provider, args.batch, args.length, args.repeats)
        row.update(
            batch=args.batch,
            length=args.length,
            dtype="float32",
            model="nezha-base",
            torch=torch.__version__,
            threads=torch.get_num_threads(),
            machine=machine,
        )
        rows.append(row)
        print(json.dumps(row))
    path = Path(args.csv)
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = sorted({k for r in rows for k in r})
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    ok = {r["provider"]: r for r in rows if r["status"] == "ok"}
    if len(ok) == 2:
        a, b = ok["nezha_kernels"], ok["transformers"]
        print(
            f"model memory: {a['model_mib']} vs {b['model_mib']} MiB; forward peak: {a['forward_peak_mib']} vs "
            f"{b['forward_peak_mib']} MiB; forward median: {a['median_s']} vs {b['median_s']} s "
            f"(nezha_kernels vs transformers)"
        )


if __name__ == "__main__":
    main()
