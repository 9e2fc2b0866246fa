"""CUDA paths: foreach/fused parity, capturable under CUDA graph capture, compiled
``mode="reduce-overhead"`` functional steps, GradScaler with fused, and the optimizers outside
tests/_registry.py (Muon, SparseAdam, LBFGS) through their own files' parity runs on CUDA.
Skipped without a GPU."""

import copy

import pytest
import torch

import functional_optim as fo
from _registry import IDS, OPTIMIZERS
from _versions import skip_unless_torch_adagrad_fused_on
from conftest import requires_cuda

pytestmark = [requires_cuda, pytest.mark.cuda]

CAPTURABLE = [e for e in OPTIMIZERS if e.name in ("adam", "adamw", "adadelta", "nadam", "rmsprop", "radam", "adamax",
                                                  "asgd", "rprop")]
FUSED = [e for e in OPTIMIZERS if e.name in ("adam", "adamw", "adagrad", "sgd")]


def _params(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(64, 32), (32,), (), (16, 8)]
    return [torch.randn(s, generator=g, dtype=dtype).cuda() for s in shapes]


def _grads(params, step):
    g = torch.Generator().manual_seed(100 + step)
    return [torch.randn(p.shape, generator=g, dtype=p.dtype).cuda() for p in params]


def _run(cls, params, steps, **kwargs):
    ps = [p.clone().requires_grad_() for p in params]
    opt = cls(ps, **kwargs)
    for step in range(steps):
        for p, g in zip(ps, _grads(params, step)):
            p.grad = g
        opt.step()
    return ps, opt


def _clone_tensors(tree):
    """``tree`` with every tensor leaf cloned; other leaves (:data:`~functional_optim.EMPTY`, None) kept."""
    leaves, spec = fo.tree.flatten(tree)
    return fo.tree.unflatten(spec, [x.clone() if isinstance(x, torch.Tensor) else x for x in leaves])


def _assert_same(ours, ref, rtol=1e-5, atol=1e-6):
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=rtol, atol=atol)


@pytest.mark.parametrize("impl", [dict(foreach=True), dict(foreach=False), dict()], ids=["foreach", "forloop", "default"])
@pytest.mark.parametrize("entry", OPTIMIZERS, ids=IDS)
def test_cuda_implementations_match_torch(entry, impl):
    params = _params(torch.float64)
    ref, ref_opt = _run(entry.torch_cls, params, 4, **entry.kwargs, **impl)
    ours, our_opt = _run(entry.compat_cls, params, 4, **entry.kwargs, **impl)
    _assert_same(ours, ref, rtol=1e-12, atol=1e-14)
    for pid, state in ref_opt.state_dict()["state"].items():
        for key, value in state.items():
            got = our_opt.state_dict()["state"][pid][key]
            assert got.device == value.device and got.dtype == value.dtype, (key, got, value)


@pytest.mark.parametrize("entry", FUSED, ids=[e.name for e in FUSED])
def test_cuda_fused_matches_torch(entry):
    if entry.name == "adagrad":
        skip_unless_torch_adagrad_fused_on("cuda")
    params = _params()
    kwargs = dict(entry.kwargs, fused=True)
    ref, _ = _run(entry.torch_cls, params, 4, **kwargs)
    ours, _ = _run(entry.compat_cls, params, 4, **kwargs)
    _assert_same(ours, ref, rtol=0, atol=0)


@pytest.mark.parametrize("entry", CAPTURABLE, ids=[e.name for e in CAPTURABLE])
def test_capturable_step_replays_under_cuda_graph(entry):
    """Capture one compat step in a CUDA graph, replay it, and match eager torch.optim."""
    params = _params()
    kwargs = dict(entry.kwargs, capturable=True, foreach=True, lr=torch.tensor(entry.kwargs["lr"], device="cuda"))
    ref, _ = _run(entry.torch_cls, params, 6, **copy.deepcopy(kwargs))

    ps = [p.clone().requires_grad_() for p in params]
    opt = entry.compat_cls(ps, **kwargs)
    static_grads = [torch.zeros_like(p) for p in ps]
    for p, g in zip(ps, static_grads):
        p.grad = g
    # warm up on a side stream (creates the state), then capture
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for g, new in zip(static_grads, _grads(params, 0)):
            g.copy_(new)
        opt.step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        opt.step()
    for step in range(1, 6):
        for g, new in zip(static_grads, _grads(params, step)):
            g.copy_(new)
        graph.replay()
    torch.cuda.synchronize()
    _assert_same(ps, ref)


@pytest.mark.parametrize("entry", OPTIMIZERS, ids=IDS)
def test_functional_step_compiled_with_cuda_graphs(entry):
    opt = entry.factory(**entry.kwargs)
    params = {f"p{i}": p for i, p in enumerate(_params())}

    def step_fn(params, grads, state, hparams):
        updates, state = opt.update(grads, state, params, hparams)
        return fo.apply_updates(params, updates), state

    compiled = torch.compile(step_fn, mode="reduce-overhead", fullgraph=True)
    eager_params, eager_state = params, opt.init(params)
    state = opt.init(params)
    for step in range(5):
        hparams = opt.hparams._replace(**{k: (tuple(x.cuda() for x in v) if isinstance(v, tuple) else v.cuda())
                                          for k, v in entry.tensor_hparams(step).items()})
        grads = dict(zip(params, _grads(list(params.values()), step)))
        params, state = compiled(params, grads, state, hparams)
        # outputs of a cudagraph are overwritten by the next replay: keep copies (EMPTY slots as they are)
        params, state = _clone_tensors(params), _clone_tensors(state)
        eager_params, eager_state = step_fn(eager_params, grads, eager_state, hparams)
    for k in params:
        torch.testing.assert_close(params[k], eager_params[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("entry", FUSED, ids=[e.name for e in FUSED])
def test_grad_scaler_with_fused_on_cuda_matches_torch(entry):
    if entry.name == "adagrad":
        skip_unless_torch_adagrad_fused_on("cuda")

    def run(cls):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4)).cuda()
        opt = cls(model.parameters(), **dict(entry.kwargs, fused=True))
        scaler = torch.amp.GradScaler("cuda", init_scale=2.0**8)
        data = torch.randn(32, 8, generator=torch.Generator().manual_seed(1)).cuda()
        for step in range(5):
            opt.zero_grad()
            with torch.autocast("cuda", dtype=torch.float16):
                loss = model(data).float().pow(2).mean()
            if step == 2:
                loss = loss * float("inf")
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        return list(model.parameters()), scaler.get_scale()

    ours, our_scale = run(entry.compat_cls)
    ref, ref_scale = run(entry.torch_cls)
    assert our_scale == ref_scale
    _assert_same(ours, ref, rtol=0, atol=0)


@pytest.mark.parametrize("nesterov", [True, False])
def test_muon_matches_torch_on_cuda(nesterov):
    import test_muon

    if test_muon.TorchMuon is None:
        pytest.skip(f"torch {torch.__version__} has no torch.optim.Muon")
    test_muon.run_compat(dict(lr=0.02, weight_decay=0.1, nesterov=nesterov), torch.float32, swap_at=2, device="cuda")


def _torch_sparse_adam_error_on_cuda(kwargs, contiguous):
    """torch.optim.SparseAdam alone on the inputs of tests/test_sparse_adam.py's run on CUDA:
    ``None``, or the error it raises (torch 2.11's fails on the transposed parameter there)."""
    import test_sparse_adam

    params = test_sparse_adam._params(torch.float32)
    params = [(p.contiguous() if contiguous else p).cuda().requires_grad_() for p in params]
    opt = torch.optim.SparseAdam(test_sparse_adam._groups(params, True), **kwargs)
    try:
        for step in range(5):
            test_sparse_adam._set_grads(params, [None if g is None else g.cuda()
                                                 for g in test_sparse_adam._grads(params, step)])
            opt.step()
        torch.cuda.synchronize()
    except RuntimeError as e:
        return f"{type(e).__name__}: {e}"
    return None


@pytest.mark.parametrize("contiguous", [True, False], ids=["contiguous", "with-a-transposed-param"])
@pytest.mark.parametrize("maximize", [False, True])
def test_sparse_adam_matches_torch_on_cuda(maximize, contiguous):
    import test_sparse_adam

    kwargs = dict(lr=0.05, maximize=maximize)
    error = _torch_sparse_adam_error_on_cuda(kwargs, contiguous)
    if error is not None:
        pytest.skip(f"torch {torch.__version__}'s own torch.optim.SparseAdam fails on these CUDA params: {error}")
    test_sparse_adam.run_compat(kwargs, torch.float32, swap_at=2, device="cuda", contiguous=contiguous)


@pytest.mark.parametrize("line_search_fn", [None, "strong_wolfe"])
def test_lbfgs_matches_torch_on_cuda(line_search_fn):
    import test_lbfgs

    kwargs = dict(line_search_fn=line_search_fn, max_iter=4, history_size=3)
    start = {k: v.cuda() for k, v in test_lbfgs._start(torch.float64).items()}
    ref = test_lbfgs._torch_run(torch.optim.LBFGS, kwargs, torch.float64, 4, start=start, swap_at=1,
                                other=test_lbfgs.LBFGS)
    ours = test_lbfgs._torch_run(test_lbfgs.LBFGS, kwargs, torch.float64, 4, start=start, swap_at=1,
                                 other=torch.optim.LBFGS)
    for step, ((rp, rl, rsd), (op, ol, osd)) in enumerate(zip(ref, ours)):
        test_lbfgs._same(op, rp, f"params after step {step}")
        test_lbfgs._same(ol, rl, f"loss of step {step}")
        test_lbfgs._same(osd, rsd, f"state dict after step {step}")


# small tensors (stepped as one flat buffer on CUDA too), a large one and a 0-d one
MANY = [(32, 16), (40,)] * 8 + [(300, 300), ()]


def _tensors(shapes, generator, dtype):
    return [torch.randn(s, generator=generator, dtype=dtype).cuda() for s in shapes]


@pytest.mark.parametrize("none_grads", [False, True], ids=["all-grads", "some-none"])
@pytest.mark.parametrize("entry", OPTIMIZERS, ids=IDS)
def test_functional_eager_on_cuda_matches_torch_on_cuda(entry, none_grads):
    """The eager update on CUDA (host scalars from the counters' host values, small tensors as one
    buffer; with some None grads the counters are read from the device once a step) against
    torch's for-loop step on CUDA (the functional parity tests' reference), float64."""
    gen = torch.Generator().manual_seed(0)
    params = _tensors(MANY, gen, torch.float64)
    ref = [p.clone().requires_grad_() for p in params]
    opt_ref = entry.torch_cls(ref, foreach=False, **entry.kwargs)
    tx = entry.factory(**entry.kwargs)
    tree = {f"p{i}": p.clone() for i, p in enumerate(params)}
    state = tx.init(tree)
    for step in range(6):
        grads = _tensors(MANY, gen, torch.float64)
        if none_grads and step in (2, 3):
            grads[1] = None
        for r, g in zip(ref, grads):
            r.grad = None if g is None else g.clone()
        opt_ref.step()
        updates, state = tx.update({f"p{i}": g for i, g in enumerate(grads)}, state, tree)
        tree = fo.apply_updates(tree, updates)
        for i, r in enumerate(ref):
            torch.testing.assert_close(tree[f"p{i}"], r.detach(), rtol=1e-12, atol=1e-14,
                                       msg=lambda m: f"p{i} after step {step}: {m}")


@pytest.mark.parametrize("entry", OPTIMIZERS, ids=IDS)
def test_functional_eager_update_captured_in_a_cuda_graph_replays_like_eager(entry):
    """``update`` + ``apply_updates`` captured eagerly in a CUDA graph (outputs copied back into the
    inputs) and replayed: the eager run's params. During capture no host values are used or kept
    (a replay advances the counters without the host), so each replay steps the counters it reads."""
    gen = torch.Generator().manual_seed(0)
    names = [f"p{i}" for i in range(len(MANY))]
    params = dict(zip(names, _tensors(MANY, gen, torch.float32)))
    grads = [dict(zip(names, _tensors(MANY, gen, torch.float32))) for _ in range(5)]
    tx = entry.factory(**entry.kwargs)

    ref_tree, ref_state = params, tx.init(params)
    for g in grads:
        updates, ref_state = tx.update(g, ref_state, ref_tree)
        ref_tree = fo.apply_updates(ref_tree, updates)

    tree, state = params, tx.init(params)
    updates, state = tx.update(grads[0], state, tree)  # step 1 eagerly (lazily made state included)
    tree, state = _clone_tensors(fo.apply_updates(tree, updates)), _clone_tensors(state)
    static_grads = {k: v.clone() for k, v in grads[1].items()}
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        updates, new_state = tx.update(static_grads, state, tree)
        new_tree = fo.apply_updates(tree, updates)
        for dst, src in zip(fo.tree.flatten((tree, state))[0], fo.tree.flatten((new_tree, new_state))[0]):
            if isinstance(dst, torch.Tensor):
                dst.copy_(src)
    for g in grads[1:]:
        for k in names:
            static_grads[k].copy_(g[k])
        graph.replay()
    torch.cuda.synchronize()
    for k in names:
        torch.testing.assert_close(tree[k], ref_tree[k], rtol=1e-6, atol=1e-7, msg=lambda m: f"{k}: {m}")


def _compiled_launches(name: str, n_params: int) -> tuple[int, list, list]:
    """Triton kernel launches in the wrapper Inductor generates for the compiled pure step of
    ``fo.<name>`` on ``n_params`` CUDA tensors, with its params after one step and eager's."""
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    opt = getattr(fo, name)(lr=1e-3)
    gen = torch.Generator().manual_seed(n_params)
    params = [torch.randn((64, 32) if i % 2 else (96,), generator=gen).cuda() for i in range(n_params)]
    grads = [torch.randn(p.shape, generator=gen).cuda() for p in params]
    state = opt.init(params)

    def step(params, grads, state):
        updates, state = opt.update(grads, state, params)
        return fo.apply_updates(params, updates), state

    (got, _), code = run_and_get_code(torch.compile(step, fullgraph=True), params, grads, state)
    wrapper = "\n".join(code)
    launches = wrapper.count(".run(")
    return launches, got, step(params, grads, state)[0]


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd", "nadam", "radam", "adagrad"])
def test_compiled_step_on_cuda_launches_fewer_kernels_than_parameters(name):
    """CompiledOps' foreach operations are fused horizontally by Inductor: the compiled step on 24
    tensors launches fewer kernels than it has tensors (the per-tensor step launched one per
    tensor and one per tensor's scalar chain: 58 for Adam on 27 tensors), and computes eager's
    result."""
    few, got_few, want_few = _compiled_launches(name, 8)
    many, got_many, want_many = _compiled_launches(name, 24)
    print(f"{name}: {few} Triton launches for 8 tensors, {many} for 24")
    assert many < 24, (few, many)
    for got, want in ((got_few, want_few), (got_many, want_many)):
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["adam", "nadam", "radam"])
def test_compiled_step_on_cuda_with_cpu_tensor_hparams_matches_eager(name):
    """Tensor hyperparameters made the usual way (``torch.tensor(1e-3)``, on the CPU) with CUDA
    params: the compiled step's per-parameter scalars (``foreach_map`` on the GPU) take them."""
    torch._dynamo.reset()
    opt = getattr(fo, name)(lr=1e-3)
    params = _params()
    state = opt.init(params)
    hparams = opt.hparams._replace(lr=torch.tensor(2e-3, dtype=torch.float64))

    def step(params, grads, state, hparams):
        updates, state = opt.update(grads, state, params, hparams)
        return fo.apply_updates(params, updates), state

    compiled = torch.compile(step, fullgraph=True)
    eager_params, eager_state = params, state
    for k in range(3):
        grads = _grads(params, k)
        params, state = compiled(params, grads, state, hparams)
        eager_params, eager_state = step(eager_params, grads, eager_state, hparams)
    for p, e in zip(params, eager_params):
        torch.testing.assert_close(p, e, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("entry", OPTIMIZERS, ids=IDS)
def test_compiled_in_place_step_on_cuda_equals_update(entry):
    """``fo.step_`` compiled on CUDA (its writes one foreach add and one foreach copy, 0-d
    counters on the GPU among them) leaves params and state as ``update`` + ``apply_updates``."""
    torch._dynamo.reset()
    opt = entry.factory(**entry.kwargs)
    params = _params()
    state = opt.init(params)
    ref_params, ref_state = [p.clone() for p in params], opt.init(params)
    compiled = torch.compile(lambda g, s, p: fo.step_(opt, g, s, p), fullgraph=True)
    for k in range(3):
        grads = _grads(params, k)
        compiled(grads, state, params)
        updates, ref_state = opt.update(grads, ref_state, ref_params)
        ref_params = fo.apply_updates(ref_params, updates)
    for p, r in zip(params, ref_params):
        torch.testing.assert_close(p, r, rtol=1e-5, atol=1e-6)
    for s, r in zip(fo.tree.flatten(state)[0], fo.tree.flatten(ref_state)[0]):
        if isinstance(s, torch.Tensor):
            torch.testing.assert_close(s, r, rtol=1e-5, atol=1e-6)
