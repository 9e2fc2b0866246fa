"""FlatLayout: per-(device, dtype) flat buffers give the same numbers and a fixed-size graph."""

import optree
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


# --- bad input is refused, naming the leaf path or the buffer, before anything is computed ---

def _small():
    return {"b": torch.zeros(3), "w": torch.zeros(3, 4)}


def _two_groups():
    return {"b": torch.zeros(3), "d": torch.zeros(2, dtype=torch.float64)}


_STRUCTURE = "FlatLayout.pack: tree does not match the structure of the layout"
BAD_PACK = {
    "extra_leaf": ({"b": torch.zeros(3), "w": torch.zeros(3, 4), "z": torch.ones(9)}, ValueError,
                   rf"{_STRUCTURE}: .*extra leaf at \['z'\]"),
    "extra_leaf_and_transposed": ({"b": torch.zeros(3), "w": torch.zeros(4, 3), "z": torch.ones(9)}, ValueError,
                                  rf"{_STRUCTURE}: .*extra leaf at \['z'\]"),
    "transposed": ({"b": torch.zeros(3), "w": torch.zeros(4, 3)}, ValueError,
                   r"FlatLayout.pack: tree at \['w'\] has shape \(4, 3\), expected \(3, 4\)"),
    "flattened_leaf": ({"b": torch.zeros(3), "w": torch.zeros(12)}, ValueError,
                       r"tree at \['w'\] has shape \(12,\), expected \(3, 4\)"),
    "same_total_misaligned": ({"b": torch.zeros(4), "w": torch.zeros(11)}, ValueError,
                              r"tree at \['b'\] has shape \(4,\), expected \(3,\)"),
    "larger_leaf": ({"b": torch.zeros(3), "w": torch.zeros(5, 4)}, ValueError,
                    r"tree at \['w'\] has shape \(5, 4\), expected \(3, 4\)"),
    "other_keys": ({"b": torch.zeros(3), "x": torch.zeros(3, 4)}, ValueError, rf"{_STRUCTURE}: .*no leaf at \['w'\]"),
    "list_for_dict": ([torch.zeros(3), torch.zeros(3, 4)], ValueError, rf"{_STRUCTURE}: .*no leaf at \['b'\]"),
    "missing_leaf": ({"b": torch.zeros(3)}, ValueError, rf"{_STRUCTURE}: .*no leaf at \['w'\]"),
    "wrong_dtype": ({"b": torch.zeros(3), "w": torch.zeros(3, 4, dtype=torch.float64)}, ValueError,
                    r"tree at \['w'\] has dtype torch.float64, expected torch.float32"),
    "wrong_device": ({"b": torch.zeros(3), "w": torch.zeros(3, 4, device="meta")}, ValueError,
                     r"tree at \['w'\] is on meta, expected cpu"),
    "none_leaf": ({"b": torch.zeros(3), "w": None}, TypeError, r"tree at \['w'\] must be a Tensor, got NoneType"),
    "sparse_leaf": ({"b": torch.zeros(3), "w": torch.zeros(3, 4).to_sparse()}, ValueError,
                    r"tree at \['w'\] has layout torch.sparse_coo, expected torch.strided"),
}


@pytest.mark.parametrize("case", list(BAD_PACK))
def test_pack_refuses_a_tree_that_does_not_match_the_layout(case):
    tree, error, match = BAD_PACK[case]
    with pytest.raises(error, match=match):
        fo.FlatLayout(_small()).pack(tree)


BAD_UNPACK = {
    "no_buffers": (_small, (), ValueError,
                   r"FlatLayout.unpack: expected 1 buffer \(one per \(device, dtype\) group\), got 0"),
    "one_buffer_for_two_groups": (_two_groups, (torch.zeros(3),), ValueError,
                                  r"FlatLayout.unpack: expected 2 buffers \(one per \(device, dtype\) group\), got 1"),
    "too_many_buffers": (_small, (torch.zeros(15), torch.zeros(15)), ValueError, r"expected 1 buffer .*got 2"),
    "wrong_dtype": (_small, (torch.zeros(15, dtype=torch.float64),), ValueError,
                    r"FlatLayout.unpack: flat at \[0\] has dtype torch.float64, expected torch.float32"),
    "wrong_device": (_small, (torch.zeros(15, device="meta"),), ValueError,
                     r"FlatLayout.unpack: flat at \[0\] is on meta, expected cpu"),
    "column": (_small, (torch.zeros(15, 1),), ValueError,
               r"FlatLayout.unpack: flat at \[0\] has shape \(15, 1\), expected \(15,\)"),
    "too_short": (_small, (torch.zeros(14),), ValueError, r"flat at \[0\] has shape \(14,\), expected \(15,\)"),
    "groups_swapped": (_two_groups, (torch.zeros(2, dtype=torch.float64), torch.zeros(3)), ValueError,
                       r"flat at \[0\] has shape \(2,\), expected \(3,\)"),
    "bare_tensor": (_small, torch.zeros(15), TypeError, r"FlatLayout.unpack: expected a tuple of buffers .*got Tensor"),
    "none_buffer": (_small, (None,), TypeError, r"flat at \[0\] must be a Tensor, got NoneType"),
}


@pytest.mark.parametrize("case", list(BAD_UNPACK))
def test_unpack_refuses_buffers_that_do_not_match_the_layout(case):
    make_tree, flat, error, match = BAD_UNPACK[case]
    with pytest.raises(error, match=match):
        fo.FlatLayout(make_tree()).unpack(flat)


def test_layout_refuses_a_non_tensor_leaf():
    with pytest.raises(TypeError, match=r"FlatLayout: tree at \['n'\] must be a Tensor, got NoneType"):
        fo.FlatLayout({"a": torch.zeros(2), "n": None})


@pytest.mark.parametrize("tree", [_small, _two_groups, lambda: [torch.zeros(3), torch.ones(2, 2)],
                                  lambda: {"outer": {"a": torch.ones(2)}, "b": (torch.zeros(1), torch.ones(()))}],
                         ids=["dict", "two_groups", "list", "nested"])
def test_valid_trees_and_buffers_still_round_trip(tree):
    t = tree()
    layout = fo.FlatLayout(t)
    flat = layout.pack(t)
    assert len(flat) == len(layout.groups) and all(f.dim() == 1 for f in flat)
    for a, b in zip(layout.pack(layout.unpack(list(flat))), flat):  # a list of buffers is accepted too
        assert torch.equal(a, b)
    for a, b in zip(optree.tree_leaves(layout.unpack(flat)), optree.tree_leaves(t)):
        assert torch.equal(a, b) and a.shape == b.shape


def test_checks_trace_into_one_fullgraph_compile_and_still_refuse_bad_input_compiled():
    tree = _tree()
    layout = fo.FlatLayout(tree)
    counter = CompileCounterWithBackend("eager")
    round_trip = torch.compile(lambda t: layout.unpack(layout.pack(t)), backend=counter, fullgraph=True)
    out = round_trip(tree)
    assert counter.frame_count == 1
    for k in tree:
        assert torch.equal(out[k], tree[k])
    torch._dynamo.reset()
    round_trip = torch.compile(lambda t: layout.unpack(layout.pack(t)), backend="eager")  # may fall back to eager
    bad = dict(tree, w=torch.randn(3, 5))
    with pytest.raises(ValueError, match=r"FlatLayout.pack: tree at \['w'\] has shape \(3, 5\), expected \(5, 3\)"):
        round_trip(bad)
    f32, f64 = layout.pack(tree)  # groups in order of first leaf: b (float32) comes before d (float64)
    with pytest.raises(ValueError, match=r"FlatLayout.unpack: flat at \[1\] has shape \(1, 7\), expected \(7,\)"):
        torch.compile(layout.unpack, backend="eager")((f32, f64.reshape(1, 7)))
