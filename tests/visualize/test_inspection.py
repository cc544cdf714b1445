"""The model-training contract's ``inspect`` maps against independent computations: what each block really does
in its forward, recomputed by hand from the inputs it ran with."""

import math

import pytest
import timm
import torch
import torch.nn.functional as F

import visattn.blocks.sparse_attention as sparse_module
from visattn.blocks import InjectiveLinearAttention, StripeAttention
from visattn.blocks.dual_gated_attention import DualGatedLinearAttention
from visattn.contract import INSPECTION_KINDS, InspectionMap, collect_inspections, inspect
from visattn.ops.linear_attention import linear_attention

QUERY = (0.3, 0.8)  # fractions of the image's height and width


def _model(name, **kwargs):
    torch.manual_seed(0)
    return timm.create_model(name, **kwargs).eval()


def _cell(grid, query=QUERY):
    return tuple(min(int(f * n), n - 1) for f, n in zip(query, grid, strict=True))


class Calls:
    """The (args, kwargs, output) of every call of the modules of a type, by module name."""

    def __init__(self, model, module_type):
        self.calls, self.handles = {}, []
        for name, module in model.named_modules():
            if isinstance(module, module_type):
                self.handles.append(module.register_forward_hook(
                    lambda m, args, kwargs, out, name=name: self.calls.setdefault(name, []).append((args, kwargs,
                                                                                                    out)),
                    with_kwargs=True))

    def __enter__(self):
        return self.calls

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()


def test_routed_regions_are_the_top_k_of_the_region_affinity_computed_by_hand():
    model = _model("test_biformer")
    x = torch.randn(1, 3, 60, 68)  # stage 1 is 15 x 17: the regions tile a zero-padded 16 x 18 map
    from visattn.blocks import BiLevelRoutingAttention

    with Calls(model, BiLevelRoutingAttention) as calls:
        found = model.inspect(x, QUERY)
    assert [m.kind for m in found.maps.values()] == ["routing"] * 3
    torch.testing.assert_close(found.output, model(x))
    for name, m in found.maps.items():
        attn = model.get_submodule(name)
        (inp,), _, _ = calls[name][0]
        h, w = inp.shape[1:3]
        s = attn.n_win
        padded = F.pad(inp, (0, 0, 0, -w % s, 0, -h % s))
        q, k, _ = F.linear(padded, attn.qkv.weight, attn.qkv.bias).split([attn.qk_dim, attn.qk_dim, attn.dim], -1)
        rh, rw = padded.shape[1] // s, padded.shape[2] // s
        q_r, k_r = (t.reshape(1, s, rh, s, rw, -1).mean(dim=(2, 4)).reshape(1, s * s, -1) for t in (q, k))
        affinity = (q_r * attn.qk_dim ** -0.5) @ k_r.transpose(1, 2)
        cell = _cell((h, w))
        region = cell[0] // rh * s + cell[1] // rw
        assert m.grid == (h, w) and m.query == cell and m.data["query_region"] == region
        assert m.data["region_size"] == (rh, rw)
        expected = affinity[0, region].topk(attn.topk).indices
        assert set(m.data["regions"][0, region].tolist()) == set(expected.tolist())
        for r in range(s * s):  # every query region's routes, not only the query's
            assert set(m.data["regions"][0, r].tolist()) == set(affinity[0, r].topk(attn.topk).indices.tolist())


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_kept_keys_are_the_keys_the_attention_ran_with_and_the_keep_ratio_is_the_models(backend, monkeypatch):
    """Triton: the indices the sparse op ran with; torch (all queries in one SDPA): the keys its mask left open."""
    monkeypatch.setenv("VISATTN_BACKEND", backend)
    model = _model("test_sparsifiner")
    used = []  # per block, the kept keys (1, heads, patch queries, budget), sorted

    if backend == "triton":
        def spy(q, k, v, indices, **kwargs):
            used.append(indices.sort(dim=-1).values)
            return op(q, k, v, indices, **kwargs)

        op = sparse_module.sparse_attention
        monkeypatch.setattr(sparse_module, "sparse_attention", spy)
    else:
        def spy(self, approx, **kwargs):
            mask = make_mask(self, approx, **kwargs)
            open_keys = mask[:, :, 1:] == 0  # the patch queries' rows
            used.append(open_keys.nonzero()[:, -1].view(*open_keys.shape[:3], -1))
            return mask

        make_mask = sparse_module.ConnectivityPredictor.attention_mask
        monkeypatch.setattr(sparse_module.ConnectivityPredictor, "attention_mask", spy)
    x = torch.randn(1, 3, 64, 64)
    found = model.inspect(x, QUERY)
    assert len(used) == len(model.blocks) == len(found.maps)
    n = 1 + 16
    budget = math.ceil(0.25 * n)
    for keys, m in zip(used, found.maps.values(), strict=True):
        row, col = m.query
        assert m.kind == "kept_keys" and m.grid == (4, 4) and (row, col) == _cell((4, 4))
        assert m.data["keys"].shape == (1, 2, budget) and keys.shape[-1] == budget
        assert torch.equal(m.data["keys"], keys[:, :, row * 4 + col])
        assert m.data["keep_ratio"] == pytest.approx((n + (n - 1) * budget) / n**2)
    mean = sum(m.data["keep_ratio"] for m in found.maps.values()) / len(found.maps)
    assert model.forward_train(x).stats["keep_ratio"].item() == pytest.approx(mean)

    model.set_training_phase("reconstruct")  # dense attention while the predictors train: every key, ratio 1
    model.train()
    dense = model.inspect(x, QUERY)
    for m in dense.maps.values():
        assert torch.equal(m.data["keys"][0, 0], torch.arange(n)) and m.data["keep_ratio"] == 1.0
    assert model.forward_train(x).stats["keep_ratio"].item() == 1.0


def _heads(t, heads):
    b, n, c = t.shape
    return t.view(b, n, heads, c // heads).transpose(1, 2)


def test_inline_rows_sum_to_one_and_times_v_give_the_linear_attention_output():
    model = _model("test_inline_deit")
    proj_inputs = {}
    handles = [m.attn.proj.register_forward_pre_hook(lambda mod, args, i=i: proj_inputs.__setitem__(i, args[0]))
               for i, m in enumerate(model.blocks)]
    with Calls(model, InjectiveLinearAttention) as calls:
        found = model.inspect(torch.randn(1, 3, 64, 64), QUERY)
    for handle in handles:
        handle.remove()
    for i, (name, m) in enumerate(found.maps.items()):
        attn = model.blocks[i].attn
        (u, size), _, _ = calls[f"{name}.attn"][0]
        assert m.kind == "query_attention" and m.grid == tuple(size) == (4, 4)
        rows = torch.cat([m.data["prefix_weights"], m.data["weights"].flatten(2)], dim=-1)  # (1, heads, 17)
        torch.testing.assert_close(rows.sum(-1), torch.ones(1, 2))
        q, k, v = (_heads(t, 2) for t in attn.qkv(u).chunk(3, dim=-1))
        out = linear_attention(q, k, v, attn.scale / 17, injective=True)
        index = 1 + m.query[0] * 4 + m.query[1]
        torch.testing.assert_close((rows.unsqueeze(-2) @ v).squeeze(-2), out[:, :, index], atol=1e-6, rtol=1e-5)
        attended = out[:, :, index].reshape(1, -1)
        local = proj_inputs[i][:, index] - attended  # the block's own output before W_o, less the attention's
        share = local.norm() / (attended.norm() + local.norm())
        torch.testing.assert_close(m.data["local_share"][0], share, atol=1e-5, rtol=1e-4)


def test_inline_windows_rows_cover_the_querys_window_only():
    model = _model("test_inline_swin")  # stage 1: InLine in windows of 3 over a 16 x 16 map
    block = model.stages[0].blocks[0]
    inputs = []
    handle = block.register_forward_pre_hook(lambda mod, args: inputs.append(args[0]))
    found = model.inspect(torch.randn(1, 3, 64, 64), QUERY)
    handle.remove()
    m = found.maps["stages.0.blocks.0"]
    cell = m.query
    assert cell == _cell((16, 16)) == (4, 12)
    r0, c0 = 3, 12  # the window of 3 holding row 4 and column 12 (windows tiled from the top-left)
    weights = m.data["weights"]
    inside = torch.zeros(16, 16, dtype=torch.bool)
    inside[r0:r0 + 3, c0:c0 + 3] = True
    assert weights[..., ~inside].abs().max() == 0
    tile = block.norm1(inputs[0])[:, r0:r0 + 3, c0:c0 + 3].reshape(1, 9, -1)
    q, k, v = (_heads(t, 1) for t in block.attn.qkv(tile).chunk(3, dim=-1))
    out = linear_attention(q, k, v, block.attn.scale / 9, injective=True)
    rows = weights[..., inside].reshape(1, 1, 9)
    torch.testing.assert_close(rows.sum(-1), torch.ones(1, 1))
    index = (cell[0] - r0) * 3 + cell[1] - c0
    torch.testing.assert_close((rows.unsqueeze(-2) @ v).squeeze(-2), out[:, :, index], atol=1e-6, rtol=1e-5)


def test_inline_cswin_rows_times_v_give_the_branchs_linear_attention():
    model = _model("test_inline_cswin")
    with Calls(model, StripeAttention) as calls:
        found = model.inspect(torch.randn(1, 3, 64, 64), QUERY)
    assert list(found.maps) == ["stages.0.blocks.0", "stages.1.blocks.0"]  # the InLine stages; stripes show none
    for name, m in found.maps.items():
        branch = model.get_submodule(f"{name}.attns.0")
        (q, k, v, _), _, _ = calls[f"{name}.attns.0"][0]
        h, w = m.grid
        heads = branch.num_heads
        qh, kh, vh = (_heads(t.reshape(1, h * w, -1), heads) for t in (q, k, v))
        out = linear_attention(qh, kh, vh, branch.scale / (h * w), injective=True)
        rows = m.data["weights"].flatten(2)
        torch.testing.assert_close(rows.sum(-1), torch.ones(1, heads))
        index = m.query[0] * w + m.query[1]
        torch.testing.assert_close((rows.unsqueeze(-2) @ vh).squeeze(-2), out[:, :, index], atol=1e-6, rtol=1e-5)
        assert 0 < m.data["local_share"].item() < 1


def test_herseg_rows_times_v_give_the_gated_linear_attention_output():
    model = _model("test_herseg")
    with Calls(model, DualGatedLinearAttention) as calls:
        found = model.inspect(torch.randn(1, 3, 64, 64), QUERY)
    assert len(found.maps) == 3 and found.output.shape == (1, 1, 64, 64)
    for name, m in found.maps.items():
        attn = model.get_submodule(f"{name}.attn")
        (u, h, w, angles), _, _ = calls[f"{name}.attn"][0]
        n, heads = h * w, attn.num_heads
        q, k = (_heads(t, heads) for t in attn.qk(u).chunk(2, dim=-1))
        v = _heads(attn.down_proj(F.silu(attn.up_proj(u))), heads)
        out = linear_attention(q, k, v, 1.0 / n, normalize=True, eps=1e-6, feature_map="elu+1", rope=angles)
        rows = m.data["weights"].flatten(2)
        assert m.data["prefix_weights"].shape == (1, heads, 0)
        index = m.query[0] * w + m.query[1]
        torch.testing.assert_close((rows.unsqueeze(-2) @ v).squeeze(-2), out[:, :, index], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name, combine", [("test_hrnet_psa", "sum"), ("test_resnet_psa", "product")])
def test_psa_gates_lie_in_0_1_and_multiply_the_input_to_the_blocks_output(name, combine):
    from visattn.blocks import PolarizedSelfAttention

    model = _model(name)
    with Calls(model, PolarizedSelfAttention) as calls:
        found = model.inspect(torch.randn(1, 3, 64, 64), QUERY)
    assert found.maps and set(found.maps) == set(calls)
    for layer, m in found.maps.items():
        (x,), _, y = calls[layer][0]
        channel, spatial = m.data["channel"], m.data["spatial"]
        assert m.data["combine"] == combine and m.grid == tuple(x.shape[-2:])
        assert channel.shape == x.shape[:2] and spatial.shape == (1, *x.shape[-2:])
        assert 0 < channel.min() and channel.max() < 1 and 0 < spatial.min() and spatial.max() < 1
        gate = channel[:, :, None, None] + spatial[:, None] if combine == "sum" else \
            channel[:, :, None, None] * spatial[:, None]
        torch.testing.assert_close(x * gate, y, atol=1e-6, rtol=1e-5)


def test_tcpa_usage_is_each_tokens_top_k_prompts_by_cosine_and_sums_to_the_token_count():
    model = _model("test_tcpa")
    inputs = {}
    handles = [b.register_forward_pre_hook(lambda mod, args, i=i: inputs.__setitem__(i, args[0]))
               for i, b in enumerate(model.blocks)]
    found = model.inspect(torch.randn(1, 3, 64, 64), QUERY)
    for handle in handles:
        handle.remove()
    pools = model.prompts
    m_size, top = pools.pool_size, pools.top_k
    for i, m in enumerate(found.maps.values()):
        x = inputs[i]
        expected = torch.zeros(2 * m_size)
        cls_sim = F.normalize(x[0, :1], dim=-1) @ F.normalize(pools.cls_keys[i], dim=-1).t()
        img_sim = F.normalize(x[0, 1:], dim=-1) @ F.normalize(pools.image_keys[i], dim=-1).t()
        for entry in cls_sim.topk(top, dim=-1).indices.flatten():
            expected[entry] += 1 / top
        for entry in img_sim.topk(top, dim=-1).indices.flatten():
            expected[m_size + entry] += 1 / top
        assert m.kind == "prompt_usage" and m.data["pools"] == (("class", m_size), ("image", m_size))
        torch.testing.assert_close(m.data["usage"][0], expected)
        assert m.data["usage"].sum().item() == pytest.approx(m.data["tokens"]) and m.data["tokens"] == 17


def test_the_hooks_leave_nothing_behind_and_models_without_the_hook_give_none():
    model = _model("test_biformer")
    x = torch.randn(1, 3, 64, 64)
    model.inspect(x, QUERY)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert inspect(_model("test_lamamba"), x) is None
    with pytest.raises(ValueError, match="two fractions in"):
        collect_inspections(model, x, (0.5, 1.0))
    with pytest.raises(ValueError, match="needs query_region"):
        InspectionMap("routing", {"regions": None, "n_win": 2, "region_size": (1, 1)})
    with pytest.raises(ValueError, match="unknown inspection kind"):
        InspectionMap("heatmap", {})
    assert set(INSPECTION_KINDS) == {"routing", "kept_keys", "query_attention", "gates", "prompt_usage"}


def test_a_reid_network_shows_the_gates_of_the_psa_it_inserted():
    from visattn.tasks.reid.model import ReIDModel

    torch.manual_seed(0)
    model = ReIDModel("resnet18", 4, attn="psa_s", attn_at=(3,), attn_blocks="last").eval()
    found = model.inspect(torch.rand(1, 3, 64, 32), QUERY)
    assert list(found.maps) == ["backbone.layer3.1.attention"] and found.maps["backbone.layer3.1.attention"].kind \
        == "gates"
    assert found.maps["backbone.layer3.1.attention"].grid == (4, 2) and found.output.shape == (1, 512)
