"""SE, CBAM and the non-local block against their papers' equations written out here."""

import pytest
import torch
import torch.nn.functional as F

from visattn.blocks.plugin_attention import NonLocalBlock, cbam, squeeze_excitation


def _conv1x1(conv, v):
    """A 1x1 conv on (B, C) vectors."""
    w = conv.weight.flatten(1)
    return v @ w.T + (conv.bias if conv.bias is not None else 0)


@pytest.mark.parametrize("channels,hidden", [(128, 8), (64, 4), (24, 2)])
def test_squeeze_excitation_is_the_papers_block(channels, hidden):
    torch.manual_seed(0)
    se = squeeze_excitation(channels)
    assert se.fc1.out_channels == hidden and se.fc1.bias is not None  # C/16, not rounded up to a multiple of 8
    x = torch.randn(2, channels, 5, 3)
    gate = torch.sigmoid(_conv1x1(se.fc2, torch.relu(_conv1x1(se.fc1, x.mean((2, 3))))))
    torch.testing.assert_close(se(x), x * gate[:, :, None, None])


def test_cbam_uses_average_and_max_in_both_parts():
    torch.manual_seed(0)
    block = cbam(64).eval()
    with torch.no_grad():
        block.spatial.conv.bn.running_mean.fill_(0.1)
        block.spatial.conv.bn.running_var.fill_(2.0)
    assert block.channel.fc1.out_channels == 4 and block.spatial.conv.conv.kernel_size == (7, 7)
    x = torch.randn(2, 64, 9, 5)

    def mlp(v):  # one MLP shared by both pooled vectors
        return _conv1x1(block.channel.fc2, torch.relu(_conv1x1(block.channel.fc1, v)))

    xc = x * torch.sigmoid(mlp(x.mean((2, 3))) + mlp(x.amax((2, 3))))[:, :, None, None]
    pooled = torch.cat([xc.mean(1, keepdim=True), xc.amax(1, keepdim=True)], 1)
    bn = block.spatial.conv.bn
    logits = F.batch_norm(F.conv2d(pooled, block.spatial.conv.conv.weight, padding=3), bn.running_mean,
                          bn.running_var, bn.weight, bn.bias, eps=bn.eps)
    torch.testing.assert_close(block(x), xc * torch.sigmoid(logits))


def test_non_local_block_against_its_equation_and_starts_as_identity():
    torch.manual_seed(0)
    block = NonLocalBlock(16).eval()
    x = torch.randn(2, 16, 4, 3)
    torch.testing.assert_close(block(x), x, rtol=0, atol=0)
    assert block.inner == 8 and NonLocalBlock.identity_at_init
    with torch.no_grad():
        block.norm.weight.normal_()
        block.norm.bias.normal_()
    out = block(x)
    for b in range(2):
        flat = x[b].flatten(1).T  # (N, C)
        theta, phi, g = (_conv1x1(m, flat) for m in (block.theta, block.phi, block.g))  # (N, C/2)
        weights = torch.exp(theta @ phi.T)
        y = (weights / weights.sum(1, keepdim=True)) @ g  # sum_j f(x_i, x_j) g(x_j) / C(x)
        z = y @ block.out.weight.flatten(1).T  # (N, C)
        bn = block.norm
        z = (z - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
        torch.testing.assert_close(out[b], x[b] + z.T.reshape(16, 4, 3))
    with pytest.raises(ValueError, match="channels must be an int >= 2, got 1"):
        NonLocalBlock(1)
