"""The Sparsifiner CPU study's profile split (benchmarks/sparse_cpu.py) on tiny models."""

import timm
import torch

import visattn  # noqa: F401  (registers the models)
from benchmarks import sparse_cpu
from visattn.blocks import ConnectivityPredictor


def test_each_model_time_is_split_by_the_modules_that_spend_it():
    torch.manual_seed(0)
    models = {"sparse": timm.create_model("test_sparsifiner").eval(), "dense": timm.create_model("test_vit").eval()}
    attention_mask = ConnectivityPredictor.attention_mask
    parts = sparse_cpu.breakdowns(models, batch=1, rounds=2)
    # the predictor's and the mask's whole time are theirs; the dense model has neither
    assert parts["sparse"][sparse_cpu.PREDICTOR] > 0 and parts["sparse"][sparse_cpu.MASK] > 0
    assert sparse_cpu.PREDICTOR not in parts["dense"] and sparse_cpu.MASK not in parts["dense"]
    for name in models:
        assert parts[name][sparse_cpu.LINEAR] > 0 and parts[name][sparse_cpu.SDPA] > 0
    # the scopes are gone afterwards: the method restored, no hooks left on the modules
    assert ConnectivityPredictor.attention_mask is attention_mask
    assert not any(m._forward_pre_hooks or m._forward_hooks for model in models.values() for m in model.modules())
    lines = sparse_cpu.breakdown_table("sparse", "dense", 1, parts, 2)
    assert lines[-1].startswith("| all (sum of the medians) |") and any(sparse_cpu.MASK in line for line in lines)


def test_the_floor_selects_from_each_layers_own_approximation():
    torch.manual_seed(0)
    model = timm.create_model("test_sparsifiner").eval()
    x = torch.rand(2, 3, 32, 32)
    approx = sparse_cpu.selection_inputs(model, x)
    predictors = [m for m in model.modules() if isinstance(m, ConnectivityPredictor)]
    assert len(approx) == len(predictors)
    # the recorded approximation is the one the first layer selects from: recomputed from its attention's input
    attn, seen = model.blocks[0].attn, []
    handle = attn.register_forward_pre_hook(lambda module, args: seen.append(args))
    sparse_cpu.selection_inputs(model, x)
    handle.remove()
    (tokens, size, _), = seen
    b, n, c = tokens.shape
    with torch.no_grad():
        q, k, _ = attn.qkv(tokens).view(b, n, 3, attn.num_heads, c // attn.num_heads).permute(2, 0, 3, 1, 4)
        torch.testing.assert_close(approx[0], predictors[0](q, k, size, host=True))
    assert ConnectivityPredictor.attention_mask.__name__ == "attention_mask"
    ms = sparse_cpu.selection_ms(model, batch=1, rounds=2, side=32)
    assert set(ms) == {"np.sort (the model's way)", "np.partition", "torch.topk"} and all(t > 0 for t in ms.values())
    lines = sparse_cpu.floor_table([("test_sparsifiner", 1, 10.0, ms)])
    assert lines[-1].startswith("| `test_sparsifiner` | 1 | 10.0 | 0.5 | ")
