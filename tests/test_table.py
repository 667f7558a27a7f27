import math

import pytest
import torch

import nezha_kernels as nk

import formula


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
