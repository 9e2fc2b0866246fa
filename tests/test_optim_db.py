"""PyTorch's own optimizer test database, run side by side for every compat class torch has.

``torch.testing._internal.common_optimizers.optim_db`` lists, for each of torch.optim's
optimizers, the configurations torch's own tests step (``optim_inputs_func``) and the inputs that
must fail (``optim_error_inputs_func``, at construction or at the step). For each optimizer here:

* every CPU configuration, float32 and float64 (and complex64 and complex128 where torch's
  database marks the optimizer ``supports_complex``), with torch's default implementation and, where
  the class has one, ``foreach=True``: four steps of ``compat.X`` and ``torch.optim.X`` on the same
  gradients give bitwise equal parameters and equal state dicts (or the same error where torch
  refuses the configuration on this device);
* every error input: the same outcome (exception type and message, or none).

SparseAdam steps sparse gradients, LBFGS a closure over a fixed quadratic, Muon matrices only.
"""

from __future__ import annotations

import copy
import inspect
import warnings

import pytest
import torch

import compat
from _parity import same_value

try:
    from torch.testing._internal.common_optimizers import OptimizerErrorEnum, optim_db
except ImportError:  # pragma: no cover - depends on the environment
    optim_db, OptimizerErrorEnum = [], None

INFOS = {info.optim_cls.__name__: info for info in optim_db if hasattr(compat, info.optim_cls.__name__)}
STEPS = 4


def _params(name: str, dtype: torch.dtype) -> list:
    gen = torch.Generator().manual_seed(0)
    shapes = [(4, 3), (3, 5)] if name == "Muon" else [(4, 3), (5,), ()]
    return [torch.randn(s, generator=gen, dtype=dtype) for s in shapes]


def _square(x: torch.Tensor) -> torch.Tensor:
    """``|x|^2``: a real objective for complex parameters too."""
    return (x * x.conj()).real if x.is_complex() else x**2


def _dtypes(info) -> tuple:
    """float32 and float64, and complex64 and complex128 where torch's database says the optimizer
    supports complex parameters (``OptimizerInfo.supports_complex``)."""
    return (torch.float32, torch.float64) + ((torch.complex64, torch.complex128) if info.supports_complex else ())


def _run(cls, name: str, kwargs: dict, dtype: torch.dtype):
    """``("ok", params, state_dict)`` after :data:`STEPS` steps, or ``("raised", type, message)``."""
    params = [p.clone().requires_grad_() for p in _params(name, dtype)]
    gen = torch.Generator().manual_seed(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            opt = cls(params, **copy.deepcopy(kwargs))
            for _ in range(STEPS):
                if name == "LBFGS":
                    # a quadratic with its minimum at 1, or its maximum there for ``maximize``
                    # (which would otherwise climb to inf and NaN, where no comparison says much)
                    sign = -1 if kwargs.get("maximize") else 1

                    def closure():
                        opt.zero_grad()
                        loss = sign * sum((_square(p - 1) * (i + 1)).sum() for i, p in enumerate(params))
                        loss.backward()
                        return loss
                    opt.step(closure)
                    continue
                for p in params:
                    grad = torch.randn(p.shape, generator=gen, dtype=dtype)
                    p.grad = grad.to_sparse() if name == "SparseAdam" else grad
                opt.step()
        except Exception as e:  # noqa: BLE001 - any exception is an outcome to compare
            return ("raised", type(e), str(e))
    return ("ok", [p.detach().clone() for p in params], opt.state_dict())


def _configs(info, dtype: torch.dtype) -> list:
    if "dtype" in inspect.signature(info.optim_inputs_func).parameters:
        return list(info.optim_inputs_func(device="cpu", dtype=dtype))
    return list(info.optim_inputs_func(device="cpu"))


requires_optim_db = pytest.mark.skipif(not INFOS, reason="torch.testing._internal.common_optimizers cannot be "
                                       "imported (pip install expecttest)")


@requires_optim_db
def test_every_torch_optimizer_is_in_the_database():
    assert set(INFOS) == {"Adam", "AdamW", "Adagrad", "Adadelta", "NAdam", "Adafactor", "SGD", "RMSprop", "RAdam",
                          "Adamax", "ASGD", "Rprop", "SparseAdam", "LBFGS", "Muon"} & set(dir(torch.optim))


@requires_optim_db
@pytest.mark.parametrize("name", sorted(INFOS))
def test_optim_db_configurations_step_bitwise_as_torch(name):
    info = INFOS[name]
    has_foreach = "foreach" in inspect.signature(info.optim_cls).parameters
    compared = 0
    for dtype in _dtypes(info):
        for config in _configs(info, dtype):
            variants = [config.kwargs]
            if has_foreach and "foreach" not in config.kwargs and not config.kwargs.get("fused"):
                variants.append(dict(config.kwargs, foreach=True))
            for kwargs in variants:
                expected = _run(info.optim_cls, name, kwargs, dtype)
                got = _run(getattr(compat, name), name, kwargs, dtype)
                where = f"{name} {config.desc} {kwargs} {dtype}"
                assert got[0] == expected[0], (where, got[:3] if got[0] == "raised" else "ok", expected)
                if expected[0] == "raised":
                    assert got == expected, where
                    continue
                assert all(torch.equal(a, b) for a, b in zip(got[1], expected[1])), where
                assert same_value(got[2], expected[2]), where
                compared += 1
    assert compared > 0


@requires_optim_db
@pytest.mark.parametrize("name", sorted(INFOS))
def test_optim_db_error_inputs_have_torchs_outcome(name):
    info = INFOS[name]

    def outcome(cls, error):
        case = error.optimizer_error_input
        params = copy.deepcopy(case.params) if case.params is not None else [torch.randn(2, 2, requires_grad=True)]
        try:
            with warnings.catch_warnings():  # (torch's warning for the duplicate-parameter inputs)
                warnings.simplefilter("ignore")
                opt = cls(params, **case.kwargs)
            if error.error_on == OptimizerErrorEnum.STEP_ERROR:
                for group in opt.param_groups:
                    for p in group["params"]:
                        if p.grad is None:
                            p.grad = torch.ones_like(p).to_sparse() if name == "SparseAdam" else torch.ones_like(p)
                if name == "LBFGS":
                    opt.step(lambda: sum((p ** 2).sum() for g in opt.param_groups for p in g["params"]))
                else:
                    opt.step()
        except Exception as e:  # noqa: BLE001 - any exception is an outcome to compare
            return ("raised", type(e), str(e))
        return ("ok",)

    errors = list(info.optim_error_inputs_func(device="cpu", dtype=torch.float32))
    for error in errors:
        expected = outcome(info.optim_cls, error)
        assert outcome(getattr(compat, name), error) == expected, error.optimizer_error_input.desc
