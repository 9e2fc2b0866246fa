"""FlatLayout: per-(device, dtype) flat buffers give the same numbers and a fixed-size graph."""

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

import functional_optim as fo
from _registry import OPTIMIZERS

ELEMENTWISE = [e for e in OPTIMIZERS if e.name != "adafactor"]


def _tree(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "w": torch.randn(5, 3, generator=g),
        "b": torch.randn(3, generator=g),
        "s": torch.randn((), generator=g),
        "t": torch.randn(4, 6, generator=g).t(),  # non-contiguous
        "d": torch.randn(7, generator=g, dtype=torch.float64),  # its own group
    }


def test_pack_unpack_round_trip_views():
    tree = _tree()
    layout = fo.FlatLayout(tree)
    flat = layout.pack(tree)
    assert [f.dtype for f in flat] == [torch.float64, torch.float32] or len(flat) == 2
    views = layout.unpack(flat)
    for k in tree:
        assert torch.equal(views[k], tree[k]) and views[k].shape == tree[k].shape
    flat[0].add_(1.0)  # views alias the buffers
    assert any(not torch.equal(views[k], tree[k]) for k in tree)


@pytest.mark.parametrize("entry", ELEMENTWISE, ids=[e.name for e in ELEMENTWISE])
def test_optimizer_on_flat_buffers_is_bitwise_equal_to_per_leaf(entry):
    opt = entry.factory(**entry.kwargs)
    params = _tree()
    layout = fo.FlatLayout(params)
    flat = layout.pack(params)
    state, flat_state = opt.init(params), opt.init(flat)
    for step in range(4):
        grads = {k: v * 0.5 + step for k, v in _tree(step + 1).items()}
        updates, state = opt.update(grads, state, params)
        params = fo.apply_updates(params, updates)
        flat_updates, flat_state = opt.update(layout.pack(grads), flat_state, flat)
        flat = fo.apply_updates(flat, flat_updates)
        unpacked = layout.unpack(flat)
        for k in params:
            assert torch.equal(unpacked[k], params[k]), (k, step)


def test_gradient_arrives_flat_through_the_views():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1))
    params = {k: v.detach() for k, v in model.named_parameters()}
    layout = fo.FlatLayout(params)
    x = torch.randn(5, 3)

    def loss(flat):
        return torch.func.functional_call(model, layout.unpack(flat), (x,)).pow(2).sum()

    flat_grads = torch.func.grad(loss)(layout.pack(params))
    per_leaf = torch.func.grad(lambda p: torch.func.functional_call(model, p, (x,)).pow(2).sum())(params)
    for k, g in layout.unpack(flat_grads).items():
        torch.testing.assert_close(g, per_leaf[k], rtol=0, atol=0)


def test_compiled_update_graph_does_not_grow_with_the_number_of_tensors():
    def graph_ops(n):
        torch._dynamo.reset()  # compile each size from scratch (no dynamic-shape recompile)
        params = [torch.randn(3) for _ in range(n)]
        layout = fo.FlatLayout(params)
        opt = fo.adam()
        flat = layout.pack(params)
        state = opt.init(flat)
        counter = CompileCounterWithBackend("eager")
        step = torch.compile(lambda p, g, s: opt.update(g, s, p), backend=counter, fullgraph=True)
        step(flat, layout.pack([torch.ones(3)] * n), state)
        return counter.op_count

    assert graph_ops(10) == graph_ops(300)


def test_compiled_flat_training_step_in_place_matches_eager_per_leaf():
    """The README recipe: flat buffers, views for the model, fo.step_ in place, one compiled graph."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(4, 4) for _ in range(6)])
    params = {k: v.detach() for k, v in model.named_parameters()}
    x, y = torch.randn(8, 4), torch.randn(8, 4)

    def loss_fn(p, x, y):
        return ((torch.func.functional_call(model, p, (x,)) - y) ** 2).mean()

    optimizer = fo.adam(lr=1e-2)
    layout = fo.FlatLayout(params)
    flat = layout.pack(params)
    state = optimizer.init(flat)

    @torch.compile(fullgraph=True)
    def train_step(flat, state, x, y):
        grads = torch.func.grad(lambda f: loss_fn(layout.unpack(f), x, y))(flat)
        fo.step_(optimizer, grads, state, flat)

    ref_params, ref_state = params, optimizer.init(params)
    for _ in range(3):
        train_step(flat, state, x, y)
        updates, ref_state = optimizer.update(torch.func.grad(loss_fn)(ref_params, x, y), ref_state, ref_params)
        ref_params = fo.apply_updates(ref_params, updates)
    for k, v in layout.unpack(flat).items():
        torch.testing.assert_close(v, ref_params[k], rtol=1e-5, atol=1e-6)
