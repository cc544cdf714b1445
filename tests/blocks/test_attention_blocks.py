import pytest
import torch
import torch.nn.functional as F

from tests.dense_reference import dense_routed_attention
from visattn.blocks import BiLevelRoutingAttention, LePEAttention


def test_bra_module_matches_its_equation_on_a_padded_input():
    dim, heads, n_win, topk = 16, 2, 3, 2
    block = BiLevelRoutingAttention(dim, heads, n_win, topk).double()
    x = torch.randn(2, 7, 8, dim, dtype=torch.float64)
    xp = F.pad(x, (0, 0, 0, 1, 0, 2))  # to 9 x 9: the projection sees zero tokens, as the official auto_pad
    q, k, v = block.qkv(xp).split([dim, dim, dim], dim=-1)
    attn = dense_routed_attention(q, k, v, heads, n_win, topk, dim**-0.5)
    lce = block.lepe(v.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    expected = block.proj(attn + lce)[:, :7, :8]
    torch.testing.assert_close(block(x), expected)


def test_bra_rejects_topk_larger_than_region_count_at_construction():
    with pytest.raises(ValueError, match=r"topk=10 .* n_win\*\*2=9"):
        BiLevelRoutingAttention(16, 2, n_win=3, topk=10)


def test_bra_rejects_heads_that_do_not_divide_dim():
    with pytest.raises(ValueError, match="divisible by num_heads"):
        BiLevelRoutingAttention(16, 3, n_win=2, topk=1)


@pytest.mark.parametrize("lepe_source", ["input", "value"])
def test_lepe_attention_matches_its_equation(lepe_source):
    dim, heads = 16, 2
    block = LePEAttention(dim, heads, lepe_source=lepe_source).double()
    x = torch.randn(2, 3, 5, dim, dtype=torch.float64)
    q, k, v = block.qkv(x).reshape(2, 15, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
    attn = ((q @ k.transpose(-2, -1)) / (dim // heads) ** 0.5).softmax(-1) @ v
    attn = attn.transpose(1, 2).reshape(2, 3, 5, dim)
    source = x if lepe_source == "input" else v.transpose(1, 2).reshape(2, 3, 5, dim)
    lepe = block.lepe(source.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    torch.testing.assert_close(block(x), block.proj(attn + lepe))
    assert block.qkv.bias is None


def test_lepe_attention_rejects_an_unknown_lepe_source():
    with pytest.raises(ValueError, match="lepe_source='v' is not 'input' or 'value'"):
        LePEAttention(16, 2, lepe_source="v")
