"""MultiSteps: k micro-batches == one big-batch step (functional and torch), None grads, compile."""

import pytest
import torch

import functional_optim as fo
from _parity import assert_close
from functional_optim.accumulate import MultiSteps

K = 4


def _data(dtype, n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g, dtype=dtype)
    y = x @ torch.randn(5, 2, generator=g, dtype=dtype) + 0.1 * torch.randn(n, 2, generator=g, dtype=dtype)
    return x, y


def _loss(params, x, y):
    return ((x @ params["w"] + params["b"] - y) ** 2).mean()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_multisteps_equals_torch_big_batch_and_accumulation(dtype):
    x, y = _data(dtype)
    init = {"w": torch.zeros(5, 2, dtype=dtype), "b": torch.zeros(2, dtype=dtype)}
    ms = MultiSteps(fo.adamw(lr=0.05, weight_decay=0.1), every_k_schedule=K)
    params, state = dict(init), ms.init(init)
    # torch: one big-batch step per K micro-batches
    big = {k: v.clone().requires_grad_() for k, v in init.items()}
    opt_big = torch.optim.AdamW(list(big.values()), lr=0.05, weight_decay=0.1)
    micro = x.shape[0] // (2 * K)
    for call in range(2 * K):  # two outer steps, the second over the other half of the data
        sl = slice(call * micro, (call + 1) * micro)
        grads = torch.func.grad(_loss)(params, x[sl], y[sl])
        updates, state = ms.update(grads, state, params)
        params = fo.apply_updates(params, updates)
        if (call + 1) % K == 0:
            opt_big.zero_grad()
            half = slice((call + 1 - K) * micro, (call + 1) * micro)
            _loss(big, x[half], y[half]).backward()
            opt_big.step()
            assert bool(ms.has_updated(state))
        else:
            assert not bool(ms.has_updated(state))
        for k in params:
            assert_close(params[k], big[k].detach(), dtype, f"{k} after call {call}")
    assert int(state.gradient_step) == 2 and int(state.mini_step) == 0


def test_multisteps_is_exactly_the_inner_step_on_the_mean():
    params = [torch.randn(3, dtype=torch.float64)]
    grads = [[torch.randn(3, dtype=torch.float64)] for _ in range(3)]
    ms = MultiSteps(fo.adam(lr=0.1), 3)
    state = ms.init(params)
    for g in grads:
        updates, state = ms.update(g, state, params)
    mean = [(grads[0][0] + grads[1][0] + grads[2][0]) / 3]
    expected, inner_state = fo.adam(lr=0.1).update(mean, fo.adam(lr=0.1).init(params), params)
    assert torch.equal(updates[0], expected[0])
    assert torch.equal(state.inner_opt_state.exp_avg[0], inner_state.exp_avg[0])
    assert torch.equal(state.acc_grads[0], torch.zeros(3, dtype=torch.float64))


def test_none_grads_and_schedule_of_k():
    params = {"a": torch.zeros(2), "frozen": torch.zeros(2)}
    ms = MultiSteps(fo.transforms.scale(1.0), every_k_schedule=lambda step: 1 + step)  # 1, then 2, ...
    tx = ms.gradient_transformation()
    state = tx.init(params)
    outs = []
    for _ in range(3):
        updates, state = tx.update({"a": torch.ones(2), "frozen": None}, state, params)
        assert updates["frozen"] is None
        outs.append(float(updates["a"][0]))
    assert outs == [1.0, 0.0, 1.0]  # k=1: emit; k=2: accumulate, emit the mean
    assert int(state.gradient_step) == 2
    with pytest.raises(ValueError, match="at least 1"):
        MultiSteps(fo.adam(), 0)


def test_compiled_multisteps_adam_one_graph():
    from torch._dynamo.testing import CompileCounter

    ms = MultiSteps(fo.adam(lr=0.1), K)
    params = [torch.randn(3, 2), torch.randn(2)]

    def step(params, grads, state):
        updates, state = ms.update(grads, state, params)
        return fo.apply_updates(params, updates), state

    counter = CompileCounter()
    compiled = torch.compile(step, fullgraph=True, backend=counter)
    p_c = p_e = params
    s_c = s_e = ms.init(params)
    for _ in range(2 * K):
        grads = [torch.randn(3, 2), torch.randn(2)]
        p_c, s_c = compiled(p_c, grads, s_c)
        p_e, s_e = step(p_e, grads, s_e)
        for a, b in zip(p_c, p_e):
            torch.testing.assert_close(a, b)
    assert counter.frame_count == 1
