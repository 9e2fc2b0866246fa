"""chain / named_chain / masked / partition: semantics against torch param groups, None grads, lookup."""

import optree
import pytest
import torch

import functional_optim as fo
from _composed import run_composed_parity
from functional_optim.combine import (
    MaskedNode,
    by_name,
    chain,
    leaf_names,
    masked,
    named_chain,
    partition,
    tree_get,
    tree_set,
)
from functional_optim.transforms import ScaleHParams, add_decayed_weights, clip, scale, set_to_zero, trace

DTYPES = [torch.float64, torch.float32]
# make_params gives p0 (5x3), p1 (4,), p2 (0-d), p3 (6x3 non-contiguous); decay the matrices only
LABELS = {"p0": "decay", "p1": "no_decay", "p2": "no_decay", "p3": "decay"}


def _groups(ps, wd):
    return [{"params": [ps[0], ps[3]], "weight_decay": wd}, {"params": [ps[1], ps[2]], "weight_decay": 0.0}]


@pytest.mark.parametrize("labels", ["tree", "by_name", "by_shape"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_partition_is_torch_param_groups(dtype, labels):
    """partition({decay: adamw(wd), no_decay: adamw(0)}) == torch AdamW with two param groups."""
    param_labels = {
        "tree": LABELS,
        "by_name": by_name({"p0": "decay", "p3": "decay"}, default="no_decay"),
        "by_shape": by_name(lambda name, p: "decay" if p.ndim >= 2 else "no_decay"),
    }[labels]
    tx = partition({"decay": fo.adamw(lr=0.05, weight_decay=0.2), "no_decay": fo.adamw(lr=0.05, weight_decay=0.0)},
                   param_labels)
    state = run_composed_parity(lambda ps: torch.optim.AdamW(_groups(ps, 0.2), lr=0.05), tx, dtype)
    # each part keeps state for its own leaves only
    assert isinstance(state.inner_states["decay"].exp_avg["p1"], MaskedNode)
    assert isinstance(state.inner_states["no_decay"].exp_avg["p0"], MaskedNode)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_masked_l2_then_adam_is_torch_groups(dtype):
    """chain(masked(add_decayed_weights), adam): L2 on the masked leaves only (Adam state shared)."""
    mask = by_name(lambda name, p: p.ndim >= 2)
    tx = chain(masked(add_decayed_weights(0.1), mask), fo.adam(lr=0.05))
    run_composed_parity(lambda ps: torch.optim.Adam(_groups(ps, 0.1), lr=0.05), tx, dtype)


def test_masked_passes_unmasked_leaves_and_none_grads():
    params = {"enc": {"w": torch.ones(2), "b": torch.ones(2)}, "head": torch.ones(3)}
    grads = {"enc": {"w": torch.full((2,), 2.0), "b": None}, "head": torch.full((3,), 4.0)}
    tx = masked(chain(scale(0.5), trace(0.9)), {"enc": True, "head": False})  # a prefix mask
    state = tx.init(params)
    assert isinstance(state.inner_state[1].trace["head"], MaskedNode)
    updates, state = tx.update(grads, state, params)
    assert torch.equal(updates["enc"]["w"], torch.ones(2))
    assert updates["enc"]["b"] is None
    assert updates["head"] is grads["head"]  # untouched, as in optax
    assert torch.equal(state.inner_state[1].trace["enc"]["b"], torch.zeros(2))  # no grad: state kept
    assert leaf_names(params) == ["enc.b", "enc.w", "head"]


def test_partition_frozen_and_errors():
    params = {"embed": torch.ones(2), "w": torch.ones(2)}
    tx = partition({"train": scale(-1.0), "frozen": set_to_zero()}, {"embed": "frozen", "w": "train"})
    updates, _ = tx.update({"embed": torch.ones(2), "w": torch.ones(2)}, tx.init(params), params)
    assert torch.equal(updates["embed"], torch.zeros(2)) and torch.equal(updates["w"], -torch.ones(2))
    with pytest.raises(ValueError, match="labels \\['other'\\] have no transformation"):
        partition({"train": scale(1.0)}, {"embed": "other", "w": "train"}).init(params)
    with pytest.raises(ValueError, match="no rule matches the parameter named 'embed'"):
        partition({"train": scale(1.0)}, by_name({"w": "train"})).init(params)
    hp = tx.hparams
    assert hp == {"train": ScaleHParams(-1.0), "frozen": None}
    updates, _ = tx.update({"embed": None, "w": torch.ones(2)}, tx.init(params), params, {"train": ScaleHParams(2.0)})
    assert updates["embed"] is None and torch.equal(updates["w"], torch.full((2,), 2.0))


def test_chain_and_named_chain_state_and_hparams():
    params = [torch.ones(2)]
    tx = named_chain(("clip", clip(1.0)), ("momentum", trace(0.5)), ("lr", scale(-0.1)))
    state = tx.init(params)
    assert list(state) == ["clip", "momentum", "lr"]
    for _ in range(2):
        updates, state = tx.update([torch.full((2,), 3.0)], state, params)
    assert torch.equal(tree_get(state, "momentum").trace[0], torch.full((2,), 1.5))  # 1 + 0.5 * 1
    assert torch.allclose(updates[0], torch.full((2,), -0.15))
    # hparams by name; missing names keep their defaults
    updates, _ = tx.update([torch.full((2,), 3.0)], state, params, {"lr": ScaleHParams(-1.0)})
    assert torch.allclose(updates[0], torch.full((2,), -1.75))
    with pytest.raises(ValueError, match="unknown part"):
        tx.update([torch.ones(2)], state, params, {"nope": None})
    plain = chain(clip(1.0), scale(2.0))
    assert plain.hparams == (fo.transforms.ClipHParams(1.0), ScaleHParams(2.0))
    with pytest.raises(ValueError, match="expected hparams for 2 parts"):
        plain.update([torch.ones(2)], plain.init(params), params, (None,))
    with pytest.raises(ValueError, match="names must be unique"):
        named_chain(("a", scale(1.0)), ("a", scale(1.0)))


def test_tree_get_and_tree_set():
    state = {"a": {"lr": torch.tensor(0.1, dtype=torch.float64)}, "b": trace(0.9).init([torch.ones(1)])}
    assert tree_get(state, "lr") is state["a"]["lr"]
    assert tree_get(state, fo.transforms.TraceState) is state["b"]
    with pytest.raises(KeyError):
        tree_get(state, "missing")
    assert tree_get(state, "missing", None) is None
    new = tree_set(state, lr=0.5)
    assert new["a"]["lr"].dtype == torch.float64 and float(new["a"]["lr"]) == 0.5
    assert float(state["a"]["lr"]) == pytest.approx(0.1)  # the original is untouched
    with pytest.raises(KeyError):
        tree_set(state, nope=1)



def _nested_tree():
    g = torch.Generator().manual_seed(3)
    return {"enc": {"weight": torch.randn(3, 2, generator=g), "bias": torch.randn(2, generator=g)},
            "head": {"w": torch.randn(2, 2, generator=g), "b": torch.randn(2, generator=g)}}


def _named_parameters():
    """What ``dict(model.named_parameters())`` looks like: one flat dict of dotted names."""
    return {f"{module}.{name}": p for module, sub in _nested_tree().items() for name, p in sub.items()}


_COMPILED_LABELS = {
    # glob rules over a nested tree; every sub-dict keeps leaves of both labels
    "by_name globs": (_nested_tree, by_name({"*bias": "b", "*.b": "b"}, default="a")),
    "by_name fn": (_nested_tree, by_name(lambda n, p: "a" if p.ndim >= 2 else "b")),
    # a literal labels tree (read when the combinator is built)
    "literal tree": (_nested_tree, {"enc": {"weight": "a", "bias": "b"}, "head": {"w": "a", "b": "b"}}),
    # whole modules to one label, on a flat dict of named parameters
    "named parameters": (_named_parameters, by_name({"enc.*": "a"}, default="b")),
}


@pytest.mark.parametrize("case", list(_COMPILED_LABELS))
def test_partition_and_masked_compile_fullgraph(case):
    """partition / masked with by_name rules (fnmatch does not trace: the globs are compiled to
    regexes when by_name is built) and literal trees, under torch.compile(fullgraph=True)."""
    make_params, labels = _COMPILED_LABELS[case]
    params = make_params()
    grads = optree.tree_map(lambda p: 0.5 * p, params)
    mask = optree.tree_map(lambda lbl: lbl == "a", labels) if isinstance(labels, dict) else \
        by_name(lambda n, p: labels.leaf_values({n: p})[0] == "a")
    for tx in (partition({"a": fo.sgd(0.1, momentum=0.9), "b": fo.adam(0.1)}, labels),
               masked(add_decayed_weights(0.1), mask)):
        torch._dynamo.reset()
        state = tx.init(params)

        def step(p, g, s):
            u, s = tx.update(g, s, p)
            return fo.apply_updates(p, u), s

        got, _ = torch.compile(step, fullgraph=True)(params, grads, state)
        want, _ = step(params, grads, state)
        for a, b in zip(optree.tree_leaves(got), optree.tree_leaves(want)):
            torch.testing.assert_close(a, b)
