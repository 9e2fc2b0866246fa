"""heavyball as a second reference, for the optimizers where it computes the same function as ours.

heavyball (https://github.com/HomebrewML/HeavyBall) writes its optimizers differently from torch
and the papers (see the README's heavyball table): its moments are EMAs with a *debiased* decay
``1 - (1 - b) / (1 - b^t)``, which store the bias-corrected moments themselves; its denominator is
``max(sqrt(v_hat), eps)``, not ``sqrt(v_hat) + eps``; it counts steps per param group; its
weight decay is decoupled. Where the functions still agree, the cases below say with which
flags (``eps=0`` makes the two denominators the same) and compare heavyball, our compat class
and our functional transformation step by step on the same params and grads.

Set up so that heavyball's numbers are what its math says, in the test's dtype:

* ``heavyball.utils.compile_mode = None`` runs its kernels eagerly (they are ``torch.compile``-d
  on first use otherwise; ``compile_step`` is off by default);
* ``storage_dtype`` is the params' dtype (heavyball keeps its state in float32 by default, also
  for float64 params);
* the default dtype is the test's dtype: heavyball builds the warmup-scaled lr, the debiased
  betas and the schedule-free weights from Python floats and int64 step tensors, i.e. as tensors
  of the *default* dtype (float32 unless set), and torch's NAdam (which compat follows) keeps its
  ``mu_product`` in the default dtype too;
* every parameter gets a gradient at every step (a zero one where ``_parity.grads_for_step`` has
  ``None``), except for SGD: with a skipped step, heavyball's debiased EMAs weigh the skipped
  parameter's history differently from both per-parameter (torch) and per-group
  (``schedulefree``, ``pytorch_optimizer``) bias correction.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import compat
import functional_optim as fo
from _parity import TOL, grads_for_step, make_params
from _reference_parity import _groups

heavyball = pytest.importorskip("heavyball")


@pytest.fixture(autouse=True)
def _eager_heavyball(monkeypatch):
    monkeypatch.setattr(heavyball.utils, "compile_mode", None)


def _every_param_steps(params, step):
    """``grads_for_step`` with its ``None`` gradient replaced by zeros (see the module docstring)."""
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads_for_step(params, step))]


def _run(heavy_cls, heavy_kwargs: dict, ours_cls, ours_kwargs: dict, make_tx, dtype, *, steps: int = 6,
         grad_fn=_every_param_steps, base=None, second_group=None, lr_schedule=None, tol=None):
    """``heavy_cls(**heavy_kwargs)``, ``ours_cls(**ours_kwargs)`` (a compat optimizer) and ``make_tx()``
    (functional, one group) on the same params and grads; params equal after every step.

    ``second_group`` (a dict of group keys both spell the same) puts the last two params in a
    second group of the two optimizers; the functional run then is skipped (``make_tx=None``).
    ``lr_schedule(step)`` sets every group's ``lr`` (and the functional ``lr``) before each step.
    ``tol`` overrides ``_parity.TOL[dtype]``. Returns the optimizers and params for more checks.
    """
    torch.set_default_dtype(dtype)  # conftest restores it
    base = make_params(dtype) if base is None else base
    heavy_p = [p.clone().requires_grad_() for p in base]
    our_p = [p.clone().requires_grad_() for p in base]
    heavy = heavy_cls(_groups(heavy_p, second_group), storage_dtype=str(dtype).removeprefix("torch."),
                      **heavy_kwargs)
    ours = ours_cls(_groups(our_p, second_group), **ours_kwargs)
    if hasattr(ours, "train"):  # schedule-free: compat refuses to step outside train mode
        ours.train()
    tx = make_tx() if make_tx is not None else None
    f_params = [p.clone() for p in base]
    f_state = tx.init(f_params) if tx is not None else None
    rtol, atol = TOL[dtype] if tol is None else tol
    for step in range(1, steps + 1):
        if lr_schedule is not None:
            for opt in (heavy, ours):
                for group in opt.param_groups:
                    group["lr"] = lr_schedule(step)
        grads = grad_fn(base, step)
        for ps in (heavy_p, our_p):
            for p, g in zip(ps, grads):
                p.grad = None if g is None else g.clone()
        heavy.step()
        ours.step()
        for i, (a, b) in enumerate(zip(our_p, heavy_p)):
            torch.testing.assert_close(a.detach(), b.detach(), rtol=rtol, atol=atol,
                                       msg=lambda m: f"compat, step {step}, param {i}: {m}")
        if tx is not None:
            hp = None if lr_schedule is None else fo.replace_hparams(tx.hparams, lr=lr_schedule(step))
            updates, f_state = tx.update([None if g is None else g.clone() for g in grads], f_state, f_params, hp)
            f_params = fo.apply_updates(f_params, updates)
            for i, (a, b) in enumerate(zip(f_params, heavy_p)):
                torch.testing.assert_close(a, b.detach(), rtol=rtol, atol=atol,
                                           msg=lambda m: f"functional, step {step}, param {i}: {m}")
    return SimpleNamespace(heavy=heavy, ours=ours, heavy_p=heavy_p, our_p=our_p, tx=tx, f_state=f_state,
                           f_params=f_params)


DTYPES = pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
MULTI_TENSOR = pytest.mark.parametrize("multi_tensor", [True, False], ids=["multi_tensor", "per_param"])
SECOND_GROUP = {"lr": 0.005, "weight_decay": 0.05}


# ---------------------------------------------------------------------------- AdamW
ADAMW_CASES = [
    {"lr": 0.01, "betas": (0.9, 0.99), "eps": 0.0, "weight_decay": 0.1},
    {"lr": 0.1, "betas": (0.5, 0.9), "eps": 0.0, "weight_decay": 0.0},
]


@DTYPES
@MULTI_TENSOR
@pytest.mark.parametrize("kwargs", ADAMW_CASES, ids=["wd", "no_wd"])
def test_adamw(kwargs, multi_tensor, dtype):
    """``heavyball.AdamW(eps=0)`` is ``torch.optim.AdamW(eps=0)``: bias-corrected moments, decoupled
    decay ``p (1 - lr wd)``. With ``eps > 0`` they differ (``max(sqrt(v_hat), eps)`` there)."""
    _run(heavyball.AdamW, dict(kwargs, multi_tensor=multi_tensor), compat.AdamW, kwargs,
         lambda: fo.adamw(**kwargs), dtype)


@pytest.mark.filterwarnings("ignore:Learning rate changed between steps")  # heavyball: "experimental"
def test_adamw_two_groups_and_lr_schedule():
    kwargs = ADAMW_CASES[0]
    _run(heavyball.AdamW, kwargs, compat.AdamW, kwargs, None, torch.float64, second_group=SECOND_GROUP)
    _run(heavyball.AdamW, kwargs, compat.AdamW, kwargs, lambda: fo.adamw(**kwargs), torch.float64,
         lr_schedule=lambda t: 0.02 / t)


def test_rmsprop_is_adamw_without_first_moment():
    """``heavyball.RMSprop`` is not ``torch.optim.RMSprop``: it bias-corrects the second moment and
    ignores ``betas[0]``, i.e. it is AdamW with ``betas=(0, b2)`` (and ``eps=0`` for the same
    denominator)."""
    heavy = {"lr": 0.01, "betas": (0.9, 0.99), "eps": 0.0, "weight_decay": 0.1}
    ours = dict(heavy, betas=(0.0, 0.99))
    for dtype in (torch.float64, torch.float32):
        _run(heavyball.RMSprop, heavy, compat.AdamW, ours, lambda: fo.adamw(**ours), dtype)


# ---------------------------------------------------------------------------- NAdam
NADAM_CASES = [
    {"lr": 0.01, "eps": 0.0},
    {"lr": 0.01, "betas": (0.8, 0.9), "eps": 0.0, "momentum_decay": 0.01},
    {"lr": 0.01, "eps": 0.0, "weight_decay": 0.1, "decoupled_weight_decay": True},
]


@DTYPES
@MULTI_TENSOR
@pytest.mark.parametrize("kwargs", NADAM_CASES, ids=["default", "betas_momentum_decay", "decoupled_wd"])
def test_nadam(kwargs, multi_tensor, dtype):
    """``heavyball.NAdam(eps=0)`` is ``torch.optim.NAdam(eps=0)`` without weight decay or with
    ``decoupled_weight_decay=True``; its L2 decay differs (see ``test_nadam_l2_decay_differs``)."""
    _run(heavyball.NAdam, dict(kwargs, multi_tensor=multi_tensor), compat.NAdam, kwargs,
         lambda: fo.nadam(**kwargs), dtype)


def test_nadam_two_groups():
    kwargs = NADAM_CASES[2]
    _run(heavyball.NAdam, kwargs, compat.NAdam, kwargs, None, torch.float64, second_group=SECOND_GROUP)


def test_nadam_l2_decay_differs():
    """The documented difference, pinned: heavyball's L2 path (``decoupled_weight_decay=False``)
    computes NAdam on ``g + wd p`` and then takes ``wd p`` back out of the step, so each step is
    torch's plus ``lr wd p``."""
    torch.set_default_dtype(torch.float64)
    p0 = make_params(torch.float64)[0]
    heavy_p, our_p = p0.clone().requires_grad_(), p0.clone().requires_grad_()
    kwargs = {"lr": 0.01, "eps": 0.0, "weight_decay": 0.1}
    heavy = heavyball.NAdam([heavy_p], storage_dtype="float64", **kwargs)
    ours = compat.NAdam([our_p], **kwargs)
    heavy_p.grad, our_p.grad = grads_for_step([p0], 1)[0], grads_for_step([p0], 1)[0]
    heavy.step()
    ours.step()
    torch.testing.assert_close(heavy_p.detach(), our_p.detach() + 0.01 * 0.1 * p0, rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------------- AdEMAMix
ADEMAMIX = {"lr": 0.01, "betas": (0.9, 0.999, 0.9999), "alpha": 5.0, "eps": 0.0, "weight_decay": 0.1}


def _fo_ademamix(kwargs, **extra):
    b1, b2, b3 = kwargs["betas"]
    return fo.ademamix(lr=kwargs["lr"], b1=b1, b2=b2, b3=b3, alpha=kwargs["alpha"], eps=kwargs["eps"],
                       weight_decay=kwargs["weight_decay"], weight_decouple=True, **extra)


@DTYPES
@MULTI_TENSOR
def test_ademamix(multi_tensor, dtype):
    """``heavyball.AdEMAMix(eps=0)`` (the paper's decoupled decay) is our AdEMAMix with
    ``weight_decouple=True, eps=0``: bias-corrected fast EMA and second moment, plain slow EMA."""
    _run(heavyball.AdEMAMix, dict(ADEMAMIX, multi_tensor=multi_tensor), compat.AdEMAMix,
         dict(ADEMAMIX, weight_decouple=True), lambda: _fo_ademamix(ADEMAMIX), dtype)


def test_ademamix_two_groups():
    _run(heavyball.AdEMAMix, ADEMAMIX, compat.AdEMAMix, dict(ADEMAMIX, weight_decouple=True), None,
         torch.float64, second_group=SECOND_GROUP)


def test_ademamix_warmup_up_to_heavyballs_log_epsilon():
    """heavyball's ``beta3_warmup = alpha_warmup = T`` is the paper's ``T_alpha_beta3 = T`` warmup
    (linear alpha; beta3 linear in half-life) except that it takes ``log(beta + 1e-8)``: a
    relative change of about ``1e-8 / (1 - beta3)`` in beta3's half-life, so the params agree to
    ~1e-8 here (a different schedule would differ by ~1e-3), hence ``rtol=1e-6``."""
    kwargs = dict(ADEMAMIX, weight_decay=0.0)
    _run(heavyball.AdEMAMix, dict(kwargs, beta3_warmup=4, alpha_warmup=4), compat.AdEMAMix,
         dict(kwargs, weight_decouple=True, t_alpha_beta3=4), lambda: _fo_ademamix(kwargs, t_alpha_beta3=4),
         torch.float64, steps=8, tol=(1e-6, 1e-9))


# ---------------------------------------------------------------------------- Schedule-Free AdamW
SF_CASES = [
    {"lr": 0.01, "betas": (0.9, 0.999), "eps": 0.0, "weight_decay": 0.1},
    {"lr": 0.01, "betas": (0.8, 0.99), "eps": 0.0, "r": 0.5, "weight_lr_power": 1.0},
]


@DTYPES
@MULTI_TENSOR
@pytest.mark.parametrize("kwargs", SF_CASES, ids=["wd", "r_power"])
def test_schedule_free_adamw(kwargs, multi_tensor, dtype):
    """``heavyball.SFAdamW(eps=0)`` without warmup is ``schedulefree.AdamWScheduleFree(eps=0)``;
    the evaluation point ``x`` (``eval()``) agrees too. heavyball's warmup (``lr t / max(t, T + 1)``)
    and its weights from the current lr (not the largest so far) differ."""
    run = _run(heavyball.SFAdamW, dict(kwargs, multi_tensor=multi_tensor), compat.AdamWScheduleFree, kwargs,
               lambda: fo.schedule_free_adamw(**kwargs), dtype)
    rtol, atol = TOL[dtype]
    eval_params = fo.schedule_free_eval_params(run.f_state, run.f_params)
    run.heavy.eval()
    run.ours.eval()
    for a, b, c in zip(run.our_p, eval_params, run.heavy_p):
        torch.testing.assert_close(a.detach(), c.detach(), rtol=rtol, atol=atol)
        torch.testing.assert_close(b, c.detach(), rtol=rtol, atol=atol)


def test_schedule_free_adamw_two_groups():
    kwargs = SF_CASES[0]
    _run(heavyball.SFAdamW, kwargs, compat.AdamWScheduleFree, kwargs, None, torch.float64,
         second_group=SECOND_GROUP)


# ---------------------------------------------------------------------------- SGD
@DTYPES
@MULTI_TENSOR
def test_sgd_momentum(multi_tensor, dtype):
    """``heavyball.SGD(beta)`` without weight decay is ``torch.optim.SGD(momentum=beta)``
    (``b <- beta b + g``, dampening 0), also with ``None`` grads (no step count in the math)."""
    _run(heavyball.SGD, {"lr": 0.01, "beta": 0.9, "multi_tensor": multi_tensor}, compat.SGD,
         {"lr": 0.01, "momentum": 0.9}, lambda: fo.sgd(lr=0.01, momentum=0.9), dtype, grad_fn=grads_for_step)
    _run(heavyball.SGD, {"lr": 0.01, "beta": 0.9}, compat.SGD, {"lr": 0.01, "momentum": 0.9}, None, dtype,
         grad_fn=grads_for_step, second_group={"lr": 0.005})


def _sgdw(lr, momentum, weight_decay):
    return fo.chain(fo.trace(momentum), fo.add_decayed_weights(weight_decay), fo.scale_by_learning_rate(lr))


@DTYPES
def test_sgd_with_weight_decay_is_sgdw(dtype):
    """With ``weight_decay`` heavyball's SGD decays decoupled (``p (1 - lr wd) - lr b``), not torch's
    L2 (``g + wd p`` into the buffer): that is ``chain(trace(beta), add_decayed_weights(wd),
    scale_by_learning_rate(lr))``, here also as a ``TransformationOptimizer``."""
    def ours(groups, **kwargs):
        return compat.TransformationOptimizer(groups, _sgdw(0.01, 0.9, 0.1), **kwargs)

    _run(heavyball.SGD, {"lr": 0.01, "beta": 0.9, "weight_decay": 0.1}, ours, {}, lambda: _sgdw(0.01, 0.9, 0.1),
         dtype, grad_fn=grads_for_step)
    _run(heavyball.SGD, {"lr": 0.01, "beta": 0.9, "weight_decay": 0.1}, ours, {}, None, dtype,
         grad_fn=grads_for_step, second_group={"lr": 0.005, "weight_decay": 0.05})


# ---------------------------------------------------------------------------- SOAP
def _soap_params(dtype):
    """Square matrices and a matrix with one unrotated dimension (over ``max_precondition_dim``)
    and a vector: every rotated Kronecker factor has full rank from its first gradient on (a
    rank-deficient one has a null space whose basis either ``eigh`` may choose, and Adam in the
    eigenbasis is not invariant to that choice)."""
    g = torch.Generator().manual_seed(0)
    return [torch.randn(*shape, generator=g, dtype=dtype) for shape in ((5, 5), (3, 12), (3, 3), (4,))]


def _nonzero_grads(params, step):
    """Random gradients, none zero: with ``eps=0`` a zero first SOAP gradient (its first step is the
    bases' initialisation only, so ``grads_for_step``'s zero one at step 2 is one) divides 0 by 0."""
    g = torch.Generator().manual_seed(step)
    return [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params]


def test_soap_with_every_step_refresh():
    """``heavyball.SOAP`` is ``pytorch_optimizer.SOAP`` (our SOAP) only with ``precondition_frequency=1``
    (heavyball refreshes the bases at steps f, 2f, ... counting the skipped first step; the
    reference at steps 1 + f, 1 + 2f, ...), ``eps=0``, ``weight_decay=0`` (the reference decays after
    the step), ``merge_dims=False`` and full-rank factors. Its power iteration adds
    ``1e-8 max|lambda| Q`` to ``GG Q`` before the QR (heavyball's "floor"), which moves the bases by
    ~1e-8 relative: hence ``rtol=1e-6`` (any other difference in the math shows at ~1e-3)."""
    common = {"lr": 0.01, "betas": (0.9, 0.95), "shampoo_beta": 0.95, "eps": 0.0, "weight_decay": 0.0,
              "precondition_frequency": 1, "merge_dims": False}
    heavy = dict(common, max_precond_dim=8)
    ours = dict(common, max_precondition_dim=8)
    for multi_tensor in (True, False):
        _run(heavyball.SOAP, dict(heavy, multi_tensor=multi_tensor), compat.SOAP, ours,
             lambda: fo.soap(lr=0.01, b1=0.9, b2=0.95, shampoo_beta=0.95, eps=0.0, weight_decay=0.0,
                             precondition_frequency=1, max_precondition_dim=8),
             torch.float64, steps=8, base=_soap_params(torch.float64), grad_fn=_nonzero_grads, tol=(1e-6, 1e-9))
