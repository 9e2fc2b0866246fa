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


@pytest.mark.parametrize("kwargs, one_chunk", [
    (dict(), True),  # mu = 1: ax is copied, nothing allocated per tensor
    (dict(t0=0.0), False),  # mu < 1 from the second step: ax averaged through a temporary
    (dict(weight_decay=0.1), False),  # a new gradient per tensor
    (dict(maximize=True), False),
])
def test_for_loop_runs_as_one_chunk_only_while_it_allocates_nothing(monkeypatch, kwargs, one_chunk):
    """The for-loop kernel runs over the whole group at once exactly when torch's for-loop
    allocates no per-tensor temporary; otherwise cache-sized chunks (one large tensor at a time)
    keep the temporaries one tensor's worth, as torch's loop does. Same numbers either way."""
    import compat.optimizer as optimizer_module
    monkeypatch.setattr(optimizer_module, "LOOP_CHUNK_NUMEL", 4)
    torch.manual_seed(0)
    params = [torch.randn(6, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    reference = [p.detach().clone().requires_grad_() for p in params]
    ours = ASGD(params, lr=0.05, foreach=False, **kwargs)
    theirs = torch.optim.ASGD(reference, lr=0.05, foreach=False, **kwargs)
    seen = []
    original = ASGD._loop_chunks

    def recording(self, *args):
        seen.append(original(self, *args))
        return seen[-1]

    monkeypatch.setattr(ASGD, "_loop_chunks", recording)
    for _ in range(3):
        for p, q in zip(params, reference):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        ours.step()
        theirs.step()
    expected = [[0, 1, 2]] if one_chunk else [[0], [1], [2]]
    assert seen[-1] == expected
    for p, q in zip(params, reference):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
        torch.testing.assert_close(ours.state[p]["ax"], theirs.state[q]["ax"], rtol=0, atol=0)
