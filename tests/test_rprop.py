"""Rprop: functional and compat against torch.optim.Rprop, every flag and implementation.

The shared suite (:func:`test_radam.standard_tests`) runs here with Rprop's flags; see
``test_radam.py`` for what it checks. The generated gradients change sign between steps, keep it
and are zero (step 3), so every case of the sign rule is taken.
"""

import pytest
import torch

import functional_optim as fo
from compat.rprop import Rprop
from test_radam import Spec, standard_tests

# torch's differentiable mode steps non-leaf params, whose .grad access warns
pytestmark = pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf")

SPEC = Spec(
    torch_cls=torch.optim.Rprop,
    compat_cls=Rprop,
    factory=fo.rprop,
    hparams=dict(lr=0.05),
    # (1e-3, 0.2) makes both clamps bind within the runs
    grid=dict(etas=[(0.5, 1.2), (0.3, 1.7)], step_sizes=[(1e-6, 50), (1e-3, 0.2)], maximize=[False, True]),
    bad=[dict(lr=-1.0), dict(lr=torch.tensor(-0.5)), dict(lr=torch.tensor([0.1, 0.2])), dict(etas=(1.0, 0.5)),
         dict(etas=(0.0, 1.2)), dict(etas=(0.5, 1.0)), dict(etas=(-0.5, 2.0)), dict(lr=-1.0, etas=(2.0, 3.0))],
    # torch's addcmul_ saves step_size, which its next step's mul_ changes: one step can be differentiated
    differentiable_steps=1,
)
globals().update(standard_tests(SPEC))


def test_sign_cases_step_as_the_paper_says():
    """Same sign: the step size grows (to ``s_max``); a flip: it shrinks (to ``s_min``), the element
    does not move and forgets its gradient; zero: the step size stays."""
    tx = fo.rprop(lr=0.1, etas=(0.5, 2.0), step_sizes=(0.04, 0.3))
    params = {"w": torch.zeros(4, dtype=torch.float64)}
    state = tx.init(params)
    first = torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=torch.float64)
    updates, state = tx.update({"w": first}, state, params)
    assert torch.equal(updates["w"], torch.tensor([-0.1, -0.1, -0.1, 0.0], dtype=torch.float64))
    second = torch.tensor([2.0, -1.0, 0.0, 3.0], dtype=torch.float64)
    updates, state = tx.update({"w": second}, state, params)
    assert torch.equal(state.step_size["w"], torch.tensor([0.2, 0.05, 0.1, 0.1], dtype=torch.float64))
    assert torch.equal(updates["w"], torch.tensor([-0.2, 0.0, 0.0, -0.1], dtype=torch.float64))
    assert torch.equal(state.prev["w"], torch.tensor([2.0, 0.0, 0.0, 3.0], dtype=torch.float64))
    updates, state = tx.update({"w": second}, state, params)
    assert torch.equal(state.step_size["w"], torch.tensor([0.3, 0.05, 0.1, 0.2], dtype=torch.float64))
