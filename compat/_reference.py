"""A ``TransformationOptimizer`` whose param groups use a reference package's keys.

``pytorch_optimizer.AdaBelief(params, lr, betas, weight_decay, weight_decouple, ...)`` keeps
``betas`` (a tuple), ``eps``, flags ... in each param group. The compat classes built on
:class:`ReferenceOptimizer` keep exactly those group keys and defaults (so schedulers, param
group dicts and ``state_dict()["param_groups"]`` look like the reference's) and translate a
group into the transformation's hyperparameters (``b1``, ``b2``, ``eps_root`` ...) at each step.

Flags that change the transformation's structure (``weight_decouple``, ``ams_bound`` ...) are
fixed at construction: a param group that sets another value is refused with ``ValueError``.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from torch.optim.optimizer import Optimizer, ParamsT

from functional_optim import _validate
from functional_optim.base import GradientTransformation
from functional_optim.inject import replace_hparams

from .transformation import TransformationOptimizer

__all__ = ["ReferenceOptimizer"]


class ReferenceOptimizer(TransformationOptimizer):
    """``TransformationOptimizer`` with reference group keys.

    Args:
        params: parameters or param groups.
        transformation: the functional optimizer (its static flags fixed).
        defaults: the reference's group defaults (``{"lr": 1e-3, "betas": (0.9, 0.999), ...}``).
        translate: ``group -> {hparam field name: value}`` for ``replace_hparams``.
        static_keys: group keys whose value must stay the constructor's (structure flags).
    """

    def __init__(self, params: ParamsT, transformation: GradientTransformation, defaults: Mapping[str, Any],
                 translate: Callable[[dict], dict], static_keys: Sequence[str] = ()) -> None:
        if not isinstance(transformation, GradientTransformation):
            raise TypeError(f"transformation must be a GradientTransformation, got {type(transformation).__name__}")
        self.transformation = transformation
        self._translate = translate
        self._static = {k: defaults[k] for k in static_keys}
        self._hparam_names = ()
        self._layouts = {}
        Optimizer.__init__(self, params, dict(defaults))

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        for key, value in self._static.items():
            if group.get(key, value) != value:
                raise ValueError(f"{type(self).__name__}: a param group cannot change {key!r} "
                                 f"({group[key]!r}, the optimizer was built with {value!r})")

    def _hparams(self, group: dict) -> Any:
        values = {}
        for name, v in self._translate(group).items():
            values[name] = tuple(map(_validate.squeeze_scalar, v)) if isinstance(v, tuple) else _validate.squeeze_scalar(v)
        return replace_hparams(self.transformation.hparams, values)


def check_lr(lr: Any) -> None:
    """``pytorch_optimizer``'s learning-rate check (its ``NegativeLRError`` message, as a ``ValueError``)."""
    if lr is not None and lr < 0.0:
        raise ValueError(f"learning rate must be positive. ({lr} > 0)")


def check_extra(name: str, kwargs: Mapping[str, Any], supported: Sequence[str] = ()) -> None:
    """``pytorch_optimizer`` classes take ``**kwargs`` as extra group keys, some of which switch on
    variants (``adanorm``, ``cautious``, ``adam_debias`` ...). Those not reproduced are refused."""
    for key, value in kwargs.items():
        if key not in supported and value:
            raise ValueError(f"{name}: {key}={value!r} is not supported by this compat class")
