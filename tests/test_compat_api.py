"""compat.Adam / compat.AdamW behave as torch.optim.Adam / AdamW through the whole Optimizer API.

Every check runs the same scenario on the torch optimizer and on ours and compares the outcome,
so the expectations come from torch itself.
"""

import copy
import io
import pickle

import pytest
import torch
from torch.optim import lr_scheduler
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

import compat
from _parity import result_or_error, same_value, signature_shape
from _registry import OPTIMIZERS

PAIRS = [(torch.optim.Adam, compat.Adam), (torch.optim.AdamW, compat.AdamW)]
IDS = [t.__name__ for t, _ in PAIRS]


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))


def _train(opt_cls, steps=5, sched=None, seed=0, model=None, **kwargs):
    model = _model(seed) if model is None else model
    opt = opt_cls(model.parameters(), **kwargs)
    scheduler = sched(opt) if sched else None
    data = torch.randn(16, 4, generator=torch.Generator().manual_seed(1))
    lrs = []
    for step in range(steps):
        opt.zero_grad()
        loss = model(data).pow(2).mean()
        loss.backward()
        opt.step()
        if scheduler is not None:
            if isinstance(scheduler, lr_scheduler.ReduceLROnPlateau):
                scheduler.step(loss.item() * (1 + step % 2))
            else:
                scheduler.step()
        lrs.append([float(g["lr"]) for g in opt.param_groups])
    return model, opt, lrs


@pytest.mark.parametrize("pair", PAIRS, ids=IDS)
def test_signature_and_defaults_match_torch(pair):
    torch_cls, ours = pair
    assert signature_shape(ours.__init__) == signature_shape(torch_cls.__init__)
    p = [torch.nn.Parameter(torch.randn(2))]
    assert ours(p).defaults == torch_cls(p).defaults
    assert issubclass(ours, torch.optim.Optimizer)


BAD_KWARGS = [
    dict(lr=-1.0),
    dict(eps=-1e-3),
    dict(betas=(1.0, 0.999)),
    dict(betas=(0.9, -0.1)),
    dict(weight_decay=-0.5),
    dict(betas=(0.9, torch.tensor(0.99))),
    dict(lr=torch.tensor([0.1, 0.2])),
    dict(lr=torch.tensor(0.1), foreach=True),
    dict(betas=(torch.tensor(0.9), torch.tensor(0.99)), foreach=True),
    dict(betas=(torch.tensor([0.9, 0.8]), torch.tensor(0.99))),
    dict(fused=True, differentiable=True),
    dict(fused=True, foreach=True),
]


def _error_of(fn):
    """``(type, message)`` of what ``fn()`` raises, or ``None``."""
    return result_or_error(fn)[1]


@pytest.mark.parametrize("kwargs", BAD_KWARGS, ids=str)
@pytest.mark.parametrize("pair", PAIRS, ids=IDS)
def test_constructor_errors_match_torch(pair, kwargs):
    torch_cls, ours = pair
    expected = _error_of(lambda: torch_cls([torch.nn.Parameter(torch.randn(2))], **kwargs))
    assert expected is not None
    assert _error_of(lambda: ours([torch.nn.Parameter(torch.randn(2))], **kwargs)) == expected


def test_step_errors_match_torch():
    def sparse_grad(cls):
        p = torch.nn.Parameter(torch.randn(3))
        p.grad = torch.randn(3).to_sparse()
        cls([p]).step()

    def capturable_on_cpu(cls):
        p = torch.nn.Parameter(torch.randn(3))
        p.grad = torch.randn(3)
        cls([p], capturable=True).step()

    def fused_int_param(cls):
        p = torch.zeros(3, dtype=torch.int64)
        p.grad = torch.zeros(3, dtype=torch.int64)
        cls([p], fused=True).step()

    for scenario in (sparse_grad, capturable_on_cpu, fused_int_param):
        expected = _error_of(lambda: scenario(torch.optim.Adam))
        assert expected is not None, scenario.__name__
        assert _error_of(lambda: scenario(compat.Adam)) == expected, scenario.__name__


def test_empty_and_tensor_params_errors_match_torch():
    for params in ([], torch.randn(3)):
        assert _error_of(lambda: compat.Adam(params)) == _error_of(lambda: torch.optim.Adam(params))


SCHEDULERS = {
    "StepLR": lambda o: lr_scheduler.StepLR(o, step_size=2, gamma=0.5),
    "MultiStepLR": lambda o: lr_scheduler.MultiStepLR(o, milestones=[1, 3], gamma=0.3),
    "ExponentialLR": lambda o: lr_scheduler.ExponentialLR(o, gamma=0.8),
    "CosineAnnealingLR": lambda o: lr_scheduler.CosineAnnealingLR(o, T_max=4),
    "CosineAnnealingWarmRestarts": lambda o: lr_scheduler.CosineAnnealingWarmRestarts(o, T_0=2),
    "LinearLR": lambda o: lr_scheduler.LinearLR(o, start_factor=0.2, total_iters=3),
    "ConstantLR": lambda o: lr_scheduler.ConstantLR(o, factor=0.5, total_iters=2),
    "PolynomialLR": lambda o: lr_scheduler.PolynomialLR(o, total_iters=4, power=2.0),
    "LambdaLR": lambda o: lr_scheduler.LambdaLR(o, lambda e: 1.0 / (e + 1)),
    "MultiplicativeLR": lambda o: lr_scheduler.MultiplicativeLR(o, lambda e: 0.9),
    "OneCycleLR": lambda o: lr_scheduler.OneCycleLR(o, max_lr=0.05, total_steps=10),
    "CyclicLR": lambda o: lr_scheduler.CyclicLR(o, base_lr=0.001, max_lr=0.01, step_size_up=2),
    "ReduceLROnPlateau": lambda o: lr_scheduler.ReduceLROnPlateau(o, patience=0, factor=0.5),
    "SequentialLR": lambda o: lr_scheduler.SequentialLR(
        o, [lr_scheduler.ConstantLR(o, factor=0.1, total_iters=2), lr_scheduler.ExponentialLR(o, gamma=0.9)],
        milestones=[2]),
    "ChainedScheduler": lambda o: lr_scheduler.ChainedScheduler(
        [lr_scheduler.ConstantLR(o, factor=0.1, total_iters=2), lr_scheduler.ExponentialLR(o, gamma=0.9)]),
}


@pytest.mark.parametrize("tensor_lr", [False, True], ids=["float_lr", "tensor_lr"])
@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_lr_schedulers_drive_compat_like_torch(name, tensor_lr):
    lr = torch.tensor(0.01) if tensor_lr else 0.01
    kwargs = dict(lr=lr, fused=True) if tensor_lr else dict(lr=lr)
    ref_model, ref_opt, ref_lrs = _train(torch.optim.Adam, steps=6, sched=SCHEDULERS[name], **copy.deepcopy(kwargs))
    our_model, our_opt, our_lrs = _train(compat.Adam, steps=6, sched=SCHEDULERS[name], **copy.deepcopy(kwargs))
    assert our_lrs == ref_lrs
    for a, b in zip(our_model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    if tensor_lr:
        assert isinstance(our_opt.param_groups[0]["lr"], torch.Tensor)


#: every torch.optim optimizer the installed torch has (compat has each)
TWINS = [e.torch_cls.__name__ for e in OPTIMIZERS] + [n for n in ("LBFGS", "Muon", "SparseAdam") if hasattr(torch.optim, n)]


def _bias_free(model: torch.nn.Sequential) -> torch.nn.Sequential:
    """The same layers without biases (Muon steps matrices only)."""
    return torch.nn.Sequential(*(torch.nn.Linear(m.in_features, m.out_features, bias=False)
                                 if isinstance(m, torch.nn.Linear) else m for m in model))


@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
@pytest.mark.parametrize("name", TWINS)
def test_every_scheduler_drives_every_optimizer_like_torch(name, scheduler):
    """Each LR scheduler over each compat class: the same learning rates, bitwise the same
    parameters and optimizer state dict as over torch.optim's class; where torch refuses the pair
    (``OneCycleLR``/``CyclicLR`` cycling a momentum the optimizer has not, LBFGS without a closure,
    SparseAdam on dense gradients) compat raises torch's exception and message."""
    def run(cls):
        torch.manual_seed(0)
        model = _bias_free(_model()) if name == "Muon" else _model()
        return _train(cls, steps=6, sched=SCHEDULERS[scheduler], model=model)

    result, torch_error = result_or_error(lambda: run(getattr(torch.optim, name)))
    if torch_error is not None:
        assert _error_of(lambda: run(getattr(compat, name))) == torch_error
        return
    ref_model, ref_opt, ref_lrs = result
    our_model, our_opt, our_lrs = run(getattr(compat, name))
    assert our_lrs == ref_lrs
    for a, b in zip(our_model.parameters(), ref_model.parameters()):
        assert torch.equal(a, b)
    assert same_value(our_opt.state_dict(), ref_opt.state_dict())


def _hooked_run(cls):
    """The order in which a step (with a closure) and a state-dict round trip call every hook."""
    calls = []
    name = cls.__name__
    if name == "SparseAdam":
        torch.manual_seed(0)
        model, inputs = torch.nn.Embedding(5, 4, sparse=True), torch.tensor([0, 3])
    else:
        model, inputs = _model(), torch.randn(2, 4)
        if name == "Muon":  # matrices only
            model = torch.nn.Sequential(*(m for m in model if not isinstance(m, torch.nn.Linear)),
                                        *(torch.nn.Linear(m.in_features, m.out_features, bias=False)
                                          for m in model if isinstance(m, torch.nn.Linear)))
    opt = cls(model.parameters(), lr=0.01)
    handles = [
        register_optimizer_step_pre_hook(lambda o, a, k: calls.append("global_pre")),
        register_optimizer_step_post_hook(lambda o, a, k: calls.append("global_post")),
    ]
    try:
        opt.register_step_pre_hook(lambda o, a, k: calls.append("pre"))
        opt.register_step_post_hook(lambda o, a, k: calls.append("post"))
        opt.register_state_dict_pre_hook(lambda o: calls.append("sd_pre"))
        opt.register_state_dict_post_hook(lambda o, sd: calls.append("sd_post"))
        opt.register_load_state_dict_pre_hook(lambda o, sd: calls.append("load_pre"))
        opt.register_load_state_dict_post_hook(lambda o: calls.append("load_post"))
        model(inputs).sum().backward()
        calls.append(float(opt.step(lambda: calls.append("closure") or torch.tensor(1.0))))
        sd = opt.state_dict()
        opt.load_state_dict(sd)
    finally:
        for h in handles:
            h.remove()
    return calls


@pytest.mark.parametrize("name", TWINS)
def test_hooks_fire_in_torch_order(name):
    """Global and per-optimizer step hooks, the closure, the returned loss and the state-dict hooks,
    for every compat class, in torch.optim's order."""
    ours = _hooked_run(getattr(compat, name))
    assert ours == _hooked_run(getattr(torch.optim, name))
    assert "closure" in ours and "sd_post" in ours and "load_post" in ours


def test_step_pre_hook_can_replace_args_like_torch():
    for cls in (torch.optim.Adam, compat.Adam):
        model = _model()
        opt = cls(model.parameters())
        opt.register_step_pre_hook(lambda o, a, k: ((o,), {"closure": lambda: torch.tensor(7.0)}))
        assert opt.step() == torch.tensor(7.0)


@pytest.mark.parametrize("set_to_none", [True, False])
def test_zero_grad(set_to_none):
    model = _model()
    opt = compat.Adam(model.parameters())
    model(torch.randn(2, 4)).sum().backward()
    opt.zero_grad(set_to_none=set_to_none)
    for p in model.parameters():
        assert (p.grad is None) if set_to_none else torch.equal(p.grad, torch.zeros_like(p))


def test_named_parameters_and_add_param_group_match_torch():
    def build(cls):
        model = _model()
        opt = cls(list(model[0].named_parameters()), lr=0.01)
        opt.add_param_group({"params": list(model[2].named_parameters()), "lr": 0.1, "amsgrad": True})
        model(torch.randn(3, 4)).pow(2).sum().backward()
        opt.step()
        return model, opt

    (m_ref, o_ref), (m_ours, o_ours) = build(torch.optim.Adam), build(compat.Adam)
    assert o_ours.state_dict()["param_groups"] == o_ref.state_dict()["param_groups"]
    for a, b in zip(m_ours.parameters(), m_ref.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("pair", PAIRS, ids=IDS)
def test_checkpoint_through_torch_save_weights_only_both_ways(pair):
    torch_cls, ours = pair
    for saver, loader in ((torch_cls, ours), (ours, torch_cls)):
        model_a, opt_a, _ = _train(saver, steps=3, lr=0.02, amsgrad=True)
        buf = io.BytesIO()
        torch.save(opt_a.state_dict(), buf)
        buf.seek(0)
        sd = torch.load(buf, weights_only=True)
        model_b = copy.deepcopy(model_a)
        opt_b = loader(model_b.parameters(), lr=0.02, amsgrad=True)
        opt_b.load_state_dict(sd)
        data = torch.randn(5, 4)
        for _ in range(3):
            for m, o in ((model_a, opt_a), (model_b, opt_b)):
                o.zero_grad()
                m(data).pow(2).mean().backward()
                o.step()
        for a, b in zip(model_a.parameters(), model_b.parameters()):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("bad", ["wrong_shape", "missing_key", "not_a_dict", "group_count"])
def test_malformed_state_dict_leaves_optimizer_unchanged(bad):
    model, opt, _ = _train(compat.Adam, steps=2)
    before = copy.deepcopy(opt.state_dict())
    sd = copy.deepcopy(opt.state_dict())
    if bad == "wrong_shape":
        sd["state"][0]["exp_avg"] = torch.zeros(3, 3)
    elif bad == "missing_key":
        del sd["state"][1]["exp_avg_sq"]
    elif bad == "not_a_dict":
        sd["state"][0] = [1, 2]
    else:
        sd["param_groups"].append(copy.deepcopy(sd["param_groups"][0]))
    with pytest.raises(ValueError):
        opt.load_state_dict(sd)
    after = opt.state_dict()
    assert after["param_groups"] == before["param_groups"]
    for pid, entry in before["state"].items():
        for key, value in entry.items():
            assert torch.equal(after["state"][pid][key], value)


def test_grad_scaler_with_fused_matches_torch():
    def run(cls):
        model = _model()
        opt = cls(model.parameters(), lr=0.01, fused=True)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**4)
        data = torch.randn(8, 4, generator=torch.Generator().manual_seed(3))
        for step in range(4):
            opt.zero_grad()
            loss = model(data).pow(2).mean() * (float("inf") if step == 1 else 1.0)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        return model, opt, scaler.get_scale()

    m_ref, o_ref, s_ref = run(torch.optim.Adam)
    m_ours, o_ours, s_ours = run(compat.Adam)
    assert s_ours == s_ref
    for a, b in zip(m_ours.parameters(), m_ref.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    steps = [float(s["step"]) for s in o_ours.state.values()]
    assert steps == [float(s["step"]) for s in o_ref.state.values()] == [3.0] * len(steps)


def test_differentiable_step_gradients_match_torch():
    """Gradients w.r.t. the incoming grad flow through step() as in torch's differentiable mode."""

    def grad_through_step(cls, amsgrad, steps):
        p0 = torch.randn(4, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True)
        g = torch.randn(4, dtype=torch.float64, generator=torch.Generator().manual_seed(1), requires_grad=True)
        p = p0.clone()
        p.grad = g
        opt = cls([p], lr=0.1, differentiable=True, amsgrad=amsgrad, weight_decay=0.1)
        for _ in range(steps):
            opt.step()
        return torch.autograd.grad(p.sum(), (p0, g))

    # (torch's own differentiable AMSGrad cannot backprop through two steps, so one step there)
    for amsgrad, steps in ((False, 3), (True, 1)):
        ours = grad_through_step(compat.Adam, amsgrad, steps)
        ref = grad_through_step(torch.optim.Adam, amsgrad, steps)
        # torch's differentiable path computes its bias-correction scalars in float32 (the step's
        # dtype) and folds them in another order, so the float64 results agree to float32 scalars.
        for a, b in zip(ours, ref):
            torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-10)


def test_default_implementation_rules_match_torch_on_cpu():
    """On CPU torch defaults to the for-loop; a tensor lr with foreach=None stays valid."""
    model, opt, _ = _train(compat.Adam, steps=2, lr=torch.tensor(0.01))
    ref_model, _, _ = _train(torch.optim.Adam, steps=2, lr=torch.tensor(0.01))
    for a, b in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert opt.param_groups[0]["foreach"] is None


# ----------------------------------------------------------------------------- pickle, copies
def _copied(how: str, opt):
    if how == "deepcopy":
        return copy.deepcopy(opt)
    if how == "pickle":
        return pickle.loads(pickle.dumps(opt))
    buffer = io.BytesIO()
    torch.save(opt, buffer)  # the whole object, as some training code does
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


def _copy_and_step(module, name: str, how: str):
    """``module.<name>`` (compat or torch.optim) stepped twice, copied by ``how``, then the original
    and the copy stepped twice more on the same gradients: ``(copy's params, original's params,
    copy's state dict, original's)``. Muon steps matrices, SparseAdam sparse gradients, LBFGS a
    closure, SophiaH given Hessian estimates."""
    gen = torch.Generator().manual_seed(0)
    shapes = [(4, 3), (3, 5)] if name == "Muon" else [(6, 3)] if name == "SparseAdam" else [(4, 3), (5,)]
    params = [torch.randn(s, generator=gen, requires_grad=True) for s in shapes]
    opt = getattr(module, name)(params)
    if name.endswith("ScheduleFree"):
        opt.train()

    def step(opt, i: int):
        ps = [p for group in opt.param_groups for p in group["params"]]
        g = torch.Generator().manual_seed(100 + i)
        grads = [torch.randn(p.shape, generator=g) for p in ps]

        def closure():
            opt.zero_grad()
            loss = sum(((p - 1) ** 2 * (j + 1)).sum() for j, p in enumerate(ps))
            loss.backward()
            return loss

        if name == "LBFGS":
            return opt.step(closure)
        for p, grad in zip(ps, grads):
            p.grad = grad.to_sparse() if name == "SparseAdam" else grad
        return opt.step(hessian=[grad.abs() for grad in grads]) if name == "SophiaH" else opt.step()

    for i in range(2):
        step(opt, i)
    twin = _copied(how, opt)
    assert type(twin) is type(opt)
    for i in range(2, 4):
        step(opt, i)
        step(twin, i)
    params_of = lambda o: [p for group in o.param_groups for p in group["params"]]  # noqa: E731
    return params_of(twin), params_of(opt), twin.state_dict(), opt.state_dict()


@pytest.mark.parametrize("how", ["deepcopy", "pickle", "torch.save"])
@pytest.mark.parametrize("name", [n for n in compat.__all__ if n not in ("FunctionalOptimizer", "TransformationOptimizer")])
def test_copied_optimizer_steps_on_as_the_original(name, how):
    """Every compat class survives ``copy.deepcopy``, ``pickle`` and ``torch.save`` of the whole
    object as torch.optim's twin does: the copy, stepped on the same gradients, equals the original
    bitwise, parameters and state dict; where torch's copy cannot step (LBFGS: its ``_params`` is
    not part of torch's pickled state), compat's fails the same way. (The classes built on
    ``TransformationOptimizer`` are made again by their constructor: a transformation is closures,
    which pickle cannot store.)"""
    torch_error = _error_of(lambda: _copy_and_step(torch.optim, name, how)) if hasattr(torch.optim, name) else None
    if torch_error is not None:
        assert _error_of(lambda: _copy_and_step(compat, name, how)) == torch_error
        return
    twin_params, params, twin_state, state = _copy_and_step(compat, name, how)
    assert all(torch.equal(a, b) for a, b in zip(twin_params, params))
    assert same_value(twin_state, state)
