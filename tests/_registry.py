"""Every optimizer once: its functional factory, hparams record, torch twin and compat class."""

from typing import Any, Callable, NamedTuple

import torch

import compat
import functional_optim as fo


class Entry(NamedTuple):
    name: str
    factory: Callable[..., fo.GradientTransformation]
    hparams_type: type
    torch_cls: type
    compat_cls: type
    kwargs: dict  # torch-style keyword arguments used in the tests
    tensor_hparams: Callable[[int], dict]  # step -> hparams fields as 0-d tensors (a schedule)


def _t(x: float) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


OPTIMIZERS: list[Entry] = [
    Entry("adam", fo.adam, fo.AdamHParams, torch.optim.Adam, compat.Adam,
          dict(lr=0.05, amsgrad=True, weight_decay=0.01),
          lambda s: dict(lr=_t(0.05 / (1 + s)), betas=(_t(0.9), _t(0.99)), weight_decay=_t(0.01 * s))),
    Entry("adamw", fo.adamw, fo.AdamHParams, torch.optim.AdamW, compat.AdamW,
          dict(lr=0.05),
          lambda s: dict(lr=_t(0.05 / (1 + s)), weight_decay=_t(0.01))),
    Entry("adadelta", fo.adadelta, fo.AdadeltaHParams, torch.optim.Adadelta, compat.Adadelta,
          dict(lr=0.5, weight_decay=0.01),
          lambda s: dict(lr=_t(0.5 / (1 + s)), rho=_t(0.9 - 0.01 * s))),
    Entry("adafactor", fo.adafactor, fo.AdafactorHParams, torch.optim.Adafactor, compat.Adafactor,
          dict(lr=0.05, weight_decay=0.01),
          lambda s: dict(lr=_t(0.05 / (1 + s)), beta2_decay=_t(-0.8), weight_decay=_t(0.01 * s))),
    Entry("adagrad", fo.adagrad, fo.AdagradHParams, torch.optim.Adagrad, compat.Adagrad,
          dict(lr=0.1, lr_decay=0.01, weight_decay=0.01, initial_accumulator_value=0.1),
          lambda s: dict(lr=_t(0.1 / (1 + s)), lr_decay=_t(0.01), weight_decay=_t(0.01 * s))),
    Entry("nadam", fo.nadam, fo.NAdamHParams, torch.optim.NAdam, compat.NAdam,
          dict(lr=0.05, weight_decay=0.01, decoupled_weight_decay=True),
          lambda s: dict(lr=_t(0.05 / (1 + s)), weight_decay=_t(0.01 * s))),
    Entry("sgd", fo.sgd, fo.SGDHParams, torch.optim.SGD, compat.SGD,
          dict(lr=0.05, momentum=0.9, weight_decay=0.01),  # nesterov, dampening: tests/test_sgd.py
          lambda s: dict(lr=_t(0.05 / (1 + s)), momentum=_t(0.9 - 0.1 * s), weight_decay=_t(0.01 * s))),
    Entry("rmsprop", fo.rmsprop, fo.RMSpropHParams, torch.optim.RMSprop, compat.RMSprop,
          dict(lr=0.01, momentum=0.5, centered=True, weight_decay=0.01),
          lambda s: dict(lr=_t(0.01 / (1 + s)), alpha=_t(0.99 - 0.01 * s), momentum=_t(0.5), weight_decay=_t(0.01 * s))),
    Entry("radam", fo.radam, fo.RAdamHParams, torch.optim.RAdam, compat.RAdam,
          dict(lr=0.05, weight_decay=0.01, decoupled_weight_decay=True),
          lambda s: dict(lr=_t(0.05 / (1 + s)), betas=(_t(0.9), _t(0.99)), weight_decay=_t(0.01 * s))),
    Entry("adamax", fo.adamax, fo.AdamaxHParams, torch.optim.Adamax, compat.Adamax,
          dict(lr=0.05, weight_decay=0.01),
          lambda s: dict(lr=_t(0.05 / (1 + s)), betas=(_t(0.9), _t(0.99)), weight_decay=_t(0.01 * s))),
    Entry("asgd", fo.asgd, fo.ASGDHParams, torch.optim.ASGD, compat.ASGD,
          dict(lr=0.05, lambd=0.01, t0=1.0, weight_decay=0.01),  # t0=1: the average moves from step 3 on
          lambda s: dict(lr=_t(0.05 / (1 + s)), lambd=_t(0.01), alpha=_t(0.75), t0=_t(1.0), weight_decay=_t(0.01 * s))),
    Entry("rprop", fo.rprop, fo.RpropHParams, torch.optim.Rprop, compat.Rprop,
          dict(lr=0.05, step_sizes=(1e-4, 1.0)),
          lambda s: dict(etas=(_t(0.5), _t(1.2 + 0.1 * s)), step_sizes=(_t(1e-4), _t(1.0)))),
]

IDS = [e.name for e in OPTIMIZERS]


def functional_kwargs(entry: Entry) -> dict[str, Any]:
    return dict(entry.kwargs)
