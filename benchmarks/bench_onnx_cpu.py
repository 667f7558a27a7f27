"""nezha-base sequence classification on CPU: ONNX Runtime vs our eager PyTorch (padding-free and padded).

NezhaForSequenceClassification with nezha-base's config (12 layers, hidden 768, R = 64), random weights,
float32, eval, no grad. ONNX: torch.onnx.export(dynamo=True) with dynamic batch and length, captured on the
default torch backend (its materialized form under export; see README, "Export for serving"), run by
onnxruntime's CPU provider with as many intra-op threads as torch uses. Eager: the torch backend, padding-free
(the default: a padded batch runs on its real tokens only) and padded (config.padding_free = False, the dense
path the export captures).

Shapes: 1 x 128 and 8 x 128 with no padding (padding-free then has nothing to drop), and 8 x 128 with a
realistic mask (log-normal lengths, median 48, sigma 0.6, in [8, 128], one row full). Timing: one process,
every provider once per round in a shuffled order, after warm-up; medians with min / max over the rounds
(ORT's thread pool does not spin between calls, so it leaves the cores to the next provider). The load
average is printed before and after (the machine may be shared).

    python benchmarks/bench_onnx_cpu.py [--repeats 15] [--out rows.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import nezha_kernels  # noqa: E402
from nezha_kernels.models import NezhaConfig, NezhaForSequenceClassification  # noqa: E402

NAMES = ("input_ids", "attention_mask", "token_type_ids")


def batches(length: int = 128) -> dict[str, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    out = {}
    for label, b, lengths in (
        ("1 x 128", 1, [length]),
        ("8 x 128", 8, [length] * 8),
        ("8 x 128 padded", 8, None),
    ):
        if lengths is None:
            draws = torch.distributions.LogNormal(np.log(48.0), 0.6).sample((b,)).round().long()
            lengths = draws.clamp(8, length).tolist()
            lengths[0] = length  # the batch is padded to its longest row
        ids = torch.randint(1, 21128, (b, length), generator=g)
        mask = torch.zeros(b, length, dtype=torch.long)
        for i, n in enumerate(lengths):
            mask[i, :n] = 1
        ids[mask == 0] = 0
        out[label] = dict(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids))
    return out


def export_onnx(model, example: dict[str, torch.Tensor], path: str) -> float:
    from torch.export import Dim

    dims = {0: Dim("batch", min=1, max=256), 1: Dim("length", min=1, max=512)}
    t0 = time.perf_counter()
    torch.onnx.export(
        model,
        (),
        path,
        kwargs=example,
        dynamic_shapes={k: dims for k in NAMES},
        input_names=list(NAMES),
        dynamo=True,
        verbose=False,
    )
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="timed rounds per shape (default 15)")
    parser.add_argument("--out", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args()

    import onnxruntime as ort

    torch.manual_seed(0)
    model = NezhaForSequenceClassification(NezhaConfig(num_labels=3, attn_backend="torch")).eval()
    shapes = batches()
    threads = torch.get_num_threads()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "nezha-base-cls.onnx")
        export_s = export_onnx(model, shapes["8 x 128 padded"], path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # In one process a spinning ORT pool would keep both cores busy into the next provider's call.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def eager(padding_free: bool):
        def run(inputs):
            model.config.padding_free = padding_free
            with torch.no_grad():
                return model(**inputs).logits.numpy()

        return run

    providers = {
        "onnxruntime": lambda inputs: session.run(None, {k: v.numpy() for k, v in inputs.items()})[0],
        "eager padding-free": eager(True),
        "eager padded": eager(False),
    }
    rows, diffs = [], {}
    for label, inputs in shapes.items():
        outputs = {name: run(inputs) for name, run in providers.items()}  # warm-up and agreement
        for run in providers.values():
            run(inputs)
        diffs[label] = max(float(np.abs(outputs[n] - outputs["eager padded"]).max()) for n in providers)
        times = {name: [] for name in providers}
        order, shuffle = list(providers), random.Random(0).shuffle
        for _ in range(args.repeats):
            shuffle(order)  # a fresh order each round: no provider always runs right after the same other one
            for name in order:
                t0 = time.perf_counter()
                providers[name](inputs)
                times[name].append(time.perf_counter() - t0)
        real = int(inputs["attention_mask"].sum())
        for name, ts in times.items():
            rows.append(
                dict(
                    shape=label,
                    provider=name,
                    real_tokens=real,
                    median_ms=round(1e3 * statistics.median(ts), 1),
                    min_ms=round(1e3 * min(ts), 1),
                    max_ms=round(1e3 * max(ts), 1),
                    max_logit_diff_vs_padded=diffs[label],
                )
            )
    load_after = os.getloadavg()

    print(
        f"nezha-base NezhaForSequenceClassification, float32, {threads} threads, {os.cpu_count()} CPUs "
        f"({platform.processor() or platform.machine()}); torch {torch.__version__}, onnxruntime {ort.__version__}, "
        f"nezha_kernels {nezha_kernels.__version__}; ONNX export {export_s:.0f} s"
    )
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (1 min); {args.repeats} rounds")
    print("| batch x length (real tokens) | provider | median ms | min - max ms |")
    print("|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['shape']} ({row['real_tokens']}) | {row['provider']} | {row['median_ms']} | "
            f"{row['min_ms']} - {row['max_ms']} |"
        )
    print(
        "largest |logit difference| against eager padded, per shape:", {label: f"{d:.1e}" for label, d in diffs.items()}
    )
    if args.out:
        meta = dict(
            threads=threads,
            cpus=os.cpu_count(),
            torch=torch.__version__,
            onnxruntime=ort.__version__,
            load_before=load_before,
            load_after=load_after,
            export_s=round(export_s, 1),
        )
        args.out.write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))


if __name__ == "__main__":
    main()
