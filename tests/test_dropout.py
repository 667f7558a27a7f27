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


def test_compiled_mask_is_bit_identical_to_eager(monkeypatch):
    import nezha_kernels.dropout as dropout

    monkeypatch.setattr(dropout, "COMPILE_MIN_ELEMENTS", 0)
    compiled = keep_mask(2**40 + 17, 0.3, 2, 3, torch.arange(5, 40), 33, torch.device("cpu"))
    assert not dropout._compiled["failed"], "torch.compile of the mask failed on this machine"
    monkeypatch.setattr(dropout, "COMPILE_MIN_ELEMENTS", 1 << 62)
    eager = keep_mask(2**40 + 17, 0.3, 2, 3, torch.arange(5, 40), 33, torch.device("cpu"))
    assert torch.equal(compiled, eager)
