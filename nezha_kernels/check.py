"""`nezha-kernels check`: parity of every usable backend against the reference on this device."""

from __future__ import annotations

import dataclasses

import torch

from .attention import relative_attention
from .backends import available_backends

# (name, B, H, Lq, Lk, D, R, options): small but covering masks, causal, offsets and ragged lengths.
CASES = [
    ("plain", 2, 3, 77, 77, 64, 64, {}),
    ("padding+fully-masked", 3, 2, 45, 45, 32, 7, {"padding": True}),
    ("causal+q_offset", 2, 2, 19, 83, 64, 16, {"causal": True, "q_offset": 64}),
    ("dropout+head_mask", 2, 4, 33, 51, 16, 5, {"dropout_p": 0.2, "head_mask": True}),
    ("long-range R>L", 1, 2, 31, 29, 128, 200, {}),
    # Past the torch backend's materialized size (Lq * Lk * D > 2^21 elements: L > 181 at D = 64) it runs the
    # banded form, different math from the reference's [Lq, Lk, D] table: the cases above match it bit for bit on
    # a CPU (0.00e+00), these compare two computations.
    ("banded: padding", 2, 2, 200, 200, 64, 16, {"padding": True}),
    ("banded: causal+q_offset", 1, 2, 150, 330, 64, 32, {"causal": True, "q_offset": 180}),
]
# Max abs error allowed against the float32 reference, by input dtype.
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 5e-2, torch.float16: 1e-2}


@dataclasses.dataclass
class CheckRow:
    backend: str
    dtype: str
    case: str
    fwd_err: float
    grad_err: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.fwd_err <= self.tolerance and self.grad_err <= 2 * self.tolerance


def _run(backend, dtype, device, b, h, lq, lk, d, r, opts, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    q, k, v = (
        torch.randn(b, h, n, d, generator=g).to(device=device, dtype=dtype).requires_grad_() for n in (lq, lk, lk)
    )
    kwargs = dict(max_relative_position=r, causal=opts.get("causal", False), q_offset=opts.get("q_offset", 0))
    if opts.get("padding"):
        mask = torch.ones(b, lk, dtype=torch.bool)
        mask[1, lk // 2 :] = False
        mask[-1, :] = False
        kwargs["attention_mask"] = mask.to(device)
    if opts.get("head_mask"):
        kwargs["head_mask"] = (torch.rand(h, generator=g) + 0.5).to(device=device, dtype=dtype)
    if opts.get("dropout_p"):
        kwargs["dropout_p"] = opts["dropout_p"]
        kwargs["generator"] = torch.Generator().manual_seed(seed + 1)
    out = relative_attention(q, k, v, backend=backend, **kwargs)
    grad = torch.randn(out.shape, generator=g).to(device=device, dtype=dtype)
    grads = torch.autograd.grad(out, (q, k, v), grad)
    return out.float(), [x.float() for x in grads]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The device to check: ``device``, or CUDA when present, else the CPU. ValueError (no traceback
    material) for a name torch does not know, a device other than cpu/cuda, or CUDA without a GPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"--device: expected cpu or cuda[:N], got {device!r}") from None
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"--device: expected cpu or cuda[:N], got {device!r}")
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise ValueError(f"--device cuda: no CUDA device is available (torch {torch.__version__} is {build})")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here")
    return resolved


def run_checks(device: str | torch.device | None = None, dtypes=None) -> list[CheckRow]:
    device = resolve_device(device)
    if dtypes is None:
        dtypes = [torch.float32] if device.type == "cpu" else [torch.float32, torch.float16, torch.bfloat16]
    rows = []
    status = available_backends(device)
    for name, st in status.items():
        if not st.available or name == "reference":
            continue
        for dtype in dtypes:
            for case, b, h, lq, lk, d, r, opts in CASES:
                ref_out, ref_grads = _run("reference", torch.float32, device, b, h, lq, lk, d, r, opts)
                try:
                    out, grads = _run(name, dtype, device, b, h, lq, lk, d, r, opts)
                except ValueError as exc:  # a backend that refuses a feature says so
                    print(f"  {name} {dtype} {case}: refused ({exc})")
                    continue
                fwd = (out - ref_out).abs().max().item()
                grad = max((g - rg).abs().max().item() for g, rg in zip(grads, ref_grads, strict=True))
                rows.append(CheckRow(name, str(dtype).replace("torch.", ""), case, fwd, grad, TOLERANCE[dtype]))
    return rows


def format_rows(rows: list[CheckRow]) -> str:
    header = f"{'backend':<10}{'dtype':<10}{'case':<26}{'max|fwd err|':>14}{'max|grad err|':>15}{'tol':>9}  result"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r.backend:<10}{r.dtype:<10}{r.case:<26}{r.fwd_err:>14.2e}{r.grad_err:>15.2e}"
            f"{r.tolerance:>9.0e}  {'ok' if r.ok else 'FAIL'}"
        )
    return "\n".join(lines)
