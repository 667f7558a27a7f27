"""Length-mix workload: batches of real-world sentence lengths, padded to their longest.

Lengths are log-normal with median 48 tokens and sigma 0.6 (exp(ln 48 + 0.6 z), z ~ N(0, 1)), rounded and
clipped to [8, 512], drawn from a fixed seed per batch size (``sample_lengths``); each batch is padded
to its longest sentence, as a tokenizer with ``padding=True`` does. A batch of 16 then holds about a third
real tokens.

Model rows (NezhaForSequenceClassification, nezha-base width: hidden 768, 12 heads, 3072 FFN, with fewer
layers than 12 to fit the bench's time, the same for all three): inference and one AdamW training step with
dropout on, for ours padding-free (``config.padding_free=True``, the default), ours padded
(``padding_free=False``) and transformers 4.57's NEZHA (skipped with the reason when it is missing).
Op rows: ``relative_attention_varlen`` on the real tokens vs ``relative_attention`` on the padded batch
with its key-padding mask (H = 12, D = 64, R = 64), forward and forward+backward.

Timing: every provider of a row group runs in ONE process, interleaved round by round (the order rotates
each round), so a noisy shared machine slows all of them alike; medians with p20-p80; the load average
before and after goes into each row's note. Peak memory: each provider alone in a fresh process (the
resident-set rise on CPU, the allocator's peak on CUDA), as in the other benchmarks.
"""

from __future__ import annotations

import dataclasses
import math
import os
import statistics
import time

import torch

from .results import OK, Row

__all__ = [
    "MEDIAN",
    "SIGMA",
    "MIN_LENGTH",
    "MAX_LENGTH",
    "SEED",
    "LengthMixGrid",
    "length_mix_grid",
    "sample_lengths",
    "run_length_mix_bench",
    "time_models",
    "model_memory",
    "time_ops",
    "op_memory",
]

MEDIAN, SIGMA, MIN_LENGTH, MAX_LENGTH, SEED = 48, 0.6, 8, 512, 2024
MODEL_PROVIDERS = ("padding-free", "padded", "hf")
OP_PROVIDERS = ("varlen", "dense-padded")
HEADS, HEAD_DIM, R = 12, 64, 64


@dataclasses.dataclass(frozen=True)
class LengthMixGrid:
    batches: tuple[int, ...]
    op_batches: tuple[int, ...]
    layers: int
    size: str  # "nezha-base" (hidden 768, 12 heads) or "nezha-tiny" (dry run)
    dtype: str  # "float32" or "bf16-autocast"
    backend: str  # our attention backend ("auto" picks the first that supports the call)
    rounds: int  # interleaved timing rounds (CPU; at least)
    # Op rows on full batches, (batch, length) with every sequence at that length: varlen vs dense with no
    # padding at all, the cost of the varlen bookkeeping alone (the GPU goal: within 5% of dense).
    full_ops: tuple[tuple[int, int], ...] = ()


def length_mix_grid(device: str, *, full: bool = False, dry_run: bool = False) -> LengthMixGrid:
    """Default: batch 16, 2 layers (about a minute on 2 CPU cores); --full: batches 16 and 64, 4 layers."""
    on_gpu = torch.device(device).type == "cuda"
    if dry_run:
        return LengthMixGrid((4,), (4,), 1, "nezha-tiny", "float32", "auto", 2, full_ops=((2, 16),))
    dtype = "bf16-autocast" if on_gpu else "float32"
    if on_gpu:
        return LengthMixGrid((16, 64), (16, 64), 4, "nezha-base", dtype, "auto", 3, full_ops=((16, 512), (4, 2048)))
    if full:
        return LengthMixGrid((16, 64), (16, 64), 4, "nezha-base", dtype, "auto", 3, full_ops=((4, 256),))
    return LengthMixGrid((16,), (16,), 2, "nezha-base", dtype, "auto", 3)


def sample_lengths(batch: int, seed: int = SEED) -> list[int]:
    """``batch`` sentence lengths: log-normal (median 48, sigma 0.6), rounded, clipped to [8, 512]."""
    g = torch.Generator().manual_seed(seed + batch)
    z = torch.randn(batch, generator=g, dtype=torch.float64)
    lengths = torch.exp(math.log(MEDIAN) + SIGMA * z).round().clamp(MIN_LENGTH, MAX_LENGTH)
    return [int(n) for n in lengths]


def _op_lengths(spec: dict) -> list[int]:
    """The op rows' lengths: the length mix of spec["batch"], or a full batch at spec["full_length"]."""
    if spec.get("full_length"):
        return [spec["full_length"]] * spec["batch"]
    return sample_lengths(spec["batch"])


def _workload_note(lengths: list[int]) -> str:
    real, padded = sum(lengths), len(lengths) * max(lengths)
    if len(set(lengths)) == 1:
        return f"full batch: {len(lengths)} x {lengths[0]}, every token real (varlen bookkeeping vs dense)"
    return (
        f"{real} of {padded} tokens real ({100 * real / padded:.0f}%); lengths log-normal median {MEDIAN} "
        f"sigma {SIGMA} in [{MIN_LENGTH}, {MAX_LENGTH}], seed {SEED}"
    )


def _load() -> str:
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "?"


def _quantiles(samples: list[float]) -> dict:
    s = sorted(samples)

    def q(p):
        pos = p * (len(s) - 1)
        lo = int(pos)
        hi = min(lo + 1, len(s) - 1)
        return s[lo] + (s[hi] - s[lo]) * (pos - lo)

    return {"median_ms": statistics.median(s), "p20_ms": q(0.2), "p80_ms": q(0.8), "reps": len(s)}


def _interleaved(fns: dict, device: torch.device, rounds: int, budget_s: float) -> dict:
    """{name: samples in ms}: one warm-up each, then rounds of one timed call per name, rotating the order."""
    cuda = device.type == "cuda"
    names = list(fns)
    samples: dict = {n: [] for n in names}
    for n in names:
        fns[n]()
    if cuda:
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    r = 0
    max_rounds = 50 if cuda else 30
    while r < max_rounds and (r < rounds or time.perf_counter() - start < budget_s):
        order = names[r % len(names) :] + names[: r % len(names)]
        for n in order:
            t0 = time.perf_counter()
            fns[n]()
            if cuda:
                torch.cuda.synchronize(device)
            samples[n].append((time.perf_counter() - t0) * 1e3)
        r += 1
    return samples


# ---- models -------------------------------------------------------------------------------------------


def _config_kwargs(spec: dict) -> dict:
    from .model_bench import MODEL_SIZES

    # max_position_embeddings=512: transformers' table must cover the longest sentence (the tiny size sets 32)
    return dict(MODEL_SIZES[spec["size"]], num_hidden_layers=spec["layers"], max_position_embeddings=512)


def _build_model(provider: str, spec: dict, device: torch.device):
    torch.manual_seed(0)
    kwargs = _config_kwargs(spec)
    if provider == "hf":
        import transformers

        model = transformers.NezhaForSequenceClassification(transformers.NezhaConfig(**kwargs))
    else:
        from ..models import NezhaConfig, NezhaForSequenceClassification

        config = NezhaConfig(attn_backend=spec["backend"], padding_free=provider == "padding-free", **kwargs)
        model = NezhaForSequenceClassification(config)
    return model.to(device)


def _model_batch(spec: dict, vocab: int, device: torch.device):
    lengths = sample_lengths(spec["batch"])
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(5, vocab, (len(lengths), max(lengths)), generator=gen)
    mask = (torch.arange(max(lengths))[None] < torch.tensor(lengths)[:, None]).long()
    ids = ids * mask  # pad id 0 at padded positions
    labels = torch.randint(0, 2, (len(lengths),), generator=gen)
    return ids.to(device), mask.to(device), labels.to(device)


def _model_steps(model, spec: dict, device: torch.device) -> dict:
    ids, mask, labels = _model_batch(spec, model.config.vocab_size, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    autocast = spec["dtype"] == "bf16-autocast"

    def amp():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast)

    def infer():
        model.eval()
        with torch.no_grad(), amp():
            return model(input_ids=ids, attention_mask=mask).logits

    def train():
        model.train()  # dropout on (hidden 0.1, attention 0.1)
        with amp():
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return {"infer": infer, "train": train}


def time_models(spec: dict) -> dict:
    """Child: every usable provider's model in this process, timed interleaved. spec: providers, size, layers,
    batch, backend, dtype, device, rounds, budget_s. Returns {provider: {mode: stats}} plus the load averages."""
    device = torch.device(spec["device"])
    load_before = _load()
    steps = {p: _model_steps(_build_model(p, spec, device), spec, device) for p in spec["providers"]}
    out: dict = {"load": None, "cells": {p: {} for p in steps}}
    for mode in ("infer", "train"):
        samples = _interleaved({p: s[mode] for p, s in steps.items()}, device, spec["rounds"], spec["budget_s"])
        for p, ms in samples.items():
            out["cells"][p][mode] = _quantiles(ms)
    out["load"] = f"load {load_before} -> {_load()}"
    return out


def model_memory(spec: dict) -> dict:
    """Child: peak memory of one provider's inference, then of its first training step (AdamW state created)."""
    from .memory import RssProbe, cuda_peak_mib

    device = torch.device(spec["device"])
    steps = _model_steps(_build_model(spec["provider"], spec, device), spec, device)
    if device.type == "cuda":
        return {mode: cuda_peak_mib(steps[mode], device) for mode in ("infer", "train")}
    probe = RssProbe()
    peaks = {}
    for mode in ("infer", "train"):
        steps[mode]()
        peaks[mode] = probe.rise_mib()
    return peaks


# ---- ops ---------------------------------------------------------------------------------------------


def _op_steps(provider: str, spec: dict, device: torch.device) -> dict:
    from ..attention import relative_attention
    from ..varlen import relative_attention_varlen

    lengths = _op_lengths(spec)
    b, length = len(lengths), max(lengths)
    dtype = torch.bfloat16 if spec["dtype"] == "bf16-autocast" else torch.float32
    gen = torch.Generator().manual_seed(3)
    keep = torch.arange(length)[None] < torch.tensor(lengths)[:, None]
    q, k, v = (torch.randn(b, HEADS, length, HEAD_DIM, generator=gen) for _ in range(3))
    grad = torch.randn(b, HEADS, length, HEAD_DIM, generator=gen)
    if provider == "varlen":
        # The same real tokens, packed: [T, H, D].
        q, k, v, grad = (t.transpose(1, 2)[keep].contiguous() for t in (q, k, v, grad))
        cu = torch.nn.functional.pad(torch.tensor(lengths).cumsum(0), (1, 0)).to(device=device, dtype=torch.int32)
    inputs = [t.to(device=device, dtype=dtype).requires_grad_() for t in (q, k, v)]
    grad = grad.to(device=device, dtype=dtype)
    keep = keep.to(device)

    def forward():
        if provider == "varlen":
            return relative_attention_varlen(
                *inputs,
                cu,
                cu,
                max_seqlen_q=length,
                max_seqlen_k=length,
                max_relative_position=R,
                backend=spec["backend"],
            )
        return relative_attention(*inputs, attention_mask=keep, max_relative_position=R, backend=spec["backend"])

    def fwd():
        with torch.no_grad():
            return forward()

    def fwd_bwd():
        for t in inputs:
            t.grad = None
        forward().backward(grad)

    return {"fwd": fwd, "fwd+bwd": fwd_bwd}


def time_ops(spec: dict) -> dict:
    device = torch.device(spec["device"])
    load_before = _load()
    steps = {p: _op_steps(p, spec, device) for p in OP_PROVIDERS}
    cells: dict = {p: {} for p in steps}
    for mode in ("fwd", "fwd+bwd"):
        samples = _interleaved({p: s[mode] for p, s in steps.items()}, device, spec["rounds"], spec["budget_s"])
        for p, ms in samples.items():
            cells[p][mode] = _quantiles(ms)
    return {"load": f"load {load_before} -> {_load()}", "cells": cells}


def op_memory(spec: dict) -> dict:
    from .memory import RssProbe, cuda_peak_mib

    device = torch.device(spec["device"])
    steps = _op_steps(spec["provider"], spec, device)
    if device.type == "cuda":
        return {mode: cuda_peak_mib(steps[mode], device) for mode in ("fwd", "fwd+bwd")}
    probe = RssProbe()
    peaks = {}
    for mode in ("fwd", "fwd+bwd"):
        steps[mode]()
        peaks[mode] = probe.rise_mib()
    return peaks


# ---- the rows -----------------------------------------------------------------------------------------


def _run(target: str, spec: dict, on_gpu: bool, limit_gib: float, timeout_s: float) -> dict:
    """{"status": "ok", "result": ...} or {"status": why}; CPU work runs in a fresh capped process."""
    from .memory import call_target, is_oom, run_child

    if not on_gpu:
        return run_child(f"nezha_kernels.bench.length_mix:{target}", spec, limit_gib=limit_gib, timeout_s=timeout_s)
    try:
        return {"status": OK, "result": call_target(f"nezha_kernels.bench.length_mix:{target}", spec)}
    except Exception as exc:
        return {"status": "OOM" if is_oom(exc) else f"error: {type(exc).__name__}: {str(exc)[:140]}"}
    finally:
        torch.cuda.empty_cache()


def run_length_mix_bench(
    grid: LengthMixGrid,
    device: str,
    env: dict,
    *,
    progress=None,
    limit_gib: float = 16.0,
    cell_timeout_s: float = 600.0,
    cpu_budget_s: float = 0.5,
    deadline: float | None = None,
) -> list[Row]:
    """Model rows then op rows of the length mix (bench = "length-mix")."""
    from ..models import NezhaConfig
    from .model_bench import MODEL_SIZES, hf_nezha_status

    on_gpu = torch.device(device).type == "cuda"
    hf_ok, hf_name = hf_nezha_status()
    labels = {"padding-free": "ours padding-free", "padded": "ours padded", "hf": hf_name if hf_ok else "hf"}
    shape = NezhaConfig(**MODEL_SIZES[grid.size])
    op_name = f"{grid.size}-{grid.layers}L"
    rows: list[Row] = []

    def base(bench_op, provider, batch, heads, head_dim, full_length=None):
        lengths = _op_lengths(dict(batch=batch, full_length=full_length))
        return dict(
            bench="length-mix",
            op=bench_op,
            provider=provider,
            dtype=grid.dtype,
            batch=batch,
            heads=heads,
            seq_len=max(lengths),
            head_dim=head_dim,
            **env,
        ), _workload_note(lengths)

    def out_of_time() -> bool:
        return deadline is not None and time.monotonic() >= deadline

    for batch in grid.batches:
        providers = [p for p in MODEL_PROVIDERS if p != "hf" or hf_ok]
        spec = dict(
            size=grid.size,
            layers=grid.layers,
            batch=batch,
            backend=grid.backend,
            dtype=grid.dtype,
            device=device,
            rounds=grid.rounds,
            budget_s=cpu_budget_s,
            providers=providers,
        )
        if progress is not None:
            progress.start(f"length-mix models, batch {batch}")
        if out_of_time():
            results = {p: {"status": "skipped: time budget"} for p in providers}
            timed = {"status": "skipped: time budget"}
        else:
            results = {}
            for p in providers:
                results[p] = _run("model_memory", dict(spec, provider=p), on_gpu, limit_gib, cell_timeout_s)
            timed = _run("time_models", spec, on_gpu, limit_gib, cell_timeout_s)
        for p in MODEL_PROVIDERS:
            fields, note = base(op_name, labels[p], batch, shape.num_attention_heads, shape.head_dim)
            for mode in ("infer", "train"):
                if p == "hf" and not hf_ok:
                    rows.append(Row(mode=mode, status=f"skipped: {hf_name}", note=note, **fields))
                elif results[p]["status"] != OK:
                    rows.append(Row(mode=mode, status=results[p]["status"], note=note, **fields))
                elif timed["status"] != OK:
                    rows.append(Row(mode=mode, status=timed["status"], note=note, **fields))
                else:
                    stats = timed["result"]["cells"][p][mode]
                    rows.append(
                        Row(
                            mode=mode,
                            peak_mib=results[p]["result"][mode],
                            note=f"{note}; {timed['result']['load']}",
                            **stats,
                            **fields,
                        )
                    )
        if progress is not None:
            progress.advance()

    for batch, full_length in [(b, None) for b in grid.op_batches] + list(grid.full_ops):
        spec = dict(
            batch=batch,
            backend=grid.backend,
            dtype=grid.dtype,
            device=device,
            rounds=grid.rounds,
            budget_s=cpu_budget_s,
            full_length=full_length,
        )
        if progress is not None:
            progress.start(f"length-mix ops, batch {batch}" + (f" x {full_length} (full)" if full_length else ""))
        if out_of_time():
            memory = {p: {"status": "skipped: time budget"} for p in OP_PROVIDERS}
            timed = {"status": "skipped: time budget"}
        else:
            memory = {
                p: _run("op_memory", dict(spec, provider=p), on_gpu, limit_gib, cell_timeout_s) for p in OP_PROVIDERS
            }
            timed = _run("time_ops", spec, on_gpu, limit_gib, cell_timeout_s)
        for p in OP_PROVIDERS:
            fields, note = base("relative_attention", p, batch, HEADS, HEAD_DIM, full_length)
            for mode in ("fwd", "fwd+bwd"):
                status = memory[p]["status"] if memory[p]["status"] != OK else timed["status"]
                if status != OK:
                    rows.append(Row(mode=mode, status=status, note=note, **fields))
                    continue
                rows.append(
                    Row(
                        mode=mode,
                        peak_mib=memory[p]["result"][mode],
                        note=f"{note}; {timed['result']['load']}",
                        **timed["result"]["cells"][p][mode],
                        **fields,
                    )
                )
        if progress is not None:
            progress.advance()
    return rows


def steps_of(grid: LengthMixGrid) -> int:
    """Progress steps of one run: one per model batch and per op batch."""
    return len(grid.batches) + len(grid.op_batches) + len(grid.full_ops)
