"""torch.compile for every optimizer: the functional train step and compat's step().

Compiled results must equal eager ones, and after warm-up a changing learning rate (tensor
hparams, LR schedulers driving a tensor ``lr``) must not recompile.
"""

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend
from torch.func import functional_call, grad

import functional_optim as fo
from _registry import IDS, OPTIMIZERS


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Each case compiles from scratch: every optimizer's case compiles the same code objects (the
    nested ``train_step``, ``FunctionalOptimizer.step``), and dynamo's recompile limit (8) counts
    per code object, so with more than 8 optimizers the later cases would hit it."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))


def _batch(step):
    g = torch.Generator().manual_seed(step)
    return torch.randn(8, 3, generator=g), torch.randn(8, 2, generator=g)


@pytest.mark.parametrize("entry", OPTIMIZERS, ids=IDS)
def test_compiled_functional_train_step_matches_eager_without_recompiles(entry):
    model = _model()
    opt = entry.factory(**entry.kwargs)

    def loss_fn(params, x, y):
        return ((functional_call(model, params, (x,)) - y) ** 2).mean()

    def train_step(params, state, hparams, x, y):
        grads = grad(loss_fn)(params, x, y)
        updates, state = opt.update(grads, state, params, hparams)
        return fo.apply_updates(params, updates), state

    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(train_step, backend=counter, fullgraph=True)
    params = {k: v.detach() for k, v in model.named_parameters()}
    eager_params, eager_state = params, opt.init(params)
    state = opt.init(params)
    frames = []
    for step in range(4):
        hparams = opt.hparams._replace(**entry.tensor_hparams(step))
        x, y = _batch(step)
        params, state = compiled(params, state, hparams, x, y)
        eager_params, eager_state = train_step(eager_params, eager_state, hparams, x, y)
        for k in params:
            torch.testing.assert_close(params[k], eager_params[k], rtol=1e-5, atol=1e-6)
        frames.append(counter.frame_count)
    # (the first call may run the backend twice when dynamo restarts its analysis)
    assert frames[1:] == [frames[0]] * 3, f"recompiled when hparams changed: {frames}"


@pytest.mark.parametrize("entry", OPTIMIZERS, ids=IDS)
def test_compiled_compat_step_with_scheduler_matches_eager(entry):
    def run(compiled):
        model = _model()
        kwargs = dict(entry.kwargs, lr=torch.tensor(entry.kwargs["lr"]))
        opt = entry.compat_cls(model.parameters(), **kwargs)
        scheduler = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.8)
        counter = CompileCounterWithBackend("inductor")
        step = torch.compile(opt.step, backend=counter) if compiled else opt.step
        frames = []
        for i in range(5):
            x, y = _batch(i)
            opt.zero_grad()
            ((model(x) - y) ** 2).mean().backward()
            step()
            scheduler.step()
            frames.append(counter.frame_count)
        return [p.detach() for p in model.parameters()], opt.state_dict(), frames

    eager_params, eager_sd, _ = run(False)
    compiled_params, compiled_sd, frames = run(True)
    # warm-up: the first call creates the state lazily, the second sees it; then no recompiles
    assert frames[2:] == [frames[1]] * 3, f"recompiled after warm-up: {frames}"
    for a, b in zip(compiled_params, eager_params):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for pid, entry_state in eager_sd["state"].items():
        for key, value in entry_state.items():
            got = compiled_sd["state"][pid][key]
            assert got.dtype == value.dtype and got.device == value.device
            torch.testing.assert_close(got, value, rtol=1e-5, atol=1e-6)



def _train_side_by_side(i, runs, schedulers):
    """Training step ``i`` for each ``(optimizer, model, step function)`` on the same batch, then
    every scheduler's step."""
    x, y = _batch(i)
    for opt, model, step in runs:
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        step()
    for scheduler in schedulers:
        scheduler.step()


def _float_scheduler(opt):
    """A scheduler that changes every float hyperparameter torch's schedulers touch: ``OneCycleLR``
    (``lr``, and the first of ``betas`` or ``momentum``) where the optimizer has one of those, else
    ``StepLR`` (``lr`` only)."""
    if any(k in opt.defaults for k in ("betas", "momentum")):
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=20)
    return torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.9)


@pytest.mark.parametrize("foreach", [False, True], ids=["for-loop", "foreach"])
@pytest.mark.parametrize("entry", OPTIMIZERS, ids=IDS)
def test_compiled_compat_step_with_float_hparams_does_not_recompile(entry, foreach):
    """``torch.compile(opt.step)`` with Python-float hyperparameters that a scheduler changes
    every step (``lr``, and with ``OneCycleLR`` the betas or momentum): after warm-up, no
    recompiles. torch's own compiled steps recompile at every new value (SGD, RMSprop, Adadelta
    and foreach Adam for each ``lr``; every optimizer with betas or momentum under
    ``OneCycleLR``): Inductor's tensorify pass specializes a changing float that reaches
    ``alpha=``/``value=``/``clamp`` or a foreach scalar; compat hands them over as tensors.
    ``aot_eager`` shows the specialization as Inductor does, without code generation."""
    if foreach and entry.name == "adafactor":
        pytest.skip("torch.optim.Adafactor has no foreach implementation on the CPU")
    model = _model()
    kwargs = {**entry.kwargs, "foreach": foreach}
    opt = entry.compat_cls(model.parameters(), **kwargs)
    eager_model = _model()
    eager = entry.compat_cls(eager_model.parameters(), **kwargs)
    schedulers = [_float_scheduler(o) for o in (opt, eager)]
    counter = CompileCounterWithBackend("aot_eager")
    step = torch.compile(opt.step, backend=counter)
    frames, seen = [], []
    for i in range(5):
        _train_side_by_side(i, [(opt, model, step), (eager, eager_model, eager.step)], schedulers)
        frames.append(counter.frame_count)
        seen.append({k: opt.param_groups[0][k] for k in ("lr", "betas", "momentum") if k in opt.defaults})
    assert len({repr(s) for s in seen}) == len(seen), f"the scheduler did not change the hparams: {seen}"
    assert frames[2:] == [frames[1]] * 3, f"recompiled as the hparams changed: {frames}"
    for a, b in zip(model.parameters(), eager_model.parameters()):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-5, atol=1e-6)


_FUSED = [("Adam", {}), ("AdamW", {}), ("SGD", {"momentum": 0.9}), ("Adagrad", {})]


@pytest.mark.parametrize("name, kwargs", _FUSED, ids=[n for n, _ in _FUSED])
def test_compiled_compat_fused_step_runs_the_fused_kernel_as_torch(name, kwargs):
    """``torch.compile(opt.step)`` with ``fused=True``: torch.compile does not trace into torch's
    fused optimizer functions, and compat's fused step runs outside the graph in the same way
    (traced, the fused op failed functionalization): the parameters equal torch's eager fused
    step's bitwise, with a scheduler changing ``lr``."""
    import compat

    model, ref_model = _model(), _model()
    opt = getattr(compat, name)(model.parameters(), lr=0.05, fused=True, **kwargs)
    ref = getattr(torch.optim, name)(ref_model.parameters(), lr=0.05, fused=True, **kwargs)
    schedulers = [torch.optim.lr_scheduler.StepLR(o, 1, gamma=0.9) for o in (opt, ref)]
    step = torch.compile(opt.step, backend="aot_eager")
    for i in range(3):
        _train_side_by_side(i, [(opt, model, step), (ref, ref_model, ref.step)], schedulers)
    for a, b in zip(model.parameters(), ref_model.parameters()):
        assert torch.equal(a, b)
    for p, q in zip(model.parameters(), ref_model.parameters()):
        for key, value in ref.state[q].items():
            assert torch.equal(opt.state[p][key], value), key


def test_compiled_compat_for_loop_computes_the_per_parameter_scalars_once_per_group(monkeypatch):
    """Under torch.compile the for-loop path steps a group as one chunk: the per-parameter step
    sizes go through one ``realize`` barrier (a 1x1 matmul each for Adam's two scalar lists)
    instead of one per cache-sized chunk, and the compiled step equals the eager one."""
    import compat
    import compat.optimizer as compat_optimizer

    monkeypatch.setattr(compat_optimizer, "LOOP_CHUNK_NUMEL", 1)  # eagerly: one chunk per tensor
    torch.manual_seed(0)
    shapes = [(4, 3), (5,), (2, 2), (3,)]
    grads = [torch.randn(s) for s in shapes]

    def make():
        params = [torch.nn.Parameter(torch.randn(s, generator=torch.Generator().manual_seed(i)))
                  for i, s in enumerate(shapes)]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        return params, compat.AdamW(params, lr=0.01, foreach=False)

    matmuls = []

    def backend(gm, example_inputs):
        matmuls.append(sum(1 for n in gm.graph.nodes if n.target is torch.mm))
        return gm.forward

    params, opt = make()
    step = torch.compile(opt.step, backend=backend)
    eager_params, eager_opt = make()
    for _ in range(3):
        step()
        eager_opt.step()
    assert matmuls and all(n == 2 for n in matmuls), matmuls
    for p, q in zip(params, eager_params):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)  # tensor lr under compile: float32 rounding


def test_traced_flatten_keeps_optree_order_and_rebuilds_every_container():
    """Under torch.compile ``tree.flatten`` walks lists, tuples, dicts (keys sorted, as optree
    does) and NamedTuples itself; other nodes (an OrderedDict here) still go to optree. The
    leaves come out in the eager order, ``None`` and ``EMPTY`` included, and ``unflatten``
    rebuilds the same containers around new leaves."""
    import collections

    from functional_optim import tree

    Pair = collections.namedtuple("Pair", ["second", "first"])
    t = lambda v: torch.full((2,), float(v))  # noqa: E731
    nested = {"b": [t(1), None, (t(2), tree.EMPTY)], "a": Pair(t(3), {"z": t(4), "y": 5.0}),
              "c": collections.OrderedDict([("q", t(6)), ("p", t(7))])}
    eager_leaves, eager_spec = tree.flatten(nested)

    def traced(x):
        leaves, spec = tree.flatten(x)
        assert spec.num_leaves == len(leaves)
        doubled = [leaf * 2 if isinstance(leaf, torch.Tensor) else leaf for leaf in leaves]
        return leaves, tree.unflatten(spec, doubled)

    leaves, rebuilt = torch.compile(traced, backend="eager", fullgraph=True)(nested)

    def same(got, want):
        if isinstance(want, torch.Tensor):
            return isinstance(got, torch.Tensor) and torch.equal(got, want)
        return type(got) is type(want) and got == want

    assert len(leaves) == len(eager_leaves) == 9
    assert all(same(got, want) for got, want in zip(leaves, eager_leaves))
    expected = tree.unflatten(eager_spec, [x * 2 if isinstance(x, torch.Tensor) else x for x in eager_leaves])
    rebuilt_leaves, rebuilt_spec = tree.flatten(rebuilt)
    assert rebuilt_spec == eager_spec
    assert type(rebuilt["a"]) is Pair and type(rebuilt["c"]) is collections.OrderedDict
    assert list(rebuilt) == list(nested) and list(rebuilt["c"]) == ["q", "p"]
    assert all(same(got, want) for got, want in zip(rebuilt_leaves, tree.flatten(expected)[0]))
