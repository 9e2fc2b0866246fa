"""The functional core: pytrees, None grads, errors that name paths, purity, torch.compile."""

from typing import NamedTuple

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

import functional_optim as fo


class Block(NamedTuple):
    weight: torch.Tensor
    bias: torch.Tensor


def _tree():
    return {"encoder": [Block(torch.randn(3, 2), torch.randn(2)), (torch.randn(4),)], "head": torch.randn(())}


def _like(tree, fn):
    import optree

    return optree.tree_map(fn, tree)


@pytest.mark.parametrize("make", [fo.adam, fo.adamw])
def test_nested_pytrees_none_grads_keep_param_and_state(make):
    opt = make(lr=0.1)
    params = _tree()
    state = opt.init(params)
    grads = _like(params, torch.ones_like)
    grads["encoder"][0] = Block(grads["encoder"][0].weight, None)
    updates, new_state = opt.update(grads, state, params)
    assert updates["encoder"][0].bias is None
    new_params = fo.apply_updates(params, updates)
    assert new_params["encoder"][0].bias is params["encoder"][0].bias
    assert float(new_state.step["encoder"][0].bias) == 0.0
    assert float(new_state.step["encoder"][0].weight) == 1.0
    assert new_state.exp_avg["encoder"][0].bias is state.exp_avg["encoder"][0].bias
    assert not torch.equal(new_params["head"], params["head"])


def test_structure_mismatch_names_the_path():
    opt = fo.adam()
    params = {"a": torch.zeros(2), "b": {"c": torch.zeros(3)}}
    state = opt.init(params)
    with pytest.raises(ValueError, match=r"grads has no leaf at \['b'\]\['c'\]"):
        opt.update({"a": torch.zeros(2), "b": {"d": torch.zeros(3)}}, state, params)
    with pytest.raises(ValueError, match=r"extra leaf at \['z'\]"):
        opt.update({"a": torch.zeros(2), "b": {"c": torch.zeros(3)}, "z": torch.zeros(1)}, state, params)
    bad_state = state._replace(exp_avg={"a": torch.zeros(2)})
    with pytest.raises(ValueError, match=r"state.exp_avg has no leaf at \['b'\]\['c'\]"):
        opt.update({"a": torch.zeros(2), "b": {"c": torch.zeros(3)}}, bad_state, params)


@pytest.mark.parametrize(
    "grad, message",
    [
        (torch.zeros(3, dtype=torch.float64), r"grads at \['w'\] has dtype torch.float64, expected torch.float32"),
        (torch.zeros(4), r"grads at \['w'\] has shape \(4,\), expected \(3,\)"),
        (torch.zeros(3, device="meta"), r"grads at \['w'\] is on meta, expected cpu"),
    ],
)
def test_bad_grad_leaf_raises_before_anything_changes(grad, message):
    opt = fo.adam()
    params = {"w": torch.zeros(3), "v": torch.zeros(2)}
    state = opt.init(params)
    snapshot = [t.clone() for t in state.exp_avg.values()]
    with pytest.raises(ValueError, match=message):
        opt.update({"w": grad, "v": torch.ones(2)}, state, params)
    assert all(torch.equal(a, b) for a, b in zip(snapshot, state.exp_avg.values()))


def test_update_argument_errors():
    opt = fo.adam()
    params = {"w": torch.zeros(3)}
    state = opt.init(params)
    with pytest.raises(ValueError, match="needs params"):
        opt.update(params, state)
    with pytest.raises(TypeError, match="AdamHParams"):
        opt.update(params, state, params, {"lr": 0.1})
    with pytest.raises(TypeError, match="AdamState"):
        opt.update(params, tuple(state), params)


@pytest.mark.parametrize("kwargs", [dict(lr=-1.0), dict(betas=(1.0, 0.9)), dict(eps=-1.0), dict(weight_decay=-1.0)])
def test_factory_validates_like_torch(kwargs):
    with pytest.raises(ValueError) as ours:
        fo.adam(**kwargs)
    with pytest.raises(ValueError) as ref:
        torch.optim.Adam([torch.zeros(1, requires_grad=True)], **kwargs)
    assert str(ours.value) == str(ref.value)


def test_hparams_given_at_call_time_override_defaults():
    opt = fo.adam(lr=1.0)
    params = {"w": torch.ones(2, dtype=torch.float64)}
    grads = {"w": torch.ones(2, dtype=torch.float64)}
    state = opt.init(params)
    u_default, _ = opt.update(grads, state, params)
    u_small, _ = opt.update(grads, state, params, fo.AdamHParams(lr=1e-3))
    torch.testing.assert_close(u_small["w"], u_default["w"] * 1e-3)


def test_apply_updates_keeps_dtype_and_checks_structure():
    params = {"w": torch.ones(2, dtype=torch.float16)}
    out = fo.apply_updates(params, {"w": torch.full((2,), 0.5, dtype=torch.float32)})
    assert out["w"].dtype == torch.float16
    with pytest.raises(ValueError, match="updates"):
        fo.apply_updates(params, {"v": torch.ones(2)})


@pytest.mark.parametrize("update, error, message", [
    (torch.ones(4), ValueError, r"updates at \['w'\] has shape \(4,\), expected \(3, 4\)"),  # would broadcast
    (torch.ones(()), ValueError, r"has shape \(\), expected \(3, 4\)"),
    (torch.ones(2, 3, 4), ValueError, r"has shape \(2, 3, 4\), expected \(3, 4\)"),  # would grow the param
    (0.5, TypeError, r"updates at \['w'\] must be a Tensor or None, got float"),
    (torch.ones(3, 4, dtype=torch.complex64), ValueError,  # the imaginary part would be dropped
     r"updates at \['w'\] has dtype torch.complex64, which its parameter's dtype torch.float32 cannot hold"),
])
def test_apply_updates_refuses_an_update_of_another_shape_or_kind(update, error, message):
    params = {"b": torch.zeros(3), "w": torch.zeros(3, 4)}
    with pytest.raises(error, match=message):
        fo.apply_updates(params, {"b": torch.ones(3), "w": update})


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool], ids=str)
def test_apply_updates_refuses_to_truncate_into_a_non_float_parameter(dtype):
    params = {"step": torch.zeros(2, dtype=dtype)}
    with pytest.raises(ValueError, match=rf"updates at \['step'\] has dtype torch.float32, which its parameter's "
                                         rf"dtype {dtype} cannot hold"):
        fo.apply_updates(params, {"step": torch.full((2,), 0.6)})


def test_apply_updates_takes_real_updates_into_complex_and_wider_floats_into_narrower():
    out = fo.apply_updates({"z": torch.zeros(2, dtype=torch.complex64), "h": torch.zeros(2, dtype=torch.bfloat16)},
                           {"z": torch.ones(2), "h": torch.ones(2, dtype=torch.float64)})
    assert out["z"].dtype == torch.complex64 and torch.equal(out["z"].real, torch.ones(2))
    assert out["h"].dtype == torch.bfloat16 and torch.equal(out["h"], torch.ones(2, dtype=torch.bfloat16))


def test_compiled_update_matches_eager_without_recompiling_on_tensor_hparams():
    opt = fo.adamw(amsgrad=True)
    params = {"w": torch.randn(4, 3), "b": torch.randn(3)}
    state = opt.init(params)

    def train_step(params, grads, state, hparams):
        updates, state = opt.update(grads, state, params, hparams)
        return fo.apply_updates(params, updates), state

    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(train_step, backend=counter, fullgraph=True)
    eager_params, eager_state = params, state
    for i in range(3):
        grads = {k: torch.randn_like(v) for k, v in params.items()}
        hparams = fo.AdamHParams(
            lr=torch.tensor(1e-2 / (i + 1)),
            betas=(torch.tensor(0.9), torch.tensor(0.99 - 0.01 * i)),
            eps=1e-8,
            weight_decay=torch.tensor(0.1 * i),
        )
        params, state = compiled(params, grads, state, hparams)
        eager_params, eager_state = train_step(eager_params, grads, eager_state, hparams)
        for k in params:
            torch.testing.assert_close(params[k], eager_params[k], rtol=1e-6, atol=1e-7)
            torch.testing.assert_close(state.max_exp_avg_sq[k], eager_state.max_exp_avg_sq[k])
    assert counter.frame_count == 1
