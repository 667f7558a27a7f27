import math

import formula
import pytest
import torch

import nezha_kernels as nk


@pytest.mark.parametrize("r,d", [(1, 2), (7, 16), (64, 64), (200, 128)])
def test_sinusoidal_table_matches_closed_form(r, d):
    table = nk.sinusoidal_table(r, d)
    assert table.shape == (2 * r + 1, d) and table.dtype == torch.float32
    # float32 angles m * w_t up to 400 rad: sin/cos of them carry ~4e-5 rounding.
    torch.testing.assert_close(table.double(), formula.nezha_table(r, d), atol=5e-5, rtol=0)


def test_sinusoidal_table_bit_identical_to_hugging_face():
    nezha = pytest.importorskip("transformers.models.deprecated.nezha.modeling_nezha")
    hf = nezha.NezhaRelativePositionsEncoding(length=150, depth=64, max_relative_position=64)
    idx = nk.relative_index(150, 150, 64)
    ours = nk.sinusoidal_table(64, 64)[idx]
    assert torch.equal(ours, hf.positions_encoding)


def test_sinusoidal_table_dtype_device_and_errors():
    t = nk.sinusoidal_table(3, 8, dtype=torch.bfloat16)
    assert t.dtype == torch.bfloat16 and t.device.type == "cpu"
    with pytest.raises(ValueError, match="max_relative_position"):
        nk.sinusoidal_table(0, 8)
    with pytest.raises(ValueError, match="head_dim"):
        nk.sinusoidal_table(3, 7)
    with pytest.raises(TypeError, match="dtype"):
        nk.sinusoidal_table(3, 8, dtype=torch.int32)


def test_relative_index():
    idx = nk.relative_index(3, 6, 2, q_offset=2)
    expected = [[max(-2, min(2, j - (i + 2))) + 2 for j in range(6)] for i in range(3)]
    assert idx.tolist() == expected
    assert math.isclose(nk.sinusoidal_table(2, 4)[4, 1].item(), math.cos(4.0), rel_tol=1e-6)


def test_sinusoidal_table_hands_out_a_copy_never_the_cache():
    # Defect: the cached tensor itself was returned, so a caller's requires_grad_ / in-place update changed
    # the table of every later call in the process (every model layer uses the default table).
    q = torch.randn(1, 2, 9, 16)
    before = nk.relative_attention(q, q, q, max_relative_position=4, backend="torch")
    t = nk.sinusoidal_table(4, 16)
    t.requires_grad_()
    param = torch.nn.Parameter(nk.sinusoidal_table(4, 16))
    opt = torch.optim.SGD([param], lr=10.0)
    param.sum().backward()
    opt.step()
    with torch.no_grad():
        nk.sinusoidal_table(4, 16).mul_(0)
    assert not nk.sinusoidal_table(4, 16).requires_grad
    torch.testing.assert_close(nk.sinusoidal_table(4, 16).double(), formula.nezha_table(4, 16), atol=5e-5, rtol=0)
    after = nk.relative_attention(q, q, q, max_relative_position=4, backend="torch")
    assert torch.equal(before, after)


def test_default_table_built_once_per_r_d_dtype_device(monkeypatch):
    from nezha_kernels import table as table_module

    table_module._cached_table.cache_clear()
    calls = []
    original = table_module._build_table
    monkeypatch.setattr(table_module, "_build_table", lambda r, d: (calls.append((r, d)), original(r, d))[1])
    for dtype in (torch.float32, torch.float32, torch.bfloat16, torch.float32, torch.bfloat16):
        q = torch.randn(1, 2, 5, 8, dtype=dtype)
        nk.relative_attention(q, q, q, max_relative_position=3, backend="reference")
    assert calls == [(3, 8), (3, 8)]  # one build for float32, one for bfloat16, then cache hits
    # The op's default table is the cached tensor, read-only for the op: a second call reuses its storage.
    from nezha_kernels.inputs import prepare_inputs

    q = torch.randn(1, 2, 5, 8)
    a = prepare_inputs(q, q, q, max_relative_position=3).table
    b = prepare_inputs(q, q, q, max_relative_position=3).table
    assert a.data_ptr() == b.data_ptr() and not a.requires_grad
    assert nk.sinusoidal_table(3, 8).data_ptr() != a.data_ptr()


def test_default_table_cached_in_inference_mode_serves_autograd_later():
    from nezha_kernels import table as table_module
    from nezha_kernels.inputs import prepare_inputs

    table_module._cached_table.cache_clear()
    q = torch.randn(1, 2, 5, 8, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        nk.relative_attention(q, q, q, max_relative_position=2, backend="torch")
    # The cached table holds NEZHA's sinusoid: T[m, 2t] = sin(m w_t), T[m, 2t+1] = cos(m w_t), w_t = 10000^(-2t/8).
    cached = prepare_inputs(q, q, q, max_relative_position=2).table
    for m, t in [(0, 0), (1, 0), (3, 1), (4, 2), (4, 3)]:
        w = 10000.0 ** (-2 * t / 8)
        assert math.isclose(cached[m, 2 * t].item(), math.sin(m * w), rel_tol=1e-6, abs_tol=1e-7), (m, t)
        assert math.isclose(cached[m, 2 * t + 1].item(), math.cos(m * w), rel_tol=1e-6, abs_tol=1e-7), (m, t)
    qg = q.clone().requires_grad_()
    nk.relative_attention(qg, qg, qg, max_relative_position=2, backend="reference").sum().backward()
    # The gradient of the same call in float64 on the formula's own table (q serves as q, k and v).
    q64 = q.double().requires_grad_()
    formula.attention(q64, q64, q64, formula.nezha_table(2, 8), r=2).sum().backward()
    torch.testing.assert_close(qg.grad.double(), q64.grad, atol=1e-5, rtol=1e-5)


def test_sinusoidal_table_against_huawei_float64_construction():
    # Huawei's TensorFlow code builds the table in float64 (numpy) and casts it to float32; ours, as transformers',
    # computes in float32. The two differ by float32 rounding of sin/cos arguments up to 2R = 128: a few 1e-6.
    import numpy as np

    for r, d in [(64, 64), (64, 128)]:
        t = np.zeros([2 * r + 1, d])
        for pos in range(2 * r + 1):
            for i in range(d // 2):
                t[pos, 2 * i] = np.sin(pos / np.power(10000, 2 * i / d))
                t[pos, 2 * i + 1] = np.cos(pos / np.power(10000, 2 * i / d))
        diff = (torch.from_numpy(t.astype(np.float32)) - nk.sinusoidal_table(r, d)).abs().max().item()
        assert 1e-7 < diff < 1e-5, diff
