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


EXPECTED = r"MultiSteps: every_k_schedule must give an integer number of steps >= 1"


@pytest.mark.parametrize("k, error, got", [
    (0, ValueError, ", got 0$"),
    (-2, ValueError, ", got -2$"),
    (2.0, TypeError, ", got 2.0 of type float$"),
    (2.5, TypeError, ", got 2.5 of type float$"),
    (True, TypeError, ", got True of type bool$"),
    ("4", TypeError, ", got '4' of type str$"),
    (None, TypeError, ", got None of type NoneType$"),
    (torch.tensor(2.0), TypeError, r" \(or a 0-d integer tensor\), got a torch.float32 tensor$"),
    (torch.tensor([2, 2]), ValueError, r" \(or a 0-d integer tensor\), got a tensor of shape \(2,\)$"),
], ids=["zero", "negative", "float-2.0", "float-2.5", "bool", "str", "None", "float-tensor", "(2,)-tensor"])
def test_constant_every_k_schedule_is_refused_at_construction(k, error, got):
    with pytest.raises(error, match=EXPECTED + got):
        MultiSteps(fo.adam(), k)


@pytest.mark.parametrize("bad, error, got", [
    (0, ValueError, "got 0"),
    (-1, ValueError, "got -1"),
    (2.5, TypeError, "got 2.5 of type float"),
    (True, TypeError, "got True of type bool"),
    (None, TypeError, "got None of type NoneType"),
    (torch.tensor(True), TypeError, r"\(or a 0-d integer tensor\), got a torch.bool tensor"),
    (torch.tensor(2.5), TypeError, r"\(or a 0-d integer tensor\), got a torch.float32 tensor"),
    (torch.tensor(2 + 0j), TypeError, r"\(or a 0-d integer tensor\), got a torch.complex64 tensor"),
    (torch.tensor([3, 3, 3]), ValueError, r"\(or a 0-d integer tensor\), got a tensor of shape \(3,\)"),
], ids=["zero", "negative", "float-2.5", "bool", "None", "bool-tensor", "float-tensor", "complex-tensor",
        "(3,)-tensor"])
def test_bad_schedule_value_is_refused_before_anything_is_computed(bad, error, got):
    """The schedule gives 1, 1, then ``bad`` (at gradient_step 2): refused, naming the step; the
    state passed in is left as it was."""
    ms = MultiSteps(fo.adam(lr=0.1), every_k_schedule=lambda step: bad if int(step) == 2 else 1)
    params = [torch.randn(3)]
    state = ms.init(params)
    for _ in range(2):
        _, state = ms.update([torch.randn(3)], state, params)
    before = [t.clone() for t in (state.mini_step, state.gradient_step, state.acc_grads[0],
                                  state.inner_opt_state.exp_avg[0])]
    with pytest.raises(error, match=EXPECTED + ".*" + got + r" \(returned by every_k_schedule\(gradient_step\) "
                       r"at gradient_step 2\)$"):
        ms.update([torch.randn(3)], state, params)
    after = (state.mini_step, state.gradient_step, state.acc_grads[0], state.inner_opt_state.exp_avg[0])
    assert all(torch.equal(a, b) for a, b in zip(before, after))


@pytest.mark.parametrize("k", [3, torch.tensor(3), torch.tensor(3, dtype=torch.int64)], ids=["int", "int32", "int64"])
def test_integer_schedules_and_constants_still_work(k):
    """An int, a 0-d integer tensor constant, and callables giving either: identical updates."""
    params = [torch.randn(3, dtype=torch.float64)]
    grads = [[torch.randn(3, dtype=torch.float64)] for _ in range(6)]
    outs = []
    for schedule in (3, k, lambda step: k, lambda step: torch.ones_like(step) * k):
        ms = MultiSteps(fo.adam(lr=0.1), schedule)
        state, ups = ms.init(params), []
        for g in grads:
            updates, state = ms.update(g, state, params)
            ups.append(updates[0])
        outs.append(torch.stack(ups))
        assert int(state.gradient_step) == 2
    for out in outs[1:]:
        assert torch.equal(out, outs[0])


def test_compiled_tensor_schedule_one_graph_and_bad_dtype_refused_while_tracing():
    """A schedule of the (tensor) gradient step compiles into one graph, with its checks (dtype,
    shape: no host read); a float tensor is refused while tracing."""
    from torch._dynamo.testing import CompileCounter

    params = [torch.randn(3, 2)]

    def run(schedule, compile_):
        ms = MultiSteps(fo.adam(lr=0.1), schedule)
        counter = CompileCounter()
        update = torch.compile(ms.update, fullgraph=True, backend=counter) if compile_ else ms.update
        state, outs = ms.init(params), []
        for i in range(6):
            updates, state = update([torch.full((3, 2), float(i))], state, params)
            outs.append(updates[0])
        return outs, state, counter.frame_count

    schedule = lambda step: 1 + step  # 1, 2, 3: emits on calls 1, 3, 6
    eager, _, _ = run(schedule, False)
    compiled, state, frames = run(schedule, True)
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b)
    assert int(state.gradient_step) == 3 and frames == 1
    with pytest.raises(Exception, match=r"every_k_schedule must give an integer number of steps"):
        run(lambda step: 1.0 + step, True)


def test_vmapped_schedule_checks_pass_and_errors_still_raise():
    """Under vmap (an ensemble of states) the checks see each member's 0-d step and k."""
    ms = MultiSteps(fo.transforms.scale(1.0), every_k_schedule=lambda step: 1 + step)
    params = [torch.zeros(4, 2)]
    state = torch.func.vmap(ms.init)(params)
    for _ in range(3):
        updates, state = torch.func.vmap(ms.update)([torch.ones(4, 2)], state, params)
    assert torch.equal(state.gradient_step, torch.full((4,), 2, dtype=torch.int32))
    bad = MultiSteps(fo.transforms.scale(1.0), every_k_schedule=lambda step: (1 + step).float())
    with pytest.raises(TypeError, match=EXPECTED + r".*torch.float32 tensor \(returned by "
                       r"every_k_schedule\(gradient_step\)\)$"):
        torch.func.vmap(bad.update)([torch.ones(4, 2)], state, params)
