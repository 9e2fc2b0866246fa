"""The runs of views the eager update hands out (``_kernels/runs.py``): cut as torch cuts them,
recognised only while they are exactly what was handed out, and never a way around the checks."""

import copy
import gc
import io
import pickle

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import functional_optim as fo
from functional_optim._kernels import runs

SHAPES = [(), (1,), (3,), (2, 3), (4, 1, 2), (0,), (5,)]


def _views_of(shapes, offset=0):
    """``(flat, its views in shapes)``; ``offset``: elements of flat's storage before it."""
    n = sum(torch.Size(s).numel() for s in shapes)
    flat = torch.arange(offset + n, dtype=torch.float64)[offset:] if offset else torch.arange(n, dtype=torch.float64)
    return flat, runs.cut(flat, runs.Layout([torch.Size(s) for s in shapes]))


@settings(max_examples=60, deadline=None)
@given(prefix=st.lists(st.sampled_from(SHAPES), max_size=5),
       block=st.lists(st.sampled_from(SHAPES), min_size=1, max_size=4),
       repeats=st.integers(0, runs.MIN_REPEATS + 3),
       suffix=st.lists(st.sampled_from(SHAPES), max_size=5),
       offset=st.sampled_from([0, 0, 3]))
def test_a_layout_cuts_the_views_unflatten_dense_tensors_makes(prefix, block, repeats, suffix, offset):
    shapes = prefix + block * repeats + suffix
    if not shapes:
        return
    flat, views = _views_of(shapes, offset)
    expected = torch._C._nn.unflatten_dense_tensors(flat, [torch.empty(s) for s in shapes])
    base = flat._base if flat._base is not None else flat
    assert len(views) == len(expected)
    for view, ref in zip(views, expected):
        assert (view.shape, view.stride()) == (ref.shape, ref.stride())
        if ref.numel():  # (torch gives an empty tensor of its own where there is nothing to view)
            assert view.storage_offset() == ref.storage_offset() and view._base is base and torch.equal(view, ref)


@pytest.mark.parametrize("shape", [(), (0,), (1,), (5,), (2, 0, 3), (1, 4), (4, 1), (2, 1, 3, 1), (0, 0), (3, 4, 5)])
def test_contiguous_strides_are_torchs(shape):
    assert runs.contiguous_strides(torch.Size(shape)) == torch.empty(shape).stride()


def test_a_repeated_block_is_cut_with_one_unbind_per_position(monkeypatch):
    shapes = [(3, 4), (4,)] * 20
    calls = []
    real = torch.Tensor.unbind
    monkeypatch.setattr(torch.Tensor, "unbind", lambda self, *a: calls.append(self.shape) or real(self, *a))
    _views_of(shapes)
    assert calls == [torch.Size([20, 3, 4]), torch.Size([20, 4])]


def test_a_run_is_known_exactly_as_it_was_handed_out():
    _, views = _views_of([(2, 3), (3,)] * 10)
    run = runs.known(views)
    assert run is not None and run.shapes == tuple(v.shape for v in views)
    assert runs.known(list(views)) is run  # another list of the same tensors
    others = {
        "a part": views[:-1],
        "another order": views[::-1],
        "a clone in it": views[:3] + [views[3].clone()] + views[4:],
        "a new view in it": views[:3] + [views[3].view(views[3].shape)] + views[4:],
        "a deep copy": copy.deepcopy(views),
        "unpickled": pickle.loads(pickle.dumps(views)),
    }
    for what, leaves in others.items():
        assert runs.known(leaves) is None, what


def _saved_and_loaded(tensors):
    buffer = io.BytesIO()
    torch.save(tensors, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("change", ["mul_", "unsqueeze_", "resize_", "set_", "data", "t_"])
def test_a_run_changed_in_place_is_no_longer_known(change):
    _, views = _views_of([(2, 3), (3,)] * 10)
    v = views[5]
    {"mul_": lambda: v.mul_(2), "unsqueeze_": lambda: v.unsqueeze_(0), "resize_": lambda: v.resize_(1),
     "set_": lambda: v.set_(torch.zeros(3, dtype=v.dtype)), "data": lambda: setattr(v, "data", torch.zeros(3, dtype=v.dtype)),
     "t_": lambda: views[4].t_()}[change]()
    assert runs.known(views) is None


def test_handed_out_tensors_save_and_load_as_plain_tensors():
    _, views = _views_of([(2, 3), (3,)] * 10)
    loaded = _saved_and_loaded(views)
    assert type(loaded[0]) is torch.Tensor and not loaded[0].__dict__
    assert all(torch.equal(a, b) for a, b in zip(loaded, views))


def test_a_run_is_forgotten_with_its_first_view_and_a_loop_leaves_none_behind():
    gc.collect()
    before = len(runs._RUNS)
    _, views = _views_of([(2,)] * 10)
    assert len(runs._RUNS) == before + 1
    del views
    gc.collect()
    assert len(runs._RUNS) == before
    tx = fo.adam(1e-2)
    params = [torch.randn(3, 2) for _ in range(20)]
    state = tx.init(params)
    for _ in range(5):
        updates, state = tx.update([torch.ones_like(p) for p in params], state, params)
        params = fo.apply_updates(params, updates)
    live = len(runs._RUNS)
    del updates
    gc.collect()
    assert len(runs._RUNS) <= live  # params, exp_avg, exp_avg_sq, step: one run each of this step
    del state, params
    gc.collect()
    assert len(runs._RUNS) == before


def _stepped(tx, n=24, steps=2):
    params = [torch.randn(2, 3, dtype=torch.float64) if i % 2 else torch.randn(4, dtype=torch.float64) for i in range(n)]
    state = tx.init(params)
    for _ in range(steps):
        updates, state = tx.update([torch.full_like(p, 0.5) for p in params], state, params)
        params = fo.apply_updates(params, updates)
    return params, state, updates


@pytest.mark.parametrize("change, error", [
    (lambda params, state, updates: state.momentum_buffer[5].unsqueeze_(0),
     r"state\.momentum_buffer at \[5\] has shape \(1, 2, 3\), expected \(2, 3\)"),
    (lambda params, state, updates: setattr(state.momentum_buffer[5], "data", torch.zeros(7, dtype=torch.float64)),
     r"state\.momentum_buffer at \[5\] has shape \(7,\)"),
    (lambda params, state, updates: state.step[3].unsqueeze_(0), r"state\.step at \[3\] has shape \(1,\)"),
    (lambda params, state, updates: params[4].unsqueeze_(0), r"grads at \[4\] has shape \(4,\), expected \(1, 4\)"),
], ids=["a momentum buffer", "a momentum buffer's data", "a step counter", "a param"])
def test_a_handed_out_leaf_changed_between_steps_is_checked_as_any_other(change, error):
    tx = fo.sgd(1e-2, momentum=0.9)
    params, state, updates = _stepped(tx)
    change(params, state, updates)
    with pytest.raises(ValueError, match=error):
        tx.update([torch.ones(p.shape[-1:] if i == 4 else p.shape, dtype=p.dtype) for i, p in enumerate(params)],
                  state, params)


def test_handed_out_updates_changed_before_they_are_applied_are_checked():
    params, _, updates = _stepped(fo.sgd(1e-2, momentum=0.9))
    updates[7].unsqueeze_(0)
    with pytest.raises(ValueError, match=r"updates at \[7\] has shape \(1, 2, 3\), expected \(2, 3\)"):
        fo.apply_updates(params, updates)


def test_params_that_require_grad_after_a_step_are_differentiated_through():
    tx = fo.sgd(1e-2, momentum=0.9)
    params, state, _ = _stepped(tx)
    params = [p.requires_grad_() for p in params]
    updates, _ = tx.update([torch.ones_like(p) for p in params], state, params)
    assert fo.apply_updates(params, updates)[0].requires_grad


@pytest.mark.parametrize("make", [lambda: fo.sgd(1e-2, momentum=0.9, nesterov=True), lambda: fo.adam(1e-2),
                                  lambda: fo.rmsprop(1e-2, centered=True), lambda: fo.nadam(1e-2)],
                         ids=["sgd", "adam", "rmsprop", "nadam"])
def test_what_is_known_of_a_run_changes_no_number(make, monkeypatch):
    torch.manual_seed(0)
    expected = _stepped(make(), steps=4)
    monkeypatch.setattr(runs, "known", lambda leaves: None)  # every tensor read again, every step
    torch.manual_seed(0)
    got = _stepped(make(), steps=4)
    expected, got = fo.tree.flatten(expected)[0], fo.tree.flatten(got)[0]
    assert len(expected) == len(got)
    for a, b in zip(expected, got):
        assert type(a) is type(b)
        assert not isinstance(a, torch.Tensor) or (torch.equal(a, b) and a.stride() == b.stride())


def test_a_state_saved_and_loaded_mid_run_steps_on_as_the_original():
    tx = fo.adam(1e-2)
    params, state, _ = _stepped(tx)
    loaded_params, loaded_state = _saved_and_loaded((params, state))
    grads = [torch.full_like(p, -0.25) for p in params]
    expected = fo.apply_updates(params, tx.update(grads, state, params)[0])
    got = fo.apply_updates(loaded_params, tx.update(grads, loaded_state, loaded_params)[0])
    assert all(torch.equal(a, b) for a, b in zip(expected, got))
