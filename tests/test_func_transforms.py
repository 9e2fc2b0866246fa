"""torch.func: vmap ensembles and gradients through unrolled updates, for every optimizer."""

import pytest
import torch
from torch.func import functional_call, grad, stack_module_state, vmap

import functional_optim as fo
from _registry import IDS, OPTIMIZERS


def _regression(seed=0, n=16):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g, dtype=torch.float64)
    return x, x @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) + 0.1


@pytest.mark.parametrize("entry", OPTIMIZERS, ids=IDS)
def test_vmapped_ensemble_equals_separate_runs(entry):
    """One state for N stacked models under vmap == N independent functional runs."""
    torch.manual_seed(0)
    models = [torch.nn.Linear(3, 1).double() for _ in range(3)]
    stacked, _ = stack_module_state(models)
    stacked = {k: v.detach() for k, v in stacked.items()}
    base = models[0]
    x, y = _regression()
    opt = entry.factory(**entry.kwargs)

    def loss_fn(params, x, y):
        return ((functional_call(base, params, (x,)).squeeze(-1) - y) ** 2).mean()

    def train_step(params, state, x, y):
        updates, state = opt.update(grad(loss_fn)(params, x, y), state, params)
        return fo.apply_updates(params, updates), state

    ens_params, ens_state = stacked, vmap(opt.init)(stacked)
    singles = [({k: v[i] for k, v in stacked.items()}, None) for i in range(3)]
    singles = [(p, opt.init(p)) for p, _ in singles]
    for _ in range(4):
        ens_params, ens_state = vmap(train_step, in_dims=(0, 0, None, None))(ens_params, ens_state, x, y)
        singles = [train_step(p, s, x, y) for p, s in singles]
    for i, (p, s) in enumerate(singles):
        for k in p:
            torch.testing.assert_close(ens_params[k][i], p[k], rtol=1e-12, atol=1e-14)
        assert float(ens_state.step[k][i]) == float(s.step[k]) == 4.0


@pytest.mark.parametrize("entry", OPTIMIZERS, ids=IDS)
def test_hypergradient_through_unrolled_updates_passes_gradcheck(entry):
    """d(loss after K updates)/d(lr, init) is exact: checked by finite differences in float64."""
    x, y = _regression(1)
    opt = entry.factory(**entry.kwargs)

    def loss_after_k_steps(lr, w0, k=3):
        params = {"w": w0, "b": torch.zeros((), dtype=torch.float64, requires_grad=True)}
        state = opt.init(params)
        hparams = opt.hparams._replace(lr=lr)
        for _ in range(k):
            loss = ((x @ params["w"] + params["b"] - y) ** 2).mean()
            grads = dict(zip(params, torch.autograd.grad(loss, list(params.values()), create_graph=True)))
            updates, state = opt.update(grads, state, params, hparams)
            params = fo.apply_updates(params, updates)
        return ((x @ params["w"] + params["b"] - y) ** 2).mean()

    lr = torch.tensor(entry.kwargs["lr"], dtype=torch.float64, requires_grad=True)
    w0 = torch.randn(3, dtype=torch.float64, generator=torch.Generator().manual_seed(2), requires_grad=True)
    assert torch.autograd.gradcheck(loss_after_k_steps, (lr, w0))
