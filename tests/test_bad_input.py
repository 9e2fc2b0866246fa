"""Trees that do not match the params are refused, naming the path, before anything is computed
or written: no leaf paired by position, none broadcast into another shape (the building blocks,
the combinators, ``fo.step_`` and the helpers that take params beside a state)."""

import pytest
import torch

import functional_optim as fo


def _params():
    return {"b": torch.zeros(3), "w": torch.ones(3, 4)}


WRONG = {  # updates for _params() that torch would broadcast or that pair leaves by position
    "broadcast row": ({"b": torch.zeros(3), "w": torch.arange(4.0)}, r"at \['w'\] has shape \(4,\), expected \(3, 4\)"),
    "0-d": ({"b": torch.zeros(3), "w": torch.tensor(2.0)}, r"at \['w'\] has shape \(\), expected \(3, 4\)"),
    "other keys": ({"a": torch.zeros(3), "w": torch.ones(3, 4)}, r"does not match the structure of params"),
    "a list": ([torch.zeros(3), torch.ones(3, 4)], r"does not match the structure of params"),
}

# transformations that take params beside the updates (the first ones stateless, as the others' parts)
PARAM_USERS = {
    "add_decayed_weights": lambda: fo.add_decayed_weights(0.5),
    "scale (given params)": lambda: fo.scale(2.0),
    "clip_by_global_norm (given params)": lambda: fo.clip_by_global_norm(1.0),
    "scale_by_trust_ratio": lambda: fo.scale_by_trust_ratio(),
    "scale_by_param_block_rms": lambda: fo.scale_by_param_block_rms(),
    "adopt": lambda: fo.adopt(),
    "lars": lambda: fo.lars(1e-2),
    "lamb": lambda: fo.lamb(1e-2),
    "lion": lambda: fo.lion(weight_decay=0.1),
    "prodigy": lambda: fo.prodigy(),
    "schedule_free_sgd": lambda: fo.schedule_free_sgd(1.0),
    "chain(add_decayed_weights, adam)": lambda: fo.chain(fo.add_decayed_weights(0.1), fo.adam()),
}


@pytest.mark.parametrize("wrong", list(WRONG), ids=list(WRONG))
@pytest.mark.parametrize("name", list(PARAM_USERS), ids=list(PARAM_USERS))
def test_updates_that_do_not_match_the_params_are_refused(name, wrong):
    tx = PARAM_USERS[name]()
    params = _params()
    state = tx.init(params)
    grads, message = WRONG[wrong]
    with pytest.raises(ValueError, match=message):
        tx.update(grads, state, params)


@pytest.mark.parametrize("wrong", list(WRONG), ids=list(WRONG))
def test_step_in_place_refuses_before_writing_anything(wrong):
    tx = fo.chain(fo.scale_by_adam(), fo.scale(-1.0))
    params = _params()
    state = tx.init(params)
    before = [t.clone() for t in fo.tree.flatten((params, state))[0] if isinstance(t, torch.Tensor)]
    grads, message = WRONG[wrong]
    with pytest.raises(ValueError, match=message):
        fo.step_(tx, grads, state, params)
    after = [t for t in fo.tree.flatten((params, state))[0] if isinstance(t, torch.Tensor)]
    assert all(torch.equal(a, b) for a, b in zip(after, before))


def test_step_in_place_refuses_a_new_state_it_cannot_write_into_before_writing():
    """A transformation whose new state has another shape (here: made for other params) is refused
    before the params are written."""
    inner = fo.trace(0.9)

    def update(updates, state, params=None, hparams=None):
        new_updates, _ = inner.update(updates, state, params, hparams)
        return new_updates, fo.TraceState({"b": torch.zeros(3), "w": torch.zeros(4)})

    tx = fo.GradientTransformation(inner.init, update, inner.hparams)
    params = _params()
    state = tx.init(params)
    with pytest.raises(ValueError, match=r"step_: the new state at \[0\]\['w'\] has shape \(4,\), where the state has a "
                                         r"tensor of shape \(3, 4\)"):
        fo.step_(tx, {"b": torch.ones(3), "w": torch.ones(3, 4)}, state, params)
    assert torch.equal(params["w"], torch.ones(3, 4)) and torch.equal(params["b"], torch.zeros(3))


@pytest.mark.parametrize("helper", ["schedule_free_eval_params", "schedule_free_train_params"])
@pytest.mark.parametrize("params, message", [
    ({"b": torch.zeros(3), "w": torch.zeros(4)}, r"state.z at \['w'\] has shape \(3, 4\), expected \(4,\)"),
    ({"b": torch.zeros(3), "w": torch.zeros(())}, r"state.z at \['w'\] has shape \(3, 4\), expected \(\)"),
    ({"b": torch.zeros(3), "w": torch.zeros(3, 4, dtype=torch.float64)}, r"state.z at \['w'\] has dtype "
                                                                          r"torch.float32, expected torch.float64"),
    ({"x": torch.zeros(3), "w": torch.zeros(3, 4)}, r"state.z does not match the structure of params"),
], ids=["broadcast", "0-d", "dtype", "keys"])
def test_schedule_free_switches_refuse_params_the_state_was_not_made_for(helper, params, message):
    state = fo.schedule_free_sgd(1.0).init(_params())
    with pytest.raises(ValueError, match=rf"{helper}: {message}"):
        getattr(fo, helper)(state, params)


@pytest.mark.parametrize("hvp, message", [
    ({"b": torch.ones(3), "w": torch.ones(4)}, r"hvps\[0\] at \['w'\] has shape \(4,\), expected \(3, 4\)"),
    ({"b": torch.ones(3), "w": torch.ones(3, 4, dtype=torch.float64)}, r"hvps\[0\] at \['w'\] has dtype "
                                                                       r"torch.float64, expected torch.float32"),
    ({"a": torch.ones(3), "w": torch.ones(3, 4)}, r"hvps\[0\] does not match the structure of params"),
], ids=["broadcast", "dtype", "keys"])
def test_hutchinson_products_must_match_the_probes(hvp, message):
    probe = {"b": torch.ones(3), "w": torch.ones(3, 4)}
    with pytest.raises(ValueError, match=rf"combine_hutchinson_samples: {message}"):
        fo.combine_hutchinson_samples([hvp], [probe])


def test_map_updates_refuses_a_tree_it_would_pair_by_position():
    from functional_optim.combine import map_updates

    with pytest.raises(ValueError, match=r"map_updates: tree 1 mapped with the updates has an extra leaf"):
        map_updates(torch.add, {"a": torch.ones(2)}, {"a": torch.ones(2), "z": torch.ones(2)})


@pytest.mark.parametrize("mask, message", [
    ({"b": 0, "w": True}, r"masked: the mask at \['b'\] must be True or False, got int 0"),
    ({"b": True, "w": "yes"}, r"the mask at \['w'\] must be True or False, got str 'yes'"),
    ({"b": torch.tensor(True), "w": True}, r"the mask at \['b'\] must be True or False, got Tensor"),
], ids=["int", "str", "tensor"])
def test_masked_takes_bools_only(mask, message):
    tx = fo.masked(fo.scale(2.0), mask)
    with pytest.raises(TypeError, match=message):
        tx.init(_params())


def test_matching_trees_still_pass_with_none_leaves():
    """``None`` updates (no gradient) are skipped by the checks."""
    tx = fo.chain(fo.add_decayed_weights(0.5), fo.scale(-1.0))
    params = _params()
    updates, _ = tx.update({"b": None, "w": torch.ones(3, 4)}, tx.init(params), params)
    assert updates["b"] is None and torch.equal(updates["w"], torch.full((3, 4), -1.5))
    new = fo.apply_updates(params, updates)
    fo.step_(tx, {"b": None, "w": torch.ones(3, 4)}, tx.init(params), params)
    assert torch.equal(params["w"], new["w"])
