"""Model benchmark: nezha-base (random weights) inference and one training step (AdamW, dropout on),
ours per attention backend versus transformers 4.57's NEZHA when it is installed.

Hugging Face's NEZHA precomputes its relative-position table for max_position_embeddings (512) tokens
and slices it, so it cannot run longer inputs: those cells are marked "n/a", not attempted. Ours has
no such limit (the table is [2R+1, D] and indexed on the fly).
"""

from __future__ import annotations

import dataclasses
import time

import torch

from .memory import RssProbe, cuda_peak_mib, is_oom, measure_in_place_or_child
from .results import OK, Row

__all__ = ["MODEL_SIZES", "ModelGrid", "model_grid", "hf_nezha_status", "measure_model_cell", "run_model_bench"]

MODEL_MODES = ("infer", "train")
# nezha-base is NezhaConfig's default; "tiny" only exists so a dry run finishes in seconds.
MODEL_SIZES = {
    "nezha-base": {},
    # max_position_embeddings=32 so that the dry run also exercises HF's too-long marking at 64 tokens
    "nezha-tiny": dict(
        vocab_size=1000,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=32,
    ),
}


@dataclasses.dataclass(frozen=True)
class ModelGrid:
    size: str
    points: tuple[tuple[int, int], ...]  # (batch, length)
    dtype: str  # "float32", or "bf16-autocast" (weights fp32, matmuls in bf16) on GPU
    backends: tuple[str, ...]  # our attention backends to try (unusable ones become skipped rows)
    modes: tuple[str, ...] = MODEL_MODES


def model_grid(device: str, *, full: bool = False, dry_run: bool = False) -> ModelGrid:
    on_gpu = torch.device(device).type == "cuda"
    if dry_run:
        return ModelGrid("nezha-tiny", ((2, 32), (1, 64)), "float32", ("torch",))
    if on_gpu:
        points = ((8, 128), (8, 512), (4, 1024), (2, 2048), (1, 4096), (1, 8192)) if full else ((8, 512), (2, 2048))
        return ModelGrid("nezha-base", points, "bf16-autocast", ("reference", "torch", "triton", "cuda"))
    if full:
        return ModelGrid("nezha-base", ((1, 128), (4, 512), (1, 1024), (1, 2048)), "float32", ("reference", "torch"))
    # 1 x 1024: past the 512 tokens transformers' NEZHA can run (marked n/a there)
    return ModelGrid("nezha-base", ((1, 128), (1, 1024)), "float32", ("torch",))


def hf_nezha_status() -> tuple[bool, str]:
    """(usable, "hf-<version>" or the reason): transformers' NEZHA exists up to the 4.x series."""
    try:
        import transformers
    except Exception as exc:
        return False, f"transformers not importable ({type(exc).__name__})"
    if not hasattr(transformers, "NezhaForSequenceClassification"):
        return False, f"transformers {transformers.__version__} has no NEZHA (removed in 5.x)"
    return True, f"hf-{transformers.__version__}"


def _build(provider: str, size: str, device: torch.device):
    config_kwargs = dict(MODEL_SIZES[size])
    torch.manual_seed(0)
    if provider == "hf":
        import transformers

        model = transformers.NezhaForSequenceClassification(transformers.NezhaConfig(**config_kwargs))
    else:
        from ..models import NezhaConfig, NezhaForSequenceClassification

        model = NezhaForSequenceClassification(NezhaConfig(attn_backend=provider, **config_kwargs))
    return model.to(device)


def measure_model_cell(spec: dict) -> dict:
    """One (provider, batch, length): peak memory of inference then of a first training step, then times.

    spec: provider ("hf" or a backend name), size, device, dtype, batch, seq_len, modes, cpu_budget_s.
    Returns {"modes": {mode: {"status", "median_ms", "p20_ms", "p80_ms", "reps", "peak_mib"}}}.
    """
    from .timing import time_fn

    device = torch.device(spec["device"])
    modes = list(spec["modes"])
    out: dict = {"modes": {m: {"status": OK} for m in modes}}
    autocast = spec["dtype"] == "bf16-autocast"

    def amp():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast)

    try:
        model = _build(spec["provider"], spec["size"], device)
        vocab = model.config.vocab_size
        gen = torch.Generator().manual_seed(1)
        ids = torch.randint(5, vocab, (spec["batch"], spec["seq_len"]), generator=gen).to(device)
        mask = torch.ones_like(ids)
        labels = torch.randint(0, 2, (spec["batch"],), generator=gen).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
        with torch.no_grad(), amp():  # warm-up on 8 tokens: cheap, so it cannot raise the peak
            model.eval()
            model(input_ids=ids[:, :8], attention_mask=mask[:, :8])
    except Exception as exc:
        status = "OOM" if is_oom(exc) else f"error: {type(exc).__name__}: {str(exc)[:140]}"
        return {"modes": {m: {"status": status} for m in modes}}

    def infer():
        with torch.no_grad(), amp():
            return model(input_ids=ids, attention_mask=mask).logits

    def train_step():
        with amp():
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    steps = {"infer": infer, "train": train_step}
    # Memory in the order infer, train (the RSS high-water mark only grows); the first train step creates AdamW's state,
    # so the train peak includes gradients and optimizer state as well as activations.
    probe = RssProbe() if device.type != "cuda" else None
    peaks = {}
    budget = float(spec.get("cpu_budget_s", 0.5))
    for mode in MODEL_MODES:
        if mode not in modes:
            continue
        model.train(mode == "train")  # dropout on for training only
        try:
            if probe is None:
                peaks[mode] = cuda_peak_mib(steps[mode], device)
            else:
                steps[mode]()
                peaks[mode] = probe.rise_mib()
            # 2 samples at least on CPU: a nezha-base step there takes seconds to a minute; the memory pass
            # above was the warm-up (it also created AdamW's state)
            timing = time_fn(steps[mode], device, cpu_budget_s=budget, cpu_min_reps=2, cpu_warmup=0)
        except Exception as exc:
            out["modes"][mode] = {"status": "OOM" if is_oom(exc) else f"error: {type(exc).__name__}: {str(exc)[:140]}"}
            optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        out["modes"][mode].update(
            median_ms=timing.median_ms,
            p20_ms=timing.p20_ms,
            p80_ms=timing.p80_ms,
            reps=timing.reps,
            peak_mib=peaks[mode],
        )
    return out


def run_model_bench(
    grid: ModelGrid,
    device: str,
    env: dict,
    *,
    progress=None,
    limit_gib: float = 16.0,
    cell_timeout_s: float = 600.0,
    cpu_budget_s: float = 0.5,
    deadline: float | None = None,
) -> list[Row]:
    """Rows for every (point, provider, mode): ours per backend, then transformers' NEZHA.

    Points are the outer loop: past ``deadline`` (time.monotonic()) the largest points are left out.
    """
    from ..backends import available_backends

    on_gpu = torch.device(device).type == "cuda"
    statuses = available_backends(device)
    hf_ok, hf_name = hf_nezha_status()
    providers = [(b, statuses[b].available, statuses[b].reason, b) for b in grid.backends]
    if not on_gpu:  # the Triton interpreter (TRITON_INTERPRET=1) is for correctness, never timed
        providers = [
            (
                b,
                ok and b != "triton",
                why if b != "triton" else "CPU runs only under the Triton interpreter, which is never timed",
                label,
            )
            for b, ok, why, label in providers
        ]
    providers.append(("hf", hf_ok, hf_name, hf_name if hf_ok else "hf"))
    config = MODEL_SIZES[grid.size]
    from ..models import NezhaConfig

    shape_config = NezhaConfig(**config)
    rows: list[Row] = []
    for batch, length in grid.points:
        for provider, usable, reason, label in providers:
            base = dict(
                bench="model",
                op=grid.size,
                provider=label,
                dtype=grid.dtype,
                batch=batch,
                heads=shape_config.num_attention_heads,
                seq_len=length,
                head_dim=shape_config.hidden_size // shape_config.num_attention_heads,
                **env,
            )
            status = None
            left = None if deadline is None else deadline - time.monotonic()
            if not usable:
                status = f"skipped: {reason}"
            elif provider == "hf" and length > shape_config.max_position_embeddings:
                status = (
                    f"n/a: HF NEZHA's relative table covers max_position_embeddings="
                    f"{shape_config.max_position_embeddings} tokens"
                )
            elif left is not None and left <= 0:
                status = "skipped: time budget"
            if status is not None:
                rows += [Row(mode=m, status=status, **base) for m in grid.modes]
                if progress is not None:
                    progress.advance(f"model {label} {batch}x{length}: {status.split(':')[0]}")
                continue
            spec = dict(
                provider=provider,
                size=grid.size,
                device=device,
                dtype=grid.dtype,
                batch=batch,
                seq_len=length,
                modes=list(grid.modes),
                cpu_budget_s=cpu_budget_s,
            )
            timeout = cell_timeout_s if left is None else max(1.0, min(cell_timeout_s, left))
            if progress is not None:
                progress.start(f"model {label} {batch}x{length}")
            measured = measure_in_place_or_child(
                "nezha_kernels.bench.model_bench:measure_model_cell",
                spec,
                grid.modes,
                on_gpu=on_gpu,
                limit_gib=limit_gib,
                timeout_s=timeout,
            )
            for mode in grid.modes:
                cell = dict(measured["modes"][mode])
                if cell["status"] == "OOM" and not on_gpu:
                    cell["status"] = f"OOM (> {limit_gib:g} GiB)"
                rows.append(Row(mode=mode, **base, **cell))
            if progress is not None:
                progress.advance()
    return rows
