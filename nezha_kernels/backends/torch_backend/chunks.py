"""The chunked math of the "torch" backend, shared by its dense and padding-free paths.

Key side: q_i . a_ij = (Q T^T)[i, idx(i, j)], read from an [Lq, 2R+1] matrix.
Value side: sum_j p_ij a_ij = sum_m Bk[i, m] T[m], Bk = the probabilities bucketed by table row.
Both maps go through a skewed [chunk, chunk + Lk - 1] matrix whose diagonals are the distances
(``Band``): one strided view and contiguous copies, instead of gather / scatter_add over an int64 index
(which cost more than the matmuls on a CPU).

Queries are processed in chunks (``Chunk``), in the forward (``forward_chunks``) AND in a hand-written backward
(``backward_chunks``) that recomputes each chunk's probabilities unless the forward kept them (small calls,
``saves_probabilities``), so the peak extra memory is a few tensors of at most CHUNK_ELEMENTS float32.
Gradients: q, k, v, the table and head_mask.
"""

from __future__ import annotations

import torch

from ...dropout import keep_mask
from ...inputs import MASKED_SCORE, AttentionInputs

__all__ = [
    "CHUNK_ELEMENTS",
    "CPU_CHUNK_ELEMENTS",
    "SAVE_ELEMENTS",
    "Band",
    "Chunk",
    "RelativeRows",
    "Scratch",
    "backward_chunks",
    "chunk_backward",
    "chunk_length",
    "chunk_output",
    "compute_dtype",
    "forward_chunks",
    "saves_probabilities",
]

# Elements of the largest [B, H, chunk, chunk + Lk - 1] float32 intermediate (64 MiB); the chunk follows.
CHUNK_ELEMENTS = 1 << 24


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# On a CPU, smaller chunks: allocations above a few MiB come fresh from the OS and pay their page faults
# every time (measured in benchmarks/NOTES.md ("Measurements behind code constants")).
CPU_CHUNK_ELEMENTS = 1 << 20


def chunk_length(batch: int, heads: int, key_length: int, query_length: int, device: torch.device | None = None) -> int:
    """Most query rows n with B * H * n * (n + Lk - 1) <= the chunk budget (at least 1)."""
    elements = CHUNK_ELEMENTS
    if device is not None and device.type == "cpu":
        elements = min(elements, CPU_CHUNK_ELEMENTS)
    budget = elements // max(1, batch * heads)
    lo, hi = 1, max(1, query_length)
    while lo < hi:  # largest n in [1, Lq] within the budget
        mid = (lo + hi + 1) // 2
        if mid * (mid + key_length - 1) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


class Scratch:
    """One reusable buffer for the [.., n, W] skew matrices of a call.

    On a CPU a fresh multi-MiB tensor costs its page faults (as much as a mid-sized matmul: benchmarks/NOTES.md,
    "Measurements behind code constants"); reusing one buffer pays them once per call. Off under torch.compile, where
    the compiler plans memory itself.
    """

    def __init__(self):
        self.buffer = None

    @staticmethod
    def usable(like: torch.Tensor) -> bool:
        """False under torch.compile and where autograd records the ops (a reused buffer would change under it)."""
        return not (torch.compiler.is_compiling() or (torch.is_grad_enabled() and like.requires_grad))

    def take(self, shape, like: torch.Tensor) -> torch.Tensor:
        numel = 1
        for size in shape:
            numel *= size
        if self.buffer is None or self.buffer.numel() < numel or self.buffer.dtype != like.dtype:
            self.buffer = like.new_empty(numel)
        return self.buffer[:numel].view(shape)


class Band:
    """The distance map of rows [p0, p0 + n) against keys [0, Lk): idx(r, j) = clamp(j - p0 - r, -R, R) + R.

    In the skewed matrix E[r, c] (c = j - r + n - 1, width W = n + Lk - 1) the index depends on c alone,
    idx = clamp(c + raw0, 0, 2R); and E's element (r, j - r + n - 1) is an as_strided view of shape [n, Lk]
    with row stride W - 1. So a gather is "widen each row of X [.., n, 2R+1] to W columns, view", and
    a bucket sum is "write into the view of a zero E, add up each column range".
    """

    def __init__(self, n: int, key_length: int, p0: int, r: int, scratch: Scratch):
        self.n, self.lk, self.r = n, key_length, r
        self.width = n + key_length - 1
        self.raw0 = r - (n - 1) - p0
        self.lo = min(max(-self.raw0, 0), self.width)  # columns before lo read table row 0
        self.hi = min(max(2 * r + 1 - self.raw0, 0), self.width)  # columns from hi read row 2R
        self.scratch = scratch

    def _diagonal_view(self, e: torch.Tensor) -> torch.Tensor:
        """e: a contiguous [.., n, W] tensor at storage offset 0 (so torch.compile can trace this)."""
        lead = tuple(e.shape[:-2])
        strides, step = [], self.n * self.width
        for size in reversed(lead):
            strides.append(step)
            step = step * size  # not in place: under torch.jit.trace sizes are traced tensors
        return e.as_strided((*lead, self.n, self.lk), (*reversed(strides), self.width - 1, 1), self.n - 1)

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """[.., n, Lk] view with [.., r, j] = x[.., r, idx(r, j)], for x [.., n, 2R+1]; read it before the next
        use of the scratch buffer."""
        lead = x.shape[:-1]
        pieces = (
            x[..., :1].expand(*lead, self.lo),
            x[..., self.raw0 + self.lo : self.raw0 + self.hi],
            x[..., -1:].expand(*lead, self.width - self.hi),
        )
        if Scratch.usable(x):
            e = torch.cat(pieces, dim=-1, out=self.scratch.take((*lead, self.width), x))
        else:
            e = torch.cat(pieces, dim=-1)
        return self._diagonal_view(e)

    def bucket(self, y: torch.Tensor) -> torch.Tensor:
        """[.., n, 2R+1]: y [.., n, Lk] summed by table row, out[.., r, m] = sum_{j: idx(r, j) = m} y[.., r, j]."""
        if Scratch.usable(y):
            e = self.scratch.take((*y.shape[:-1], self.width), y).zero_()
        else:
            e = y.new_zeros(*y.shape[:-1], self.width)
        self._diagonal_view(e).copy_(y)
        out = y.new_zeros(*y.shape[:-1], 2 * self.r + 1)
        out[..., self.raw0 + self.lo : self.raw0 + self.hi] = e[..., self.lo : self.hi]
        if self.lo:
            out[..., 0] += e[..., : self.lo].sum(-1)
        if self.hi < self.width:
            out[..., -1] += e[..., self.hi :].sum(-1)
        return out


class Chunk:
    """Per-chunk quantities of rows [start, stop) of the score matrix: computed, or rebuilt from saved ones.

    probs: the softmax; keep: the dropout keep mask (bool) or None; weights() = probs * keep / (1 - p) *
    head_mask, the coefficients of v_j + a_ij. bh_offset: dropout counter of batch 0, head 0 (b * H when the
    call is sequence b of a padding-free batch).
    """

    def __init__(self, inputs: AttentionInputs, q, start: int, stop: int, scratch: Scratch):
        self.inputs = inputs
        self.q = q[:, :, start:stop]
        self.band = Band(stop - start, inputs.shape[3], start + inputs.q_offset, inputs.max_relative_position, scratch)
        self.head_mask = None
        if inputs.head_mask is not None:
            b, h = inputs.shape[:2]
            self.head_mask = inputs.head_mask.to(q.dtype).view(b, h, 1, 1)

    @classmethod
    def compute(
        cls,
        inputs: AttentionInputs,
        q,
        k,
        table,
        start: int,
        stop: int,
        scratch: Scratch,
        bh_offset: int = 0,
        qt: torch.Tensor | None = None,
    ) -> Chunk:
        """``qt``: the chunk's rows of Q T^T when the caller computed them for many rows at once (varlen)."""
        self = cls(inputs, q, start, stop, scratch)
        b, h, _, lk, _ = inputs.shape
        device = q.device
        rows = torch.arange(start, stop, device=device)
        base = torch.matmul(self.q, k.transpose(-1, -2))
        base += self.band.gather(qt if qt is not None else torch.matmul(self.q, table.t()))
        base *= inputs.scale
        # torch.jit.trace's checker re-traces under no_grad: a trace takes one branch in both grad modes.
        tracking = (torch.is_grad_enabled() and base.requires_grad) or torch.jit.is_tracing()
        scores = base.detach().clone() if tracking else base
        if inputs.additive_mask is not None:
            scores += inputs.additive_mask[:, :, start:stop].to(scores.dtype)
        masked = None
        if inputs.key_padding is not None:
            masked = (~inputs.key_padding).view(b, 1, 1, lk)
        if inputs.causal:
            cols = torch.arange(lk, device=device)
            future = (cols[None, :] > (rows[:, None] + inputs.q_offset)).view(1, 1, stop - start, lk)
            masked = future if masked is None else masked | future
        if masked is not None:
            scores.masked_fill_(masked, MASKED_SCORE)
        scores.clamp_(min=MASKED_SCORE)
        if tracking:
            # Under autograd (forward_with_probs) the gradient reaches every score unchanged, masked
            # ones included, exactly as in the hand-written backward and the original additive mask.
            scores = scores + (base - base.detach())
        self.probs = torch.softmax(scores, dim=-1)
        self.keep = None
        if inputs.dropout_p > 0.0:
            self.keep = keep_mask(
                inputs.dropout_seed, inputs.dropout_p, b, h, range(start, stop), lk, device, bh_offset
            )
        return self

    @classmethod
    def saved(cls, inputs: AttentionInputs, q, start: int, stop: int, probs, keep, scratch: Scratch) -> Chunk:
        """The chunk from the forward's probabilities (and keep mask): nothing recomputed."""
        self = cls(inputs, q, start, stop, scratch)
        self.probs, self.keep = probs, keep
        return self

    def dropped(self, in_place: bool = False) -> torch.Tensor:
        if self.keep is None:
            return self.probs
        out = self.probs if in_place else self.probs.clone()
        return out.mul_(self.keep).mul_(1.0 / (1.0 - self.inputs.dropout_p))

    def weights(self, in_place: bool = False) -> torch.Tensor:
        """probs * keep / (1 - p) * head_mask; in_place overwrites probs (when they are not needed again)."""
        dropped = self.dropped(in_place)
        if self.head_mask is None:
            return dropped
        return dropped.mul_(self.head_mask) if (in_place or dropped is not self.probs) else dropped * self.head_mask

    def bucket(self, x: torch.Tensor) -> torch.Tensor:
        """Sum x[..., i, j] into [..., i, idx(i, j)]: shape [B, H, chunk, 2R+1]."""
        return self.band.bucket(x)


def chunk_output(c: Chunk, v, table, in_place: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(output rows of the chunk, its weights)."""
    w = c.weights(in_place)
    return torch.matmul(w, v) + torch.matmul(c.bucket(w), table), w


def forward_chunks(
    inputs: AttentionInputs, q, k, v, table, bh_offset: int = 0, save: list | None = None
) -> torch.Tensor:
    """The output [B, H, Lq, D]; with ``save`` (a list), appends each chunk's (probs, keep or None) to it."""
    b, h, lq, lk, d = inputs.shape
    out = torch.empty(b, h, lq, d, dtype=q.dtype, device=q.device)
    scratch = Scratch()
    step = chunk_length(b, h, lk, lq, q.device)
    for start in range(0, lq, step):
        stop = min(lq, start + step)
        chunk = Chunk.compute(inputs, q, k, table, start, stop, scratch, bh_offset)
        out[:, :, start:stop] = chunk_output(chunk, v, table, in_place=save is None)[0]
        if save is not None:
            save.append((chunk.probs, chunk.keep))
    return out


class RelativeRows:
    """The table side of a chunk's backward when the caller batches it over many rows (varlen): ``go_t`` the
    chunk's rows of dO T^T (given); ``w_bucket`` / ``ds_bucket`` receive bucket(weights) (when dt is wanted) and
    bucket(dS), which the caller multiplies by the table (dq) and reduces into dt once for all rows."""

    def __init__(self, go_t: torch.Tensor, w_bucket: torch.Tensor | None, ds_bucket: torch.Tensor):
        self.go_t, self.w_bucket, self.ds_bucket = go_t, w_bucket, ds_bucket


def chunk_backward(inputs, c: Chunk, k, v, table, go_c, dq_c, dk, dv, dt, dhm, rel: RelativeRows | None = None) -> None:
    dropped = c.dropped()  # probs * keep / (1 - p): a copy when there is a mask (dS needs the probs too)
    w = dropped if c.head_mask is None else dropped * c.head_mask
    # dW_ij = dO_i . (v_j + a_ij): the gradient of each weight.
    dw = torch.matmul(go_c, v.transpose(-1, -2))
    dw += c.band.gather(rel.go_t if rel is not None else torch.matmul(go_c, table.t()))
    dv += torch.matmul(w.transpose(-1, -2), go_c)
    if dt is not None:
        if rel is not None:
            rel.w_bucket.copy_(c.bucket(w))
        else:
            dt += torch.einsum("bhim,bhid->md", c.bucket(w), go_c)
    # dS = p (dP - D) with dP = dW keep / (1 - p) hm and D_i = sum_j w_ij dW_ij (= dO_i . O_i, computed in full
    # precision from the pieces): t = dW * w, so dS = t - p D. In place on dW: no new [chunk, Lk] tensors.
    t = dw.mul_(dropped)
    if dhm is not None:
        dhm += t.sum(dim=(2, 3))
    if c.head_mask is not None:
        t.mul_(c.head_mask)
    delta = t.sum(dim=-1, keepdim=True)
    ds = t.addcmul_(c.probs, delta, value=-1.0)
    ds_bucket = c.bucket(ds)
    dk += torch.matmul(ds.transpose(-1, -2), c.q) * inputs.scale
    if rel is not None:
        dq_c.copy_(torch.matmul(ds, k).mul_(inputs.scale))
        rel.ds_bucket.copy_(ds_bucket)
        return
    dq_c.copy_((torch.matmul(ds, k) + torch.matmul(ds_bucket, table)) * inputs.scale)
    if dt is not None:
        dt += torch.einsum("bhim,bhid->md", ds_bucket, c.q) * inputs.scale


def backward_chunks(
    inputs: AttentionInputs, q, k, v, table, go, dq, dk, dv, dt, dhm, bh_offset: int = 0, saved: list | None = None
) -> None:
    """Accumulates the gradients into dq (written), dk, dv, dt and dhm (added to; dt / dhm may be None).

    All in the compute dtype; dq, dk, dv are [B, H, L, D] (views are fine), dhm [B, H]. ``saved``: the
    forward's per-chunk (probs, keep or None), when it kept them (see SAVE_ELEMENTS); else recomputed.
    """
    b, h, lq, lk, d = inputs.shape
    scratch = Scratch()
    step = chunk_length(b, h, lk, lq, q.device)
    for index, start in enumerate(range(0, lq, step)):
        stop = min(lq, start + step)
        if saved is not None:
            c = Chunk.saved(inputs, q, start, stop, *saved[index], scratch)
        else:
            c = Chunk.compute(inputs, q, k, table, start, stop, scratch, bh_offset)
        chunk_backward(inputs, c, k, v, table, go[:, :, start:stop], dq[:, :, start:stop], dk, dv, dt, dhm)


# Up to this many score elements (B * H * Lq * Lk; 16 MiB of float32) the forward keeps its chunks'
# probabilities (and dropout masks) for the backward instead of recomputing them: at short lengths the
# recomputation is a third of the work, and that memory is less than what the reference keeps.
SAVE_ELEMENTS = 1 << 22


def saves_probabilities(batch_heads: int, lq: int, lk: int) -> bool:
    return batch_heads * lq * lk <= SAVE_ELEMENTS
