"""torch.optim-compatible optimizers backed by ``functional_optim``.

``from compat import Adam`` is a drop-in for ``torch.optim.Adam``: same constructor, defaults,
errors, ``param_groups``, ``state_dict`` layout, hooks, schedulers and implementations.
"""

from .adadelta import Adadelta
from .adabelief import AdaBelief
from .adopt import ADOPT
from .ademamix import AdEMAMix
from .adan import Adan
from .adafactor import Adafactor
from .adagrad import Adagrad
from .adam import Adam, AdamW
from .adamax import Adamax
from .asgd import ASGD
from .muon import Muon
from .muon_adamw import MuonWithAdamW
from .sparse_adam import SparseAdam
from .lbfgs import LBFGS
from .lamb import Lamb
from .lars import Lars
from .lion import Lion
from .prodigy import Prodigy
from .schedule_free import AdamWScheduleFree, SGDScheduleFree
from .soap import SOAP
from .sophia import SophiaH
from .nadam import NAdam
from .radam import RAdam
from .rprop import Rprop
from .rmsprop import RMSprop
from .sgd import SGD
from .optimizer import FunctionalOptimizer
from .transformation import TransformationOptimizer

__all__ = ["AdaBelief", "ADOPT", "AdEMAMix", "Adan", "Adadelta", "Adafactor", "Adagrad", "Adam", "AdamW", "NAdam", "RAdam", "Adamax", "ASGD", "Rprop", "RMSprop", "SGD", "Muon", "MuonWithAdamW", "SparseAdam", "LBFGS", "Lamb", "Lars", "Lion", "Prodigy", "SOAP", "AdamWScheduleFree", "SGDScheduleFree", "SophiaH", "FunctionalOptimizer", "TransformationOptimizer"]
