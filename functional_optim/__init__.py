"""functional_optim: functional, stateless optimizers for PyTorch in the style of optax.

``opt = functional_optim.adam(lr=1e-3)``; ``state = opt.init(params)``;
``updates, state = opt.update(grads, state, params)``; ``params = apply_updates(params, updates)``.
"""

from .adafactor import AdafactorHParams, AdafactorState, AdafactorStatic, adafactor
from .adabelief import ScaleByBeliefHParams, ScaleByBeliefState, adabelief, scale_by_belief
from .adopt import ScaleByAdoptHParams, ScaleByAdoptState, adopt, scale_by_adopt
from .adagrad import AdagradHParams, AdagradState, AdagradStatic, adagrad
from .adadelta import AdadeltaHParams, AdadeltaState, AdadeltaStatic, adadelta
from .adam import AdamHParams, AdamState, AdamStatic, adam, adamw
from .nadam import NAdamHParams, NAdamState, NAdamStatic, nadam
from .adamax import AdamaxHParams, AdamaxState, AdamaxStatic, adamax
from .asgd import ASGDHParams, ASGDState, ASGDStatic, asgd
from .radam import RAdamHParams, RAdamState, RAdamStatic, radam
from .rprop import RpropHParams, RpropState, RpropStatic, rprop
from .rmsprop import RMSpropHParams, RMSpropState, RMSpropStatic, rmsprop
from .sgd import SGDHParams, SGDState, SGDStatic, sgd
from .muon import MuonHParams, MuonState, MuonStatic, muon, newton_schulz
from .sparse_adam import SparseAdamHParams, SparseAdamState, SparseAdamStatic, sparse_adam
from .lbfgs import LBFGSHParams, LBFGSState, LBFGSStatic, lbfgs
from .lion import ScaleByLionHParams, ScaleByLionState, lion, scale_by_lion
from .schedule_free import (
    ScheduleFreeAdamWHParams,
    ScheduleFreeHParams,
    ScheduleFreeSGDHParams,
    ScheduleFreeState,
    schedule_free,
    schedule_free_adamw,
    schedule_free_eval_params,
    schedule_free_sgd,
    schedule_free_train_params,
)
from . import schedules
from .accumulate import MultiSteps, MultiStepsState
from .base import GradientTransformation, apply_updates
from .combine import (
    MaskedNode,
    MaskedState,
    PartitionState,
    by_name,
    chain,
    leaf_names,
    masked,
    named_chain,
    partition,
    tree_get,
    tree_set,
)
from .flat import FlatLayout
from .inplace import step_
from .inject import InjectHyperparamsState, inject_hyperparams, named_hparams, replace_hparams
from .schedules import (
    constant_schedule,
    cosine_decay_schedule,
    cosine_onecycle_schedule,
    exponential_decay,
    join_schedules,
    linear_schedule,
    piecewise_constant_schedule,
    piecewise_interpolate_schedule,
    polynomial_schedule,
    warmup_cosine_decay_schedule,
)
from .transforms import (
    AddDecayedWeightsHParams,
    ApplyIfFiniteState,
    ClipByGlobalNormHParams,
    ClipHParams,
    EmptyState,
    ScaleByLearningRateHParams,
    ScaleHParams,
    TraceHParams,
    TraceState,
    ZeroNansState,
    add_decayed_weights,
    apply_if_finite,
    clip,
    clip_by_global_norm,
    flip_sign,
    global_norm,
    scale,
    scale_by_learning_rate,
    scale_by_sign,
    set_to_zero,
    trace,
    zero_nans,
)
from .tree import EMPTY, Empty
from ._autograd import AutogradChainWarning
from ._serialization import register_safe_globals as _register_safe_globals

_register_safe_globals()  # every state type loads with torch.load(weights_only=True)

__all__ = [
    "adabelief",
    "scale_by_belief",
    "ScaleByBeliefHParams",
    "ScaleByBeliefState",
    "adopt",
    "scale_by_adopt",
    "ScaleByAdoptHParams",
    "ScaleByAdoptState",
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
    "adamax",
    "AdamaxHParams",
    "AdamaxState",
    "AdamaxStatic",
    "asgd",
    "ASGDHParams",
    "ASGDState",
    "ASGDStatic",
    "radam",
    "RAdamHParams",
    "RAdamState",
    "RAdamStatic",
    "rprop",
    "RpropHParams",
    "RpropState",
    "RpropStatic",
    "rmsprop",
    "RMSpropHParams",
    "RMSpropState",
    "RMSpropStatic",
    "sgd",
    "SGDHParams",
    "SGDState",
    "SGDStatic",
    "muon",
    "MuonHParams",
    "MuonState",
    "MuonStatic",
    "newton_schulz",
    "sparse_adam",
    "SparseAdamHParams",
    "SparseAdamState",
    "SparseAdamStatic",
    "lbfgs",
    "LBFGSHParams",
    "LBFGSState",
    "LBFGSStatic",
    "adafactor",
    "AdafactorHParams",
    "AdafactorState",
    "AdafactorStatic",
    "schedules",
    "MultiSteps",
    "MultiStepsState",
    "MaskedNode",
    "MaskedState",
    "PartitionState",
    "by_name",
    "chain",
    "leaf_names",
    "masked",
    "named_chain",
    "partition",
    "tree_get",
    "tree_set",
    "InjectHyperparamsState",
    "inject_hyperparams",
    "named_hparams",
    "replace_hparams",
    "constant_schedule",
    "cosine_decay_schedule",
    "cosine_onecycle_schedule",
    "exponential_decay",
    "join_schedules",
    "linear_schedule",
    "piecewise_constant_schedule",
    "piecewise_interpolate_schedule",
    "polynomial_schedule",
    "warmup_cosine_decay_schedule",
    "AddDecayedWeightsHParams",
    "ApplyIfFiniteState",
    "ClipByGlobalNormHParams",
    "ClipHParams",
    "EmptyState",
    "ScaleByLearningRateHParams",
    "ScaleHParams",
    "TraceHParams",
    "TraceState",
    "ZeroNansState",
    "add_decayed_weights",
    "apply_if_finite",
    "clip",
    "clip_by_global_norm",
    "flip_sign",
    "global_norm",
    "scale",
    "scale_by_learning_rate",
    "scale_by_sign",
    "set_to_zero",
    "trace",
    "zero_nans",
    "lion",
    "scale_by_lion",
    "ScaleByLionHParams",
    "ScaleByLionState",
    "schedule_free",
    "schedule_free_adamw",
    "schedule_free_sgd",
    "schedule_free_eval_params",
    "schedule_free_train_params",
    "ScheduleFreeHParams",
    "ScheduleFreeState",
    "ScheduleFreeAdamWHParams",
    "ScheduleFreeSGDHParams",
    "EMPTY",
    "FlatLayout",
    "step_",
    "Empty",
    "AutogradChainWarning",
]
__version__ = "0.1.0"
