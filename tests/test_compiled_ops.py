"""The compiled update's whole-list math (functional_optim/_kernels/compiled.py).

Under ``torch.compile`` the functional ``update`` runs ``CompiledOps``: PureOps' formulas as
``torch._foreach_*`` operations and ``foreach_map``, which Inductor fuses horizontally on GPUs.
On the CPU Inductor lowers them per tensor, so the compiled step must compute exactly what the
per-tensor compiled step computes: these tests compile both and compare them bit for bit, check
which Ops each situation gets, and that the traced graph's operations do not grow with the
number of parameters. The CUDA kernel counts are in tests/test_cuda.py.
"""

import pytest
import torch
import torch.fx

import functional_optim as fo
import functional_optim._definition as definition
import functional_optim._kernels.compiled as compiled
import functional_optim._kernels.eager as eager
from functional_optim._kernels.ops import PURE, PureOps
from _registry import IDS, OPTIMIZERS


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


_SHAPES = [(6, 4), (4,), (), (3, 2, 2)]


def _tree(dtype, seed):
    return {f"p{i}": torch.randn(s, dtype=dtype, generator=torch.Generator().manual_seed(seed + i))
            for i, s in enumerate(_SHAPES)}


def _compiled_run(entry, ops, monkeypatch, dtype, tensor_hparams, steps=3):
    """Parameters and state after ``steps`` compiled updates whose compiled Ops is ``ops``."""
    monkeypatch.setattr(eager, "COMPILED", ops)
    torch._dynamo.reset()
    opt = entry.factory(**entry.kwargs)

    @torch.compile(fullgraph=True)
    def step(params, grads, state, hparams):
        updates, state = opt.update(grads, state, params, hparams)
        return fo.apply_updates(params, updates), state

    params = _tree(dtype, 0)
    state = opt.init(params)
    for k in range(steps):
        hparams = opt.hparams._replace(**entry.tensor_hparams(k)) if tensor_hparams else opt.hparams
        params, state = step(params, {n: g * 0.1 for n, g in _tree(dtype, 10 * (k + 1)).items()}, state, hparams)
    return params, state


def _assert_bitwise(a, b):
    leaves_a, leaves_b = torch.utils._pytree.tree_leaves(a), torch.utils._pytree.tree_leaves(b)
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b):
        if isinstance(x, torch.Tensor):
            assert x.dtype == y.dtype and x.shape == y.shape
            assert torch.equal(x, y), (x - y).abs().max()


_CASES = [(torch.float32, False), (torch.float64, True)]


@pytest.mark.parametrize("dtype,tensor_hparams", _CASES, ids=["float32-floats", "float64-tensors"])
@pytest.mark.parametrize("entry", OPTIMIZERS, ids=IDS)
def test_compiled_whole_list_step_is_bitwise_the_per_tensor_compiled_step_on_cpu(entry, dtype, tensor_hparams,
                                                                                 monkeypatch):
    expected = _compiled_run(entry, PURE, monkeypatch, dtype, tensor_hparams)
    _assert_bitwise(_compiled_run(entry, compiled.COMPILED, monkeypatch, dtype, tensor_hparams), expected)


#: the optimizers whose step computes per-parameter scalars (from step counts, norms ...)
_WITH_SCALARS = [e for e in OPTIMIZERS if e.name in ("adam", "adamw", "adafactor", "adagrad", "nadam", "radam",
                                                     "adamax", "asgd")]


@pytest.mark.parametrize("entry", _WITH_SCALARS, ids=[e.name for e in _WITH_SCALARS])
def test_scalars_computed_by_foreach_map_equal_the_per_tensor_scalars(entry, monkeypatch):
    """The GPU form of the per-parameter scalar math (``foreach_map``, its results not stored
    again) forced onto the CPU: the same numbers as the per-tensor compiled step."""
    expected = _compiled_run(entry, PURE, monkeypatch, torch.float64, True)
    monkeypatch.setattr(compiled, "FOREACH_FUSING_DEVICES", ("cpu",))
    calls = []
    original = compiled._foreach_map
    monkeypatch.setattr(compiled, "_foreach_map", lambda fn, *lists: calls.append(fn) or original(fn, *lists))
    got = _compiled_run(entry, compiled.COMPILED, monkeypatch, torch.float64, True)
    assert calls, "no per-parameter scalar went through foreach_map"
    for x, y in zip(torch.utils._pytree.tree_leaves(got), torch.utils._pytree.tree_leaves(expected)):
        if isinstance(x, torch.Tensor):
            torch.testing.assert_close(x, y, rtol=1e-14, atol=0)


def test_foreach_map_takes_per_parameter_scalars_that_are_views_of_one_buffer(monkeypatch):
    """Counters made as 0-d views of one buffer (as an eager ``init`` makes them on an
    accelerator) enter ``foreach_map`` as copies: a higher-order op refuses aliased inputs."""
    monkeypatch.setattr(compiled, "FOREACH_FUSING_DEVICES", ("cpu",))
    opt = fo.nadam(lr=1e-2)
    params = [torch.randn(3, dtype=torch.float64), torch.randn(2, 2, dtype=torch.float64)]
    state = opt.init(params)
    buffer = torch.tensor([4.0, 4.0])
    products = torch.stack(list(state.mu_product)).to(torch.float64)
    state = state._replace(step=list(buffer.unbind()), mu_product=list(products.unbind()))
    grads = [torch.ones_like(p) for p in params]

    @torch.compile(fullgraph=True)
    def step(grads, state, params):
        return opt.update(grads, state, params)

    got = step(grads, state, params)
    want = opt.update(grads, state, params)
    for x, y in zip(torch.utils._pytree.tree_leaves(got), torch.utils._pytree.tree_leaves(want)):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=0)


def _ops_chosen(monkeypatch):
    chosen = []
    original = definition.eager_ops_for

    def spy(*args):
        ops = original(*args)
        chosen.append(type(ops))
        return ops

    monkeypatch.setattr(definition, "eager_ops_for", spy)
    return chosen


def test_compiled_update_runs_compiled_ops_and_vmapped_or_differentiated_ones_the_per_tensor_ops(monkeypatch):
    chosen = _ops_chosen(monkeypatch)
    opt = fo.adam(lr=1e-2)
    params = [torch.randn(3), torch.randn(2, 2)]
    grads = [torch.randn(3), torch.randn(2, 2)]

    torch.compile(lambda g, s, p: opt.update(g, s, p), fullgraph=True, backend="aot_eager")(
        grads, opt.init(params), params)
    assert chosen == [compiled.CompiledOps]

    chosen.clear()  # an ensemble of 2 members, vmapped inside the compiled function
    batched = [torch.stack([p, p]) for p in params]
    ensemble = torch.func.vmap(opt.init)(batched)
    torch.compile(lambda g, s, p: torch.func.vmap(opt.update)(g, s, p), fullgraph=True, backend="aot_eager")(
        [torch.stack([g, g]) for g in grads], ensemble, batched)
    assert chosen and all(c is PureOps for c in chosen)

    chosen.clear()  # meta-learning: the hyperparameter requires grad
    lr = torch.tensor(1e-2, requires_grad=True)

    def meta(g, s, p, lr):
        updates, _ = opt.update(g, s, p, opt.hparams._replace(lr=lr))
        return sum(u.sum() for u in updates)

    torch.compile(meta, fullgraph=True, backend="aot_eager")(grads, opt.init(params), params, lr)
    assert chosen and all(c is PureOps for c in chosen)


class _Graphs:
    """A backend that keeps the FX graphs Dynamo hands it (and runs them as they are)."""

    def __init__(self):
        self.graphs = []

    def __call__(self, gm: torch.fx.GraphModule, example_inputs):
        self.graphs.append(gm)
        return gm.forward


def _traced_calls(n_params: int, name: str):
    torch._dynamo.reset()
    backend = _Graphs()
    opt = getattr(fo, name)(lr=1e-2)
    params = [torch.randn(4, 3) if i % 2 else torch.randn(5) for i in range(n_params)]

    @torch.compile(fullgraph=True, backend=backend)
    def step(grads, state, params):
        updates, state = opt.update(grads, state, params)
        return fo.apply_updates(params, updates), state

    step([torch.randn_like(p) for p in params], opt.init(params), params)
    (graph,) = backend.graphs
    return [str(node.target) for node in graph.graph.nodes if node.op == "call_function"]


#: per-parameter calls a traced step keeps whatever its math: reading list items and attributes, the
#: vmap check of each input, and torch.lerp (its foreach form rounds otherwise; see compiled.py;
#: with torch 2.11 also addcmul and addcdiv)
_PER_TENSOR_ANYWAY = ("getitem", "getattr", "is_batchedtensor", "lerp")


@pytest.mark.parametrize("gpu_form", [False, True], ids=["cpu-form", "gpu-form"])
@pytest.mark.parametrize("name", ["adam", "adamw", "sgd", "rmsprop", "adadelta", "adagrad", "nadam", "adamax"])
def test_traced_step_is_list_operations_whose_number_does_not_grow_with_the_parameters(name, gpu_form, monkeypatch):
    """What Inductor fuses horizontally on a GPU: the elementwise math is foreach operations over
    all parameters, so the graph's foreach calls are the same for 4 and for 12 parameters (the
    per-tensor step had a call per parameter and operation). In the GPU form (the scalar math as
    ``foreach_map``, forced onto the CPU here) no arithmetic call grows with the parameters."""
    if gpu_form:
        monkeypatch.setattr(compiled, "FOREACH_FUSING_DEVICES", ("cpu",))
    few, many = _traced_calls(4, name), _traced_calls(12, name)
    foreach = lambda calls: sorted(c for c in calls if "_foreach_" in c or "foreach_map" in c)  # noqa: E731
    assert foreach(few), "no foreach operation in the traced step"
    assert foreach(few) == foreach(many)
    if gpu_form:
        # (torch 2.11: addcmul/addcdiv per tensor, which its Dynamo may trace as add, mul and div)
        per_tensor_addc = () if compiled._foreach_addc_rounds_as_per_tensor() else ("addc", "add", "mul", "div")
        anyway = _PER_TENSOR_ANYWAY + per_tensor_addc
        others = lambda calls: sorted(c for c in calls if not any(k in c for k in anyway))  # noqa: E731
        assert others(few) == others(many)


def test_hyperparameters_on_another_device_keep_the_scalar_math_per_parameter():
    """A tensor hyperparameter on another device than the parameters (the CPU's, with CUDA
    parameters) is captured by the kernels' scalar functions: the compiled update then keeps the
    foreach list operations and computes the per-parameter scalars per parameter."""
    seen = []

    def choose(x):
        seen.append(eager.eager_ops_for([x], [x], [torch.tensor(1e-3, device="meta")]))
        seen.append(eager.eager_ops_for([x], [x], [torch.tensor(1e-3)]))
        return x

    torch.compile(choose, backend="eager", fullgraph=True)(torch.zeros(3))
    assert seen == [compiled.COMPILED_SCALARS_PER_PARAM, compiled.COMPILED]
    assert not compiled.COMPILED_SCALARS_PER_PARAM.map_scalars
