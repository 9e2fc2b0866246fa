"""ASGD: functional and compat against torch.optim.ASGD, every flag and implementation.

The shared suite (:func:`test_radam.standard_tests`) runs here with ASGD's flags; see
``test_radam.py`` for what it checks. ``t0=3`` starts the averaging within the runs (``mu < 1``,
torch's for-loop then adds instead of copying), ``t0=1e6`` keeps ``mu = 1`` throughout.
"""

import pytest
import torch

import functional_optim as fo
from compat.asgd import ASGD
from test_radam import Spec, standard_tests

# torch's differentiable mode steps non-leaf params, whose .grad access warns
pytestmark = pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf")

SPEC = Spec(
    torch_cls=torch.optim.ASGD,
    compat_cls=ASGD,
    factory=fo.asgd,
    hparams=dict(lr=0.05, lambd=0.1, alpha=0.7),
    grid=dict(t0=[1e6, 3.0], weight_decay=[0.0, 0.1], maximize=[False, True]),
    bad=[dict(lr=-1.0), dict(lr=torch.tensor(-0.5)), dict(lr=torch.tensor([0.1, 0.2])), dict(weight_decay=-0.5),
         dict(lr=-1.0, weight_decay=-1.0)],
    scalar_keys=("eta", "mu"),
)
globals().update(standard_tests(SPEC))


def test_eta_and_mu_follow_their_schedules():
    """``eta = lr / (1 + lambd lr t)^alpha`` and ``mu = 1 / max(1, t - t0)`` after step t, as 0-d
    tensors of torch's scalar dtype on the parameter's device; ``ax`` is the parameter while mu = 1."""
    lr, lambd, alpha, t0 = 0.05, 0.1, 0.7, 2.0
    tx = fo.asgd(lr=lr, lambd=lambd, alpha=alpha, t0=t0)
    params = {"w": torch.randn(3, dtype=torch.float64)}
    state = tx.init(params)
    assert float(state.eta["w"]) == torch.tensor(lr).item() and float(state.mu["w"]) == 1.0
    for t in range(1, 6):
        updates, state = tx.update({"w": torch.randn(3, dtype=torch.float64)}, state, params)
        params = fo.apply_updates(params, updates)
        assert state.eta["w"].dtype == torch.float32 and state.eta["w"].dim() == 0
        assert float(state.eta["w"]) == torch.tensor(lr / (1 + lambd * lr * t) ** alpha).item()
        assert float(state.mu["w"]) == torch.tensor(1 / max(1, t - t0)).item()
        if t <= t0 + 1:  # the average used mu = 1 so far
            assert torch.equal(state.ax["w"], params["w"])
