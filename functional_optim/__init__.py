"""functional_optim: functional, stateless optimizers for PyTorch in the style of optax.

``opt = functional_optim.adam(lr=1e-3)``; ``state = opt.init(params)``;
``updates, state = opt.update(grads, state, params)``; ``params = apply_updates(params, updates)``.
"""

from .adagrad import AdagradHParams, AdagradState, AdagradStatic, adagrad
from .adadelta import AdadeltaHParams, AdadeltaState, AdadeltaStatic, adadelta
from .adam import AdamHParams, AdamState, AdamStatic, adam, adamw
from .nadam import NAdamHParams, NAdamState, NAdamStatic, nadam
from .base import GradientTransformation, apply_updates

__all__ = [
    "GradientTransformation",
    "apply_updates",
    "adam",
    "adamw",
    "AdamHParams",
    "AdamState",
    "AdamStatic",
    "adadelta",
    "AdadeltaHParams",
    "AdadeltaState",
    "AdadeltaStatic",
    "adagrad",
    "AdagradHParams",
    "AdagradState",
    "AdagradStatic",
    "nadam",
    "NAdamHParams",
    "NAdamState",
    "NAdamStatic",
]
__version__ = "0.1.0"
