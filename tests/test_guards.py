"""No silent corruption in the functional API (issue 9): every input that used to broadcast,
truncate or round differently from torch now either matches torch.optim or raises a clear error.

Each test compares against torch itself (torch.optim, torch.lerp), never against written-down
numbers, and runs over every optimizer (tests/_registry.py) and every transformation that takes
hyperparameters or keeps per-leaf state.
"""

import itertools
import warnings

import pytest
import torch

import functional_optim as fo
from _registry import IDS, OPTIMIZERS
from _versions import TORCH_VERSION
import functional_optim._definition as definition_module
from functional_optim._kernels.ops import PURE, lerp
from functional_optim.adadelta import ADADELTA
from functional_optim.adafactor import ADAFACTOR
from functional_optim.adagrad import ADAGRAD
from functional_optim.adam import ADAM
from functional_optim.nadam import NADAM
from functional_optim.tree import flatten


def _params():
    return {"w": torch.randn(3, 4), "b": torch.randn(4), "s": torch.randn(())}


def _grads(params, scale=1.0):
    return {k: scale * torch.randn_like(v) for k, v in params.items()}


def _run(tx, params, grads_seq, hparams=None):
    state = tx.init(params)
    for grads in grads_seq:
        updates, state = tx.update(grads, state, params, hparams)
        params = fo.apply_updates(params, updates)
    return params, state


# ------------------------------------------------------------------ 1. tensor hyperparameters
@pytest.mark.parametrize("entry", OPTIMIZERS, ids=IDS)
def test_one_element_tensor_lr_is_squeezed_like_torch(entry):
    """``lr=torch.tensor([0.1])`` (torch accepts it) gives what ``lr=0.1`` gives, 0-d params stay 0-d."""
    params = _params()
    grads_seq = [_grads(params) for _ in range(3)]
    kwargs = {k: v for k, v in entry.kwargs.items() if k != "lr"}
    ref, _ = _run(entry.factory(lr=0.1, **kwargs), params, grads_seq)
    ours, _ = _run(entry.factory(lr=torch.tensor([0.1], dtype=torch.float64), **kwargs), params, grads_seq)
    for k in params:
        assert ours[k].shape == params[k].shape
        torch.testing.assert_close(ours[k], ref[k], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("entry", OPTIMIZERS, ids=IDS)
def test_hparams_of_other_shapes_are_refused_at_construction_and_update(entry):
    params = _params()
    with pytest.raises(ValueError, match="lr"):
        entry.factory(lr=torch.full((3, 1), 0.1))
    tx = entry.factory(**entry.kwargs)
    state = tx.init(params)
    for bad in (torch.full((3, 1), 0.1), torch.full((4,), 0.1)):
        record = tx.hparams._replace(lr=bad)
        with pytest.raises(ValueError, match=r"hparams.lr must be a number or a 0-d \(or 1-element\) tensor"):
            tx.update(_grads(params), state, params, record)
    # one element in any shape is torch's 1-element rule: accepted, and the params keep their shapes
    updates, _ = tx.update(_grads(params), state, params, tx.hparams._replace(lr=torch.full((1, 1), 0.1)))
    assert all(updates[k].shape == params[k].shape for k in params)


TRANSFORMS_WITH_HPARAMS = {
    "scale": (fo.scale, "step_size"),
    "scale_by_learning_rate": (fo.scale_by_learning_rate, "lr"),
    "clip": (fo.clip, "max_delta"),
    "clip_by_global_norm": (fo.clip_by_global_norm, "max_norm"),
    "add_decayed_weights": (fo.add_decayed_weights, "weight_decay"),
    "trace": (fo.trace, "decay"),
}


@pytest.mark.parametrize("name", list(TRANSFORMS_WITH_HPARAMS))
def test_transform_hparams_are_squeezed_or_refused(name):
    make, field = TRANSFORMS_WITH_HPARAMS[name]
    params = _params()
    grads = _grads(params)
    with pytest.raises(ValueError, match=field):
        make(torch.full((3, 1), 0.5))
    ref_tx, tx = make(0.5), make(torch.tensor([0.5]))
    ref, _ = ref_tx.update(grads, ref_tx.init(params), params)
    ours, _ = tx.update(grads, tx.init(params), params)
    for k in params:
        assert ours[k].shape == params[k].shape
        torch.testing.assert_close(ours[k], ref[k])
    bad = tx.hparams._replace(**{field: torch.full((4,), 0.5)})
    with pytest.raises(ValueError, match=rf"{name} hparams.{field} must be a number"):
        tx.update(grads, tx.init(params), params, bad)


def test_combinator_passes_hparams_to_parts_which_check_them():
    params = _params()
    tx = fo.chain(fo.clip_by_global_norm(1.0), fo.adam())
    bad = (None, fo.AdamHParams(lr=torch.full((3, 1), 0.1)))
    with pytest.raises(ValueError, match="adam hparams.lr"):
        tx.update(_grads(params), tx.init(params), params, bad)


# ------------------------------------------------------------------ 2. state against params
def _slot_names(state):
    return [f for f in state._fields if f != "step" and isinstance(getattr(state, f), dict)]


@pytest.mark.parametrize("entry", OPTIMIZERS, ids=IDS)
def test_state_of_other_shapes_dtypes_or_devices_is_refused_naming_the_path(entry):
    params = _params()
    tx = entry.factory(**entry.kwargs)
    state = tx.init(params)
    grads = _grads(params)
    for slot in _slot_names(state):
        field = getattr(state, slot)
        key = next(k for k in ("b", "s", "w") if isinstance(field[k], torch.Tensor))
        value = field[key]
        bad_values = {
            "shape": torch.zeros(value.shape + (2,), dtype=value.dtype),
            "device": torch.zeros_like(value, device="meta"),
        }
        if slot not in entry.compat_cls.definition.scalar_slots:  # per-param 0-d counters keep their own float dtype, as torch
            bad_values["dtype"] = value.to(torch.float64)
        for what, bad in bad_values.items():
            bad_state = state._replace(**{slot: {**field, key: bad}})
            with pytest.raises(ValueError, match=rf"state.{slot} at \['{key}'\] (has|is on)"):
                tx.update(grads, bad_state, params)
    bad_step = state._replace(step={**state.step, "w": torch.zeros(4)})
    with pytest.raises(ValueError, match=r"state.step at \['w'\] has shape \(4,\), expected a 0-d tensor"):
        tx.update(grads, bad_step, params)


def test_state_for_a_vector_does_not_broadcast_into_a_scalar_param():
    """The case from the issue: a (4,) state made a 0-d param (4,)."""
    tx = fo.adam()
    with pytest.raises(ValueError, match=r"state.exp_avg at <root> has shape \(4,\), expected \(\)"):
        tx.update(torch.ones(()), tx.init(torch.zeros(4)), torch.zeros(()))


def test_state_made_with_other_static_choices_is_refused():
    params = _params()
    with_max = fo.adam(amsgrad=True).init(params)
    with pytest.raises(ValueError, match=r"state.max_exp_avg_sq at \['b'\] holds a value"):
        fo.adam().update(_grads(params), with_max, params)
    with pytest.raises(ValueError, match=r"state.max_exp_avg_sq at \['b'\] must be a tensor"):
        fo.adam(amsgrad=True).update(_grads(params), fo.adam().init(params), params)
    factored = fo.adafactor().init({"w": torch.zeros(3, 4)})
    with pytest.raises(ValueError, match=r"state.row_var at \['w'\] has shape \(3, 1\), expected \(2, 1\)"):
        fo.adafactor().update({"w": torch.ones(2, 4)}, factored, {"w": torch.zeros(2, 4)})


DEFINITIONS = [ADAM, ADADELTA, ADAGRAD, NADAM, ADAFACTOR]


@pytest.mark.parametrize("definition", DEFINITIONS, ids=lambda d: d.name)
def test_declared_slot_shapes_agree_with_init_slots(definition):
    """``slot_shapes`` (what update checks) and ``init_slots`` (what init creates) describe one state."""
    flags = [f for f, v in definition.static_type._field_defaults.items() if isinstance(v, bool)]
    for values in itertools.product([False, True], repeat=len(flags)):
        static = definition.static_type(**dict(zip(flags, values)))
        for shape in [(), (0,), (4,), (3, 0), (3, 4), (2, 3, 4)]:
            created = definition.init_slots(torch.zeros(shape), definition.hparams_type(), static)
            expected = definition.expected_slot_shapes(torch.Size(shape), static)
            assert set(expected) == set(definition.slots) == set(created)
            for slot, value in created.items():
                assert (None if value is None else tuple(value.shape)) == (
                    None if expected[slot] is None else tuple(expected[slot])), (static, shape, slot)


def test_combinator_states_are_checked():
    params = _params()
    grads = _grads(params)
    chain = fo.chain(fo.trace(0.9), fo.adam())
    state = chain.init(params)
    with pytest.raises(ValueError, match="chain: state must be a tuple of 2 part states, got 1 entries"):
        chain.update(grads, state[:1], params)
    with pytest.raises(ValueError, match=r"trace: state.trace at \['b'\] has shape \(5,\), expected \(4,\)"):
        chain.update(grads, (fo.TraceState({**state[0].trace, "b": torch.zeros(5)}), state[1]), params)
    with pytest.raises(ValueError, match=r"adam: state.exp_avg at \['w'\] has dtype torch.float64"):
        bad = state[1]._replace(exp_avg={**state[1].exp_avg, "w": torch.zeros(3, 4, dtype=torch.float64)})
        chain.update(grads, (state[0], bad), params)

    part = fo.partition({"a": fo.adam(), "b": fo.adagrad()}, {"w": "a", "b": "b", "s": "b"})
    pstate = part.init(params)
    with pytest.raises(ValueError, match="partition: state must be a dict of part states"):
        part.update(grads, fo.PartitionState({"a": pstate.inner_states["a"]}), params)

    multi = fo.MultiSteps(fo.adam(), 2)
    mstate = multi.init(params)
    with pytest.raises(ValueError, match=r"MultiSteps: state.acc_grads at \['s'\] has shape \(2,\)"):
        multi.update(grads, mstate._replace(acc_grads={**mstate.acc_grads, "s": torch.zeros(2)}), params)

    inject = fo.inject_hyperparams(fo.adam(), lr=0.1)
    istate = inject.init(params)
    with pytest.raises(ValueError, match=r"state.hyperparams holds \[\], expected \['lr'\]"):
        inject.update(grads, istate._replace(hyperparams={}), params)
    with pytest.raises(ValueError, match="adam hparams.lr must be a number"):
        inject.update(grads, istate._replace(hyperparams={"lr": torch.zeros(3)}), params)

    finite = fo.apply_if_finite(fo.adam())
    fstate = finite.init(params)
    with pytest.raises(ValueError, match="apply_if_finite: state.notfinite_count must be a 0-d tensor"):
        finite.update(grads, fstate._replace(notfinite_count=torch.zeros(2)), params)
    with pytest.raises(TypeError, match="masked.update expects a MaskedState"):
        fo.masked(fo.adam(), {"w": True, "b": False, "s": False}).update(grads, state, params)


def test_state_check_runs_under_compile_without_changing_results(monkeypatch):
    params = _params()
    tx = fo.adam(lr=0.1)
    state = tx.init(params)
    grads = _grads(params)
    compiled = torch.compile(tx.update, fullgraph=True, backend="eager")
    updates, _ = compiled(grads, state, params)
    # the reference: the same per-tensor pure code run eagerly (an eager update otherwise runs on
    # foreach ops, whose final update rounds as torch's addcdiv, within an ulp of this one)
    monkeypatch.setattr(definition_module, "eager_ops_for", lambda *lists: PURE)
    eager_updates, _ = tx.update(grads, state, params)
    for k in params:
        assert torch.equal(updates[k], eager_updates[k])
    bad = state._replace(exp_avg={**state.exp_avg, "s": torch.zeros(4)})
    # dynamo reports the ValueError raised while tracing (the shape may print symbolically); torch
    # 2.11's dynamo reports an "Observed exception" whose debug context lists the message's pieces
    if TORCH_VERSION >= (2, 12):
        message = r"state.exp_avg at \['s'\] .*has shape"
    else:
        message = r"ValueError\(.*'exp_avg'.*\['s'\].*'has shape '"
    with pytest.raises(Exception, match=message):
        compiled(grads, bad, params)


# ------------------------------------------------------------------ 3. lerp with a tensor weight
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64], ids=str)
def test_lerp_with_tensor_weight_rounds_like_torch_lerp_with_a_number(dtype):
    x, end = torch.randn(257).to(dtype), (100 * torch.randn(257)).to(dtype)
    for w in [0.0, 1e-3, 0.1, 0.4999, 0.5, 0.5001, 0.9, 0.999, 1.0]:
        expected = x.clone().lerp_(end, w)
        assert torch.equal(lerp(x, end, torch.tensor(w, dtype=torch.float64)), expected), w


def test_adafactor_with_weight_one_matches_torch():
    """The issue's case: beta2_decay=0 gives lerp weight 1 at every step (the new value replaces V)."""
    params = {"w": torch.zeros(4)}
    tx = fo.adafactor(lr=0.01, beta2_decay=0.0)
    state = tx.init(params)
    ref = torch.zeros(4, requires_grad=True)
    opt = torch.optim.Adafactor([ref], lr=0.01, beta2_decay=0.0)
    for g in (torch.full((4,), 100.0), torch.tensor([0.01, 0.02, 0.03, 0.04])):
        updates, state = tx.update({"w": g}, state, params)
        params = fo.apply_updates(params, updates)
        ref.grad = g.clone()
        opt.step()
    assert torch.equal(state.variance["w"], opt.state[ref]["variance"])
    torch.testing.assert_close(params["w"], ref.detach(), rtol=1e-6, atol=0)


# ------------------------------------------------------------------ 9. autograd chains
def _mlp_loop(params, steps, tx, create_graph=False, hparams=None):
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    state = tx.init(params)
    for _ in range(steps):
        loss = torch.nn.functional.mse_loss(torch.func.functional_call(model, params, (x,)), y)
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=create_graph)
        updates, state = tx.update(dict(zip(params, grads)), state, params, hparams)
        params = fo.apply_updates(params, updates)
    return params


def _named_params(requires_grad=True):
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    return {k: (p if requires_grad else p.detach().requires_grad_()) for k, p in model.named_parameters()}


def test_chaining_every_step_onto_the_last_warns():
    params = _named_params()
    with pytest.warns(fo.AutogradChainWarning, match="memory grows each step"):
        out = _mlp_loop(params, 3, fo.adam(lr=0.01))
    assert all(p.grad_fn is not None for p in out.values())  # the behaviour itself is unchanged


def test_documented_detached_loop_neither_warns_nor_chains():
    """README / examples: params detached, grads from torch.func.grad: no graph survives a step."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    params = {k: p.detach() for k, p in model.named_parameters()}
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    tx = fo.adamw(lr=0.01)
    state = tx.init(params)

    def loss_fn(ps):
        return torch.nn.functional.mse_loss(torch.func.functional_call(model, ps, (x,)), y)

    with warnings.catch_warnings():
        warnings.simplefilter("error", fo.AutogradChainWarning)
        for _ in range(3):
            updates, state = tx.update(torch.func.grad(loss_fn)(params), state, params)
            params = fo.apply_updates(params, updates)
    assert all(p.grad_fn is None and not p.requires_grad for p in params.values())
    assert all(t.grad_fn is None for t in flatten(state)[0] if isinstance(t, torch.Tensor))


def test_differentiating_through_updates_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error", fo.AutogradChainWarning)
        params = _mlp_loop(_named_params(), 3, fo.adam(lr=0.01), create_graph=True)  # MAML-style
        sum(p.sum() for p in params.values()).backward()
        log_lr = torch.tensor(-3.0, requires_grad=True)  # learned learning rate
        tx = fo.adam()
        params = _mlp_loop(_named_params(), 3, tx, hparams=tx.hparams._replace(lr=log_lr.exp()))
        sum(p.sum() for p in params.values()).backward()
    assert log_lr.grad is not None and torch.isfinite(log_lr.grad)


# ------------------------------------------------------------------ 10. smaller ones
@pytest.mark.parametrize("entry", OPTIMIZERS, ids=IDS)
def test_integer_params_are_refused(entry):
    ints = {"w": torch.zeros(3, dtype=torch.int64)}
    tx = entry.factory(**entry.kwargs)
    with pytest.raises(ValueError, match=r"params at \['w'\] has dtype torch.int64"):
        tx.init(ints)
    state = tx.init({"w": torch.zeros(3)})
    with pytest.raises(ValueError, match=r"params at \['w'\] has dtype torch.int64"):
        tx.update({"w": torch.ones(3, dtype=torch.int64)}, state, ints)


@pytest.mark.parametrize("entry", OPTIMIZERS, ids=IDS)
def test_wider_state_does_not_widen_updates(entry):
    """float64 state for float32 params was accepted by some optimizers and returned float64 updates."""
    params = {"w": torch.randn(3, 4)}
    tx = entry.factory(**entry.kwargs)
    state64 = tx.init({"w": params["w"].double()})
    with pytest.raises(ValueError, match=r"at \['w'\] has dtype torch.float64, expected torch.float32"):
        tx.update({"w": torch.randn(3, 4)}, state64._replace(step=tx.init(params).step), params)
