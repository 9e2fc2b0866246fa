"""Saving and resuming a functional run: ``torch.save`` / ``torch.load(weights_only=True)`` and
``torch.distributed.checkpoint``, bitwise equal to the uninterrupted run."""

import io

import pytest
import torch

import functional_optim as fo
from functional_optim._serialization import library_record_types
from functional_optim.tree import flatten

LABELS = {"w": "adam", "v": "adafactor", "b": "adagrad", "c": "adadelta", "d": "nadam", "e": "frozen"}


def _params():
    g = torch.Generator().manual_seed(0)
    shapes = {"w": (3, 4), "v": (4, 5), "b": (4,), "c": (2, 2), "d": (), "e": (3,)}
    return {k: torch.randn(s, generator=g) for k, s in shapes.items()}


def _grads(step):
    g = torch.Generator().manual_seed(100 + step)
    grads = {k: torch.randn(p.shape, generator=g) for k, p in _params().items()}
    if step == 1:
        grads["b"] = None  # a None grad leaf, kept through save/load
    return grads


def _everything():
    """A transformation whose state holds every state type the library defines."""
    parts = fo.partition({
        "adam": fo.adam(amsgrad=False), "adafactor": fo.adafactor(), "adagrad": fo.adagrad(),
        "adadelta": fo.adadelta(), "nadam": fo.nadam(), "frozen": fo.set_to_zero(),
    }, LABELS)
    inner = fo.named_chain(
        ("nans", fo.zero_nans()),
        ("clip", fo.clip_by_global_norm(1.0)),
        ("momentum", fo.masked(fo.trace(0.5), {k: k == "w" for k in LABELS})),
        ("parts", parts),
    )
    accumulate = fo.MultiSteps(fo.apply_if_finite(inner), every_k_schedule=2).gradient_transformation()
    return fo.inject_hyperparams(accumulate, lr=fo.linear_schedule(0.1, 0.01, 10), max_norm=1.0)


def _steps(tx, params, state, steps):
    for step in steps:
        updates, state = tx.update(_grads(step), state, params)
        params = fo.apply_updates(params, updates)
    return params, state


def _assert_trees_equal(a, b):
    a_leaves, a_spec = flatten(a)
    b_leaves, b_spec = flatten(b)
    assert a_spec == b_spec
    for x, y in zip(a_leaves, b_leaves):
        if isinstance(x, torch.Tensor):
            assert x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y)
        else:
            assert x == y


def test_every_library_record_type_is_a_safe_global():
    safe = set(torch.serialization.get_safe_globals())
    types = library_record_types()
    assert {"AdamState", "AdafactorState", "Empty", "MaskedNode", "MultiStepsState", "InjectHyperparamsState",
            "ApplyIfFiniteState", "PartitionState", "MaskedState", "TraceState", "ZeroNansState",
            "EmptyState"} <= {t.__name__ for t in types}
    assert set(types) <= safe


def test_resume_from_torch_save_with_weights_only_is_bitwise():
    tx = _everything()
    params = _params()
    expected_params, expected_state = _steps(tx, params, tx.init(params), range(6))

    params, state = _steps(tx, params, tx.init(params), range(3))
    buffer = io.BytesIO()
    torch.save({"params": params, "opt_state": state}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    _assert_trees_equal(checkpoint["opt_state"], state)
    params, state = _steps(tx, checkpoint["params"], checkpoint["opt_state"], range(3, 6))
    _assert_trees_equal(params, expected_params)
    _assert_trees_equal(state, expected_state)


def test_resume_from_distributed_checkpoint_is_bitwise(tmp_path):
    dcp = pytest.importorskip("torch.distributed.checkpoint")
    tx = fo.chain(fo.clip_by_global_norm(1.0), fo.partition(
        {"adam": fo.adam(amsgrad=True), "adafactor": fo.adafactor(), "adagrad": fo.adagrad(),
         "adadelta": fo.adadelta(), "nadam": fo.nadam(), "frozen": fo.set_to_zero()}, LABELS))
    params = _params()
    expected_params, expected_state = _steps(tx, params, tx.init(params), range(4))

    params, state = _steps(tx, params, tx.init(params), range(2))
    dcp.save({"params": params, "opt_state": state}, checkpoint_id=str(tmp_path))
    # a fresh run: the template (same structure) is filled in place
    fresh = {k: torch.zeros_like(v) for k, v in params.items()}
    target = {"params": fresh, "opt_state": tx.init(fresh)}
    dcp.load(target, checkpoint_id=str(tmp_path))
    _assert_trees_equal(target["opt_state"], state)
    params, state = _steps(tx, target["params"], target["opt_state"], range(2, 4))
    _assert_trees_equal(params, expected_params)
    _assert_trees_equal(state, expected_state)
