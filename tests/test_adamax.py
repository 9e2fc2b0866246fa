"""Adamax: functional and compat against torch.optim.Adamax, every flag and implementation.

The shared suite (:func:`test_radam.standard_tests`) runs here with Adamax's flags; see
``test_radam.py`` for what it checks.
"""

import pytest
import torch

import functional_optim as fo
from compat.adamax import Adamax
from test_radam import Spec, run_side_by_side, standard_tests

# torch's differentiable mode steps non-leaf params, whose .grad access warns
pytestmark = pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf")

SPEC = Spec(
    torch_cls=torch.optim.Adamax,
    compat_cls=Adamax,
    factory=fo.adamax,
    hparams=dict(lr=0.05, betas=(0.8, 0.9), eps=1e-6),
    grid=dict(weight_decay=[0.0, 0.1], maximize=[False, True]),
    bad=[dict(lr=-1.0), dict(lr=torch.tensor(-0.5)), dict(lr=torch.tensor([0.1, 0.2])), dict(eps=-1e-6),
         dict(betas=(1.0, 0.9)), dict(betas=(0.9, 1.0)), dict(weight_decay=-0.1),
         dict(lr=-1.0, eps=-1.0), dict(betas=(-0.1, 2.0), weight_decay=-1.0)],
    # torch's addcdiv_ saves exp_avg, which its next step's lerp_ changes: one step can be differentiated
    differentiable_steps=1,
)
globals().update(standard_tests(SPEC))


def test_zero_gradients_keep_the_infinity_norm_at_eps():
    """A parameter whose gradients are all zero: ``u = max(beta2 u, eps)`` stays ``eps``, the step is 0."""
    run_side_by_side(SPEC, SPEC.kwargs("forloop"), torch.float64, steps=3)
    tx = fo.adamax(**SPEC.hparams)
    params = {"w": torch.ones(3, dtype=torch.float64)}
    state = tx.init(params)
    for _ in range(3):
        updates, state = tx.update({"w": torch.zeros(3, dtype=torch.float64)}, state, params)
        assert torch.equal(updates["w"], torch.zeros(3, dtype=torch.float64))
    assert torch.equal(state.exp_inf["w"], torch.full((3,), 1e-6, dtype=torch.float64))
