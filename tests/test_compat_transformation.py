"""compat.TransformationOptimizer: torch parity with schedulers, state_dict round trip, hooks, closure."""

import copy

import pytest
import torch

import functional_optim as fo
from _parity import assert_close, grads_for_step, make_params
import compat
from compat.transformation import TransformationOptimizer
from functional_optim import schedules as S
from functional_optim.combine import chain
from functional_optim.inject import inject_hyperparams
from functional_optim.transforms import apply_if_finite, clip_by_global_norm

DTYPES = [torch.float64, torch.float32]


def _groups(ps):
    return [{"params": [ps[0], ps[3]]}, {"params": [ps[1], ps[2]], "weight_decay": 0.0}]


def _step_both(ours, ref, params, steps, opt_ours, opt_ref, sched_ours=None, sched_ref=None, dtype=torch.float64,
               before=None):
    for step in range(steps):
        for o, r, g in zip(ours, ref, grads_for_step(params, step)):
            o.grad = None if g is None else g.clone()
            r.grad = None if g is None else g.clone()
        if before is not None:
            before(ref)
        opt_ours.step()
        opt_ref.step()
        if sched_ours is not None:
            sched_ours.step()
            sched_ref.step()
        for i, (o, r) in enumerate(zip(ours, ref)):
            assert_close(o.detach(), r.detach(), dtype, f"param {i} after step {step}")


@pytest.mark.parametrize("scheduler", ["StepLR", "OneCycleLR"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_torch_adamw_with_groups_and_scheduler(dtype, scheduler):
    """Group hparams and LR schedulers (OneCycleLR also cycles group['betas']) drive the transformation."""
    params = make_params(dtype)
    ours = [p.clone().requires_grad_() for p in params]
    ref = [p.clone().requires_grad_() for p in params]
    opt_ours = TransformationOptimizer(_groups(ours), fo.adamw(), lr=0.05, weight_decay=0.2)
    opt_ref = torch.optim.AdamW(_groups(ref), lr=0.05, weight_decay=0.2)
    make = {"StepLR": lambda o: torch.optim.lr_scheduler.StepLR(o, 2, 0.5),
            "OneCycleLR": lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.1, total_steps=10)}[scheduler]
    _step_both(ours, ref, params, 8, opt_ours, opt_ref, make(opt_ours), make(opt_ref), dtype)
    assert opt_ours.param_groups[1]["weight_decay"] == 0.0
    assert list(opt_ours.state[ours[0]]) == ["step", "exp_avg", "exp_avg_sq"]


def test_composed_transformation_with_clipping():
    params = make_params(torch.float64)
    ours = [p.clone().requires_grad_() for p in params]
    ref = [p.clone().requires_grad_() for p in params]
    opt_ours = TransformationOptimizer(ours, chain(clip_by_global_norm(0.5), fo.adam()), lr=0.05)
    opt_ref = torch.optim.Adam(ref, lr=0.05)
    assert opt_ours.defaults == {"max_norm": 0.5, "lr": 0.05, "betas": (0.9, 0.999), "eps": 1e-8,
                                 "weight_decay": 0.0}
    _step_both(ours, ref, params, 5, opt_ours, opt_ref,
               before=lambda ps: torch.nn.utils.clip_grad_norm_(ps, 0.5))
    assert list(opt_ours.state[ours[0]]) == ["1.step", "1.exp_avg", "1.exp_avg_sq"]


def _make(ps):
    tx = apply_if_finite(inject_hyperparams(fo.adam(), lr=S.cosine_decay_schedule(0.1, 10)))
    return TransformationOptimizer(ps, tx)


def test_state_dict_round_trip_keeps_dtypes_and_continues_identically():
    params = make_params(torch.float32)
    a = [p.clone().requires_grad_() for p in params]
    opt_a = _make(a)
    for step in range(3):
        for p, g in zip(a, grads_for_step(params, step)):
            p.grad = g
        opt_a.step()
    sd = copy.deepcopy(opt_a.state_dict())
    b = [p.detach().clone().requires_grad_() for p in a]
    opt_b = _make(b)
    opt_b.load_state_dict(sd)
    for key, value in opt_a.state[a[0]].items():
        assert opt_b.state[b[0]][key].dtype == value.dtype, key  # int32 counters, bool flag kept
        assert torch.equal(opt_b.state[b[0]][key], value), key
    assert opt_a.state[a[0]]["inner_state.hyperparams.lr"].dtype == torch.float32
    for step in range(3, 6):
        for pa, pb, g in zip(a, b, grads_for_step(params, step)):
            pa.grad = None if g is None else g.clone()
            pb.grad = None if g is None else g.clone()
        opt_a.step()
        opt_b.step()
        for pa, pb in zip(a, b):
            assert torch.equal(pa, pb)


def test_load_rejects_another_transformation_and_changes_nothing():
    params = make_params(torch.float64)
    a = [p.clone().requires_grad_() for p in params]
    opt_a = TransformationOptimizer(a, fo.adam())
    for p, g in zip(a, grads_for_step(params, 0)):
        p.grad = g
    opt_a.step()
    opt_b = _make([p.detach().clone().requires_grad_() for p in params])
    before = copy.deepcopy(opt_b.state_dict())
    with pytest.raises(ValueError, match="has keys"):
        opt_b.load_state_dict(opt_a.state_dict())
    assert opt_b.state_dict() == before


def test_hooks_zero_grad_closure_and_errors():
    p = torch.nn.Parameter(torch.ones(3))
    opt = TransformationOptimizer([p], fo.adam(), lr=0.1)
    calls = []
    opt.register_step_pre_hook(lambda o, args, kwargs: calls.append("pre"))
    opt.register_step_post_hook(lambda o, args, kwargs: calls.append("post"))

    def closure():
        opt.zero_grad()
        loss = (p ** 2).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert calls == ["pre", "post"] and float(loss.detach()) == 3.0
    assert torch.all(p < 1)
    opt.zero_grad()
    assert p.grad is None
    opt.step()  # no grads: nothing happens
    with pytest.raises(ValueError, match="no hyperparameter named \\['momentum'\\]"):
        TransformationOptimizer([p], fo.adam(), momentum=0.9)
    with pytest.raises(ValueError, match="Invalid learning rate: -1"):
        TransformationOptimizer([p], fo.adam(), lr=-1)
    with pytest.raises(TypeError, match="must be a GradientTransformation"):
        TransformationOptimizer([p], torch.optim.Adam)


def _deepcopy_cases():
    """Every compat class that steps on plain dense gradients with its defaults (LBFGS needs a
    closure, SophiaH gradients with a graph, SparseAdam sparse ones, Muon matrices only)."""
    skip = {"LBFGS", "SophiaH", "SparseAdam", "Muon", "FunctionalOptimizer", "TransformationOptimizer"}
    cases = {name: getattr(compat, name) for name in compat.__all__ if name not in skip}
    cases["TransformationOptimizer"] = lambda ps: compat.TransformationOptimizer(ps, fo.adamw(), lr=1e-2)
    return cases


@pytest.mark.parametrize("name", list(_deepcopy_cases()))
def test_deepcopy_mid_run_steps_like_the_original(name):
    """``copy.deepcopy(opt)`` (Lightning, SWA and EMA utilities do it) keeps what the step needs:
    torch's ``__getstate__`` keeps only defaults, state and param groups, which for a class built
    on a transformation lost the transformation itself."""
    make = _deepcopy_cases()[name]
    torch.manual_seed(0)
    params = [torch.randn(3, 2, requires_grad=True), torch.randn(2, requires_grad=True)]
    opt = make(params)
    if hasattr(opt, "train"):
        opt.train()
    for _ in range(2):
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
    twin = copy.deepcopy(opt)
    twin_params = [p for group in twin.param_groups for p in group["params"]]
    for _ in range(3):
        grads = [torch.randn_like(p) for p in params]
        for ps in (params, twin_params):
            for p, g in zip(ps, grads):
                p.grad = g.clone()
        opt.step()
        twin.step()
    for a, b in zip(params, twin_params):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", list(_deepcopy_cases()) + ["Muon"])
def test_gradients_written_in_place_step_as_fresh_ones(name):
    """The same gradients handed over as new ``.grad`` tensors each step, or written into the
    same ones (what ``backward`` does after ``zero_grad(set_to_none=False)``), give the same
    steps: no state keeps the gradient tensor itself (``compat.Adan``'s previous gradient did,
    and zeroing the gradients zeroed it)."""
    make = _deepcopy_cases().get(name, getattr(compat, name))
    torch.manual_seed(0)
    base = [torch.randn(3, 2), torch.randn(2, 2)]
    fresh, in_place = ([p.clone().requires_grad_() for p in base] for _ in range(2))
    opts = [make(fresh), make(in_place)]
    for opt in opts:
        if hasattr(opt, "train"):
            opt.train()
    for p in in_place:
        p.grad = torch.zeros_like(p)
    for _ in range(4):
        grads = [torch.randn_like(p) for p in base]
        for p, g in zip(fresh, grads):
            p.grad = g.clone()
        for p, g in zip(in_place, grads):
            p.grad.copy_(g)
        for opt in opts:
            opt.step()
        opts[1].zero_grad(set_to_none=False)
    for a, b in zip(fresh, in_place):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["Lion", "Lars", "AdaBelief", "Adan", "ADOPT", "AdEMAMix", "AdamWScheduleFree",
                                  "SGDScheduleFree", "Lamb", "Prodigy"])
def test_compiled_step_with_float_lr_does_not_recompile(name):
    """``torch.compile(opt.step)`` with a float lr a scheduler changes: after warm-up one graph
    for every lr (the step hands float hyperparameters over as tensors; Schedule-Free's
    ``as_tensor(lr)`` was specialized and recompiled at every step). Lamb's warm-up is a step
    longer: its integer ``group["step"]``, seen static once, becomes dynamic at its second change
    (its bias correction had specialized it, one graph per step). Prodigy keeps its estimates
    as floats in ``param_groups``, as prodigyopt does, and hands them over as tensors made with
    ``ones * x`` (``torch.tensor(x)`` specialized them)."""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    torch.manual_seed(0)
    params = [torch.randn(6, 4, requires_grad=True), torch.randn(4, requires_grad=True)]
    opt = getattr(compat, name)(params, lr=0.01)
    if hasattr(opt, "train"):
        opt.train()
    scheduler = torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.9)
    counter = CompileCounterWithBackend("aot_eager")
    step = torch.compile(opt.step, backend=counter)
    warmup = 3 if name == "Lamb" else 2
    frames = []
    for _ in range(warmup + 3):
        for p in params:
            p.grad = torch.randn_like(p)
        step()
        scheduler.step()
        frames.append(counter.frame_count)
    torch._dynamo.reset()
    assert frames[warmup:] == [frames[warmup - 1]] * 3, f"recompiled as lr changed: {frames}"
