"""TokenCoordinatedPrompts and PromptedAttention against an in-test re-implementation of the official TCPA
(zhoujiahuan1991/ICML2025-TCPA, models/TCPA.py and models/VFPT_TCPA.py), written from its equations: sequence
[CLS, CLS prompts, image prompts, patches], softmax over all keys, then the dense role/token mask, no
renormalisation, prompt query rows dropped."""

import pytest
import torch
import torch.nn.functional as F

from visattn.blocks import PromptedAttention, TokenCoordinatedPrompts


def official_pool(x: torch.Tensor, keys: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Official ``Pool.forward``: x (T, D), keys (M, D) -> (mean(1 - cos) over the top-k, top-k indices (T, k))."""
    sim = F.normalize(x, dim=-1) @ F.normalize(keys, dim=-1).t()
    index = sim.topk(top_k, dim=1).indices
    return (1 - sim.gather(1, index)).mean(), index


def official_mask(pool: TokenCoordinatedPrompts, layer: int, x: torch.Tensor, heads: int):
    """Official ``get_mask_TDVP`` / ``get_mask_RDVP`` for x (B, 1 + P, D): (mask (B, heads, 1 + P, 1 + 2 M Lp + P),
    matching loss or None), any P."""
    b, n, d = x.shape
    m, lp = pool.pool_size, pool.prompt_len
    p_cls, p_len = m * lp, 2 * m * lp
    mask_cls = torch.ones(n + p_len)
    mask_cls[1 + p_cls: 1 + p_len] = 0
    mask_image = torch.ones(n + p_len)
    mask_image[1: 1 + p_cls] = 0
    mask = torch.cat([mask_cls[None], mask_image.repeat(n - 1, 1)]).repeat(b, heads, 1, 1)
    if pool.matching == "role":
        return mask, None
    dist_cls, index_cls = official_pool(x[:, 0], pool.cls_keys[layer], pool.top_k)
    tmp = torch.zeros(b, m).scatter_(1, index_cls, 1).repeat_interleave(lp, dim=1)
    mask[:, :, 0, 1: 1 + p_cls] = tmp[:, None]
    dist_image, index_image = official_pool(x[:, 1:].reshape(-1, d), pool.image_keys[layer], pool.top_k)
    tmp = torch.zeros(b * (n - 1), m).scatter_(1, index_image, 1).reshape(b, n - 1, m).repeat_interleave(lp, dim=2)
    mask[:, :, 1:, 1 + p_cls: 1 + p_len] = tmp[:, None]
    return mask, dist_cls + dist_image


def official_prompts(pool: TokenCoordinatedPrompts, layer: int, batch: int) -> torch.Tensor:
    """Official ``get_prompts`` (no dropout) and the VFPT transform: (B, 2 M Lp, D)."""
    d = pool.cls_prompts.shape[-1]
    prompt = torch.cat([pool.cls_prompts[layer].reshape(-1, d), pool.image_prompts[layer].reshape(-1, d)])
    prompt = prompt.expand(batch, -1, -1)
    return torch.fft.fft(torch.fft.fft(prompt, dim=-1), dim=-2).real if pool.fourier else prompt


def official_attention(attn: PromptedAttention, x: torch.Tensor, prompts: torch.Tensor, mask: torch.Tensor):
    """Official ``forward_attn`` on normed tokens x (B, 1 + P, C) and normed prompts (B, Z, C)."""
    b, n, c = x.shape
    z, h = prompts.shape[1], attn.num_heads
    seq = torch.cat([x[:, :1], prompts, x[:, 1:]], dim=1)
    q, k, v = attn.qkv(seq).reshape(b, n + z, 3, h, c // h).permute(2, 0, 3, 1, 4)
    probs = ((q @ k.transpose(-2, -1)) * attn.scale).softmax(dim=-1)
    probs = torch.cat([probs[:, :, :1], probs[:, :, 1 + z:]], dim=2) * mask
    return attn.proj((probs @ v).transpose(1, 2).reshape(b, n, c))


def _pool(matching="token", fourier=True, pool_size=5, prompt_len=2, top_k=3, dim=16, depth=2):
    return TokenCoordinatedPrompts(dim, depth, pool_size, prompt_len, top_k, matching, fourier).eval()


@pytest.mark.parametrize("matching", ["token", "role"])
@pytest.mark.parametrize("fourier", [True, False])
@pytest.mark.parametrize("prompt_len", [1, 2])
def test_prompted_attention_matches_the_official_masked_attention(matching, fourier, prompt_len):
    dim, heads, layer = 16, 2, 1
    pool = _pool(matching, fourier, prompt_len=prompt_len, dim=dim)
    attn = PromptedAttention(dim, heads).eval()
    x = torch.randn(2, 1 + 7, dim)
    prompts, indices, loss = pool(layer, x)
    assert prompts.shape == (1, 2 * 5 * prompt_len, dim)  # eval: no dropout, one copy for the batch
    assert indices.shape == (2, 1, 8, (3 if matching == "token" else 5) * prompt_len)
    mask, dist = official_mask(pool, layer, x, heads)
    torch.testing.assert_close(prompts.expand(2, -1, -1), official_prompts(pool, layer, 2))
    torch.testing.assert_close(attn(x, prompts, indices), official_attention(attn, x, prompts.expand(2, -1, -1), mask))
    if matching == "token":
        torch.testing.assert_close(loss, dist)
    else:
        assert loss is None


def test_indices_address_each_tokens_own_pool_entries():
    pool = _pool(prompt_len=2)  # M = 5, Lp = 2: CLS prompts at keys N..N+9, image prompts at N+10..N+19
    x = torch.randn(1, 4, 16)
    indices, _ = pool.match(0, x)
    n = x.shape[1]
    cls_sim = F.normalize(x[0, 0], dim=-1) @ F.normalize(pool.cls_keys[0], dim=-1).t()
    entries = cls_sim.topk(3).indices
    assert indices[0, 0, 0].tolist() == [n + 2 * e + i for e in entries.tolist() for i in range(2)]
    patches = indices[0, 0, 1:] - n
    assert patches.min() >= 10 and patches.max() < 20
    img_sim = F.normalize(x[0, 1:], dim=-1) @ F.normalize(pool.image_keys[0], dim=-1).t()
    assert torch.equal((patches[:, ::2] - 10) // 2, img_sim.topk(3, dim=-1).indices)


def test_random_matching_draws_k_distinct_entries_in_training_only():
    pool = _pool(pool_size=8, prompt_len=1, top_k=3).train()
    x = torch.randn(2, 50, 16)
    topk, _ = pool.match(0, x)
    pool.random = True
    drawn, loss = pool.match(0, x)
    assert not torch.equal(drawn, topk)
    assert all(len(set(row)) == 3 for row in drawn.reshape(-1, 3).tolist())
    patches = drawn[:, 0, 1:] - 50 - 8  # image-pool entries
    assert patches.min() >= 0 and patches.max() < 8
    sim = F.normalize(x[:, 1:], dim=-1) @ F.normalize(pool.image_keys[0], dim=-1).t()
    cls_sim = F.normalize(x[:, :1], dim=-1) @ F.normalize(pool.cls_keys[0], dim=-1).t()
    expected = (1 - cls_sim.gather(-1, drawn[:, 0, :1] - 50)).mean() + (1 - sim.gather(-1, patches)).mean()
    torch.testing.assert_close(loss, expected)  # the loss follows the random selection, as the official one
    assert torch.equal(pool.eval().match(0, x)[0], topk)


def test_prompt_dropout_draws_per_sample_in_training():
    pool = TokenCoordinatedPrompts(16, 1, 4, 1, 2, fourier=False, prompt_drop=0.5).train()
    z = pool.prompt_tokens(0, 3)
    assert z.shape == (3, 8, 16) and not torch.equal(z[0], z[1])
    assert torch.equal(pool.eval().prompt_tokens(0, 3)[0], torch.cat([pool.cls_prompts[0, :, 0],
                                                                    pool.image_prompts[0, :, 0]]))


def test_gradients_reach_prompts_through_attention_and_keys_through_the_loss():
    pool = _pool().train()
    attn = PromptedAttention(16, 2)
    x = torch.randn(2, 6, 16)
    prompts, indices, loss = pool(0, x)
    (attn(x, prompts, indices).sum() + loss).backward()
    assert pool.cls_prompts.grad[0].abs().sum() > 0 and pool.image_prompts.grad[0].abs().sum() > 0
    assert pool.cls_keys.grad[0].abs().sum() > 0 and pool.image_keys.grad[0].abs().sum() > 0
    assert pool.cls_prompts.grad[1].abs().sum() == 0  # layer 1 not used


@pytest.mark.parametrize("args, message", [
    (dict(top_k=6), r"top_k=6 must lie between 1 and pool_size=5"),
    (dict(top_k=0), r"top_k=0 must lie between 1"),
    (dict(pool_size=0, top_k=1), r"pool_size, prompt_len and depth >= 1"),
    (dict(prompt_len=0), r"pool_size, prompt_len and depth >= 1"),
    (dict(matching="dense"), r"matching='dense'; use 'token' \(T-TCPA\) or 'role' \(R-TCPA\)"),
])
def test_bad_arguments_are_one_line_errors(args, message):
    with pytest.raises(ValueError, match=message) as err:
        TokenCoordinatedPrompts(16, 2, **dict(dict(pool_size=5, top_k=3), **args))
    assert "\n" not in str(err.value)
