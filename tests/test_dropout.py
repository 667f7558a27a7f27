import pytest
import torch

from nezha_kernels.dropout import keep_mask, philox_uniform

MASK32 = 0xFFFFFFFF


def _philox_word0(seed, c0, c1, c2, c3=0):
    """Philox-4x32-10 in plain Python integers (Salmon et al., SC'11)."""
    k0, k1 = seed & MASK32, (seed >> 32) & MASK32
    for _ in range(10):
        p0, p2 = 0xD2511F53 * c0, 0xCD9E8D57 * c2
        c0, c1, c2, c3 = ((p2 >> 32) ^ c1 ^ k0) & MASK32, p2 & MASK32, ((p0 >> 32) ^ c3 ^ k1) & MASK32, p0 & MASK32
        k0, k1 = (k0 + 0x9E3779B9) & MASK32, (k1 + 0xBB67AE85) & MASK32
    return c0


def test_known_answer():
    # Random123's known-answer vector for philox4x32_10: counter 0, key 0 -> 0x6627e8d5 first.
    assert _philox_word0(0, 0, 0, 0) == 0x6627E8D5
    u = philox_uniform(0, torch.tensor(0), torch.tensor(0), torch.tensor(0))
    assert u.item() == (0x6627E8D5 >> 8) / 2**24


def test_matches_python_philox_on_random_counters():
    g = torch.Generator().manual_seed(0)
    seed = 0x1234_5678_9ABC_DEF
    c = torch.randint(0, 2**32, (3, 500), generator=g, dtype=torch.int64)
    u = philox_uniform(seed, c[0], c[1], c[2])
    expected = torch.tensor([(_philox_word0(seed, *map(int, col)) >> 8) / 2**24 for col in c.t()])
    assert torch.equal(u, expected.float())


def test_keep_mask_rows_are_counter_based():
    full = keep_mask(99, 0.4, 2, 3, torch.arange(20), 17, torch.device("cpu"))
    part = keep_mask(99, 0.4, 2, 3, torch.arange(5, 9), 17, torch.device("cpu"))
    assert torch.equal(full[:, :, 5:9], part)
    frac = full.float().mean().item()
    assert 0.5 < frac < 0.7


@pytest.mark.slow
def test_compiled_mask_is_bit_identical_to_eager(monkeypatch):
    import nezha_kernels.dropout as dropout

    monkeypatch.setattr(dropout, "COMPILE_MIN_ELEMENTS", 0)
    compiled = keep_mask(2**40 + 17, 0.3, 2, 3, torch.arange(5, 40), 33, torch.device("cpu"))
    assert not dropout._compiled["failed"], "torch.compile of the mask failed on this machine"
    monkeypatch.setattr(dropout, "COMPILE_MIN_ELEMENTS", 1 << 62)
    eager = keep_mask(2**40 + 17, 0.3, 2, 3, torch.arange(5, 40), 33, torch.device("cpu"))
    assert torch.equal(compiled, eager)


def _eager_mask(seed, p, b, h, rows, lk, bh_offset=0):
    import nezha_kernels.dropout as dropout

    k0 = torch.tensor(seed & MASK32, dtype=torch.int64)
    k1 = torch.tensor((seed >> 32) & MASK32, dtype=torch.int64)
    bh = torch.arange(bh_offset, bh_offset + b * h, dtype=torch.int64).view(b, h, 1, 1)
    r = torch.tensor(list(rows), dtype=torch.int64).view(1, 1, -1, 1)
    cols = torch.arange(lk, dtype=torch.int64).view(1, 1, 1, -1)
    return dropout._keep_from_counters(k0, k1, cols, r, bh, p).expand(b, h, len(rows), lk)


def test_native_cpu_mask_is_bit_identical_to_the_pytorch_philox():
    from nezha_kernels.dropout_cpu import keep_mask_cpu, native_library

    lib, why = native_library()
    assert lib is not None, f"the native CPU dropout loop did not build here: {why}"
    g = torch.Generator().manual_seed(3)
    cases = [
        (2**40 + 17, 0.3, 2, 3, 5, 35, 33, 0),
        (0, 0.1, 1, 12, 0, 1, 1, 0),
        (2**64 - 1, 0.5, 3, 2, 7, 19, 130, 24),
        (12345, 1e-9, 1, 2, 0, 9, 9, 0),
        (99, 0.999, 2, 2, 500, 8, 65, 2**31),
    ]
    cases += [
        (
            int(torch.randint(0, 2**62, (1,), generator=g)),
            float(torch.rand((), generator=g)),
            2,
            3,
            int(torch.randint(0, 1000, (1,), generator=g)),
            13,
            37,
            6,
        )
        for _ in range(4)
    ]
    for seed, p, b, h, row0, n, lk, off in cases:
        native = keep_mask_cpu(seed, p, b, h, row0, n, lk, off)
        assert native.dtype == torch.bool and native.shape == (b, h, n, lk)
        assert torch.equal(native, _eager_mask(seed, p, b, h, range(row0, row0 + n), lk, off)), (seed, p)


def test_keep_mask_range_rows_take_the_native_loop_with_the_same_bits(monkeypatch):
    import nezha_kernels.dropout_cpu as dropout_cpu

    fast = keep_mask(7, 0.2, 2, 3, range(4, 30), 41, torch.device("cpu"), bh_offset=6)
    monkeypatch.setenv(dropout_cpu.ENV, "0")
    dropout_cpu.native_library.cache_clear()
    try:
        slow = keep_mask(7, 0.2, 2, 3, range(4, 30), 41, torch.device("cpu"), bh_offset=6)
        assert dropout_cpu.native_library()[0] is None
    finally:
        dropout_cpu.native_library.cache_clear()
    assert torch.equal(fast, slow)
    assert torch.equal(fast, _eager_mask(7, 0.2, 2, 3, range(4, 30), 41, 6))


def test_native_threshold_matches_the_float32_comparison():
    from nezha_kernels.dropout_cpu import threshold

    for p in (0.0, 1e-9, 0.1, 0.3, 1 / 3, 0.5, 0.9999999, 1.0):
        m = threshold(p)
        # u = m / 2**24 is the first kept value, u = (m - 1) / 2**24 the last dropped one
        assert torch.tensor(m / 2**24, dtype=torch.float32) >= torch.tensor(p, dtype=torch.float32) or m == 1 << 24
        if m > 0:
            assert torch.tensor((m - 1) / 2**24, dtype=torch.float32) < torch.tensor(p, dtype=torch.float32)
