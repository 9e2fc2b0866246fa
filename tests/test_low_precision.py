"""Low-precision state and parameters: moment dtypes (``mu_dtype``/``nu_dtype``/``accumulator_dtype``),
stochastic rounding (``fo.stochastic_round``, ``fo.fold_in``, ``apply_updates(stochastic_rounding_key=)``,
``compat.TransformationOptimizer(stochastic_rounding_seed=)``), the measurement script and the recipe."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch._dynamo.testing import CompileCounter
from torch.func import grad, vmap

import compat
import functional_optim as fo
from _reference_parity import check_compiled_no_recompile, check_none_grads_and_purity, check_vmap, small_tree
from _versions import skip_unless_vmap_batches_dtype_views
from functional_optim import scaling as S

BF16 = torch.bfloat16


def _neighbours(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The bfloat16 values just below and just above each float32 ``x`` (equal where exact), from
    round to nearest and ``nextafter`` (independent of the bit trick under test)."""
    near = x.to(BF16)
    toward = torch.nextafter(near, torch.where(near.float() < x, torch.full_like(near, math.inf),
                                               torch.full_like(near, -math.inf)))
    other = torch.where(near.float() == x, near, toward)
    lo = torch.minimum(near.float(), other.float())
    hi = torch.maximum(near.float(), other.float())
    return lo, hi


def _values(n: int = 96, seed: int = 0) -> torch.Tensor:
    """float32 values across binades and signs, most between two bfloat16 values."""
    g = torch.Generator().manual_seed(seed)
    mags = torch.exp2(torch.randint(-20, 20, (n,), generator=g).float()) * (1 + torch.rand(n, generator=g))
    signs = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    return mags * signs


# ---------------------------------------------------------------------------- stochastic_round
def test_each_result_is_a_neighbour_and_the_mean_is_x():
    skip_unless_vmap_batches_dtype_views()
    x = torch.cat([_values(), torch.tensor([1 + 2 ** -9, 1 + 2 ** -12, -(1 + 3 * 2 ** -10), 1e-40, -3e-39])])
    n = 4000
    keys = torch.arange(n, dtype=torch.int64)
    draws = vmap(lambda k: fo.stochastic_round(x, BF16, k))(keys).float()  # (n, len(x)), a key per draw
    lo, hi = _neighbours(x)
    assert bool(((draws == lo) | (draws == hi)).all())
    p = torch.where(hi > lo, (x - lo) / (hi - lo), torch.zeros_like(x)).double()
    se = (hi - lo).double() * torch.sqrt(p * (1 - p) / n)
    err = (draws.double().mean(0) - x.double()).abs()
    assert bool((err <= 5 * se + 1e-30 * (se == 0)).all()), (err / se).max()
    assert bool((hi > lo).all())  # every value here lies strictly between two bfloat16 values
    # both neighbours occur where each is likely enough: no stuck bit pattern
    likely = (p > 0.05) & (p < 0.95)
    assert bool(((draws == lo).any(0) & (draws == hi).any(0))[likely].all())


def test_many_elements_with_one_key_average_to_x():
    x = torch.full((200_000,), 1 + 2 ** -9)  # a quarter of the way from 1 to 1 + 2^-7
    r = fo.stochastic_round(x, BF16, torch.tensor(7)).float()
    assert set(r.unique().tolist()) == {1.0, 1 + 2 ** -7}
    se = 2 ** -7 * math.sqrt(0.25 * 0.75 / x.numel())
    assert abs(r.mean().item() - x[0].item()) < 5 * se


def test_representable_values_and_specials_pass_unchanged():
    exact = torch.tensor([0.0, -0.0, 1.0, -2.5, 2 ** -130, 3.3895314e38, math.inf, -math.inf]).to(BF16).float()
    for k in range(20):
        r = fo.stochastic_round(exact, BF16, k)
        assert torch.equal(r.float(), exact)
        assert torch.equal(torch.signbit(r), torch.signbit(exact))
    nan = fo.stochastic_round(torch.tensor([math.nan, 1.0]), BF16, 0)
    assert nan.isnan()[0] and nan[1] == 1.0


def test_same_key_same_bits_different_keys_differ():
    x = torch.full((4096,), 1 + 2 ** -8)  # halfway: each element is a coin flip
    a = fo.stochastic_round(x, BF16, torch.tensor(3))
    assert torch.equal(a, fo.stochastic_round(x, BF16, torch.tensor(3)))
    assert torch.equal(a, fo.stochastic_round(x, BF16, 3))  # an int key is the same key
    b = fo.stochastic_round(x, BF16, torch.tensor(4))
    assert 0.4 < (a != b).float().mean() < 0.6  # independent coins agree half of the time
    # elements of one call get independent bits too
    assert 0.45 < (a.float() > 1).float().mean() < 0.55


def test_fold_in_is_deterministic_and_separates_data():
    seed = torch.tensor(11)
    keys = [fo.fold_in(seed, s) for s in range(200)]
    assert all(k.dtype == torch.int64 and k.dim() == 0 for k in keys)
    assert len({int(k) for k in keys}) == 200
    assert torch.equal(fo.fold_in(seed, 5), fo.fold_in(11, torch.tensor(5, dtype=torch.int32)))
    assert not torch.equal(fo.fold_in(seed, 5), fo.fold_in(12, 5))
    assert not torch.equal(fo.fold_in(fo.fold_in(seed, 1), 2), fo.fold_in(fo.fold_in(seed, 2), 1))
    assert int(fo.fold_in(2 ** 40 + 3, 0)) != int(fo.fold_in(3, 0))  # the key's high bits count


def test_bits_follow_the_element_index_not_the_layout():
    x = (1 + torch.rand(6, 5) * 2 ** -7).t()  # non-contiguous
    assert torch.equal(fo.stochastic_round(x, BF16, 1), fo.stochastic_round(x.contiguous(), BF16, 1))


def test_input_dtypes():
    x = 1 + torch.rand(1000, dtype=torch.float64) * 2 ** -7
    r = fo.stochastic_round(x, BF16, 0)
    assert r.dtype == BF16
    assert torch.equal(r, fo.stochastic_round(x.float(), BF16, 0))  # float64 goes through float32
    h = torch.randn(50).to(torch.float16)
    assert torch.equal(fo.stochastic_round(h, BF16, 0), fo.stochastic_round(h.float(), BF16, 0))
    b = torch.randn(50).to(BF16)
    assert torch.equal(fo.stochastic_round(b, BF16, 0), b)  # already bfloat16: exact


def test_bad_arguments_are_refused():
    x = torch.randn(3)
    with pytest.raises(ValueError, match="bfloat16"):
        fo.stochastic_round(x, torch.float16, 0)
    with pytest.raises(TypeError, match="floating"):
        fo.stochastic_round(torch.arange(3), BF16, 0)
    with pytest.raises(TypeError, match="integer"):
        fo.stochastic_round(x, BF16, torch.tensor(1.0))
    with pytest.raises(TypeError, match="int"):
        fo.stochastic_round(x, BF16, 1.5)
    with pytest.raises(TypeError, match="int"):
        fo.stochastic_round(x, BF16, True)
    with pytest.raises(ValueError, match="0-d"):
        fo.stochastic_round(x, BF16, torch.tensor([1, 2]))
    with pytest.raises(TypeError, match="int"):
        fo.fold_in(0, 0.5)


def test_compiled_fullgraph_equals_eager_and_a_new_key_does_not_recompile():
    torch._dynamo.reset()
    counter = CompileCounter()
    fn = torch.compile(lambda x, k: fo.stochastic_round(x, BF16, k), fullgraph=True, backend=counter)
    x = 1 + torch.rand(257) * 2 ** -6
    for k in range(4):
        key = torch.tensor(k)
        assert torch.equal(fn(x, key), fo.stochastic_round(x, BF16, key))
    assert counter.frame_count == 1
    torch._dynamo.reset()


def test_compiled_with_inductor_equals_eager():
    torch._dynamo.reset()
    fn = torch.compile(lambda x, k: fo.stochastic_round(x, BF16, fo.fold_in(k, 3)), fullgraph=True)
    x = torch.randn(33, 7)
    assert torch.equal(fn(x, torch.tensor(5)), fo.stochastic_round(x, BF16, fo.fold_in(5, 3)))
    torch._dynamo.reset()


def test_vmap_over_keys_and_values_equals_a_loop():
    skip_unless_vmap_batches_dtype_views()
    xs = torch.randn(4, 10)
    keys = torch.arange(4) * 7
    out = vmap(lambda x, k: fo.stochastic_round(x, BF16, k))(xs, keys)
    for i in range(4):
        assert torch.equal(out[i], fo.stochastic_round(xs[i], BF16, keys[i]))


def test_gradient_is_straight_through():
    x = torch.randn(5, requires_grad=True)
    (fo.stochastic_round(x, BF16, 0).float() * torch.arange(5.0)).sum().backward()
    assert torch.equal(x.grad, torch.arange(5.0))
    g = grad(lambda t: (fo.stochastic_round(t, BF16, 0).float() ** 2).sum())(torch.ones(3))
    assert torch.equal(g, torch.full((3,), 2.0))
    y = fo.stochastic_round(x, BF16, 0)
    assert torch.equal(y, fo.stochastic_round(x.detach(), BF16, 0))  # the same values as without grad


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_draws_the_cpu_bits():
    """Integer ops only: the same key gives the same rounding on any device (a CPU key included)."""
    x = torch.randn(1000) * 3
    key = fo.fold_in(4, 2)
    on_cuda = fo.stochastic_round(x.cuda(), BF16, key.cuda())
    assert on_cuda.is_cuda and torch.equal(on_cuda.cpu(), fo.stochastic_round(x, BF16, key))
    params = [(1 + torch.rand(64)).to(BF16) for _ in range(10)]
    updates = [torch.randn(64) * 1e-3 for _ in range(10)]
    cpu = fo.apply_updates(params, updates, stochastic_rounding_key=key)
    gpu = fo.apply_updates([p.cuda() for p in params], [u.cuda() for u in updates], stochastic_rounding_key=key)
    assert all(torch.equal(a, b.cpu()) for a, b in zip(cpu, gpu))


# ---------------------------------------------------------------------------- apply_updates
def _mixed_tree(seed=0):
    g = torch.Generator().manual_seed(seed)
    params = {"a": (1 + torch.rand(8, 4, generator=g)).to(BF16), "b": torch.randn(5, generator=g),
              "c": (1 + torch.rand(6, generator=g)).to(BF16), "d": torch.randn((), generator=g).to(BF16)}
    updates = {"a": torch.randn(8, 4, generator=g) * 1e-3, "b": torch.randn(5, generator=g) * 1e-3,
               "c": None, "d": torch.randn((), generator=g).to(BF16) * 1e-3}
    return params, updates


def test_apply_updates_default_path_is_unchanged():
    params, updates = _mixed_tree()
    plain = fo.apply_updates(params, updates)
    assert all(torch.equal(plain[k], fo.apply_updates(params, updates, stochastic_rounding_key=None)[k])
               for k in params)
    rounded = fo.apply_updates(params, updates, stochastic_rounding_key=torch.tensor(9))
    assert torch.equal(rounded["b"], plain["b"])  # float32 leaves: as without a key
    assert rounded["c"] is params["c"]  # a None update keeps the parameter
    assert all(rounded[k].dtype == params[k].dtype for k in params)


def test_apply_updates_rounds_each_bfloat16_leaf_with_its_own_key():
    params, updates = _mixed_tree()
    key = torch.tensor(9)
    out = fo.apply_updates(params, updates, stochastic_rounding_key=key)
    # leaf order of the flattened dict: a, b, c, d
    for i, k in ((0, "a"), (3, "d")):
        expected = fo.stochastic_round(params[k].float() + updates[k].float(), BF16, fo.fold_in(key, i))
        assert torch.equal(out[k], expected), k
    # the updates are below half an ulp: round to nearest drops them all, stochastic rounding not
    assert torch.equal(fo.apply_updates(params, updates)["a"], params["a"])
    assert not torch.equal(out["a"], params["a"])
    # two equal leaves get different bits
    same = fo.apply_updates([params["a"], params["a"]], [updates["a"], updates["a"]], stochastic_rounding_key=key)
    assert not torch.equal(same[0], same[1])


def test_many_bfloat16_leaves_eagerly_give_the_per_leaf_bits(monkeypatch):
    """The eager flat path (one buffer for many small bfloat16 params) draws each element's bits
    from its own leaf's key and its index in that leaf: the per-leaf results, bit for bit."""
    import functional_optim.base as base

    flat_calls = []
    def counted(*args):
        flat_calls.append(1)
        return fo.rounding.add_stochastic_flat(*args)

    monkeypatch.setattr(base, "add_stochastic_flat", counted)
    g = torch.Generator().manual_seed(0)
    shapes = [(3, 4), (7,), (), (5, 2), (1,), (16,), (2, 2, 2), (9,), (4, 3)]
    params = [(1 + torch.rand(s, generator=g)).to(BF16) for s in shapes]
    params.insert(4, torch.randn(6, generator=g))  # a float32 leaf in between: position 4
    key = fo.fold_in(2, 1)
    for dtype in (torch.float32, BF16):
        updates = [torch.randn(p.shape, generator=g).to(dtype) * 1e-3 for p in params]
        out = fo.apply_updates(params, updates, stochastic_rounding_key=key)
        for i, (p, u) in enumerate(zip(params, updates)):
            if p.dtype == BF16:
                expected = fo.stochastic_round(p.float() + u.float(), BF16, fo.fold_in(key, i))
            else:
                expected = p + u.to(p.dtype)
            assert out[i].shape == p.shape and torch.equal(out[i], expected), (dtype, i)
    assert len(flat_calls) == 2
    # a non-contiguous bfloat16 param among them: per leaf, the same numbers
    params[0] = (1 + torch.rand(4, 3, generator=g)).to(BF16).t()
    updates = [torch.randn(p.shape, generator=g) * 1e-3 for p in params]
    out = fo.apply_updates(params, updates, stochastic_rounding_key=key)
    assert torch.equal(out[0], fo.stochastic_round(params[0].float() + updates[0], BF16, fo.fold_in(key, 0)))
    assert len(flat_calls) == 2
    # the flat path's results feed the next step as they are (views of one buffer)
    params[0] = params[0].contiguous()
    first = fo.apply_updates(params, updates, stochastic_rounding_key=key)
    again = fo.apply_updates(first, updates, stochastic_rounding_key=fo.fold_in(key, 1))
    assert len(flat_calls) == 4
    expected = fo.stochastic_round(first[1].float() + updates[1], BF16, fo.fold_in(fo.fold_in(key, 1), 1))
    assert torch.equal(again[1], expected)


def test_the_bits_of_neighbouring_elements_and_steps_are_uncorrelated():
    x = torch.full((100_000,), 1 + 2 ** -8)  # halfway: each element a fair coin
    coins = [(fo.stochastic_round(x, BF16, fo.fold_in(0, s)).float() > 1).double() for s in range(3)]
    for c in coins:
        assert abs(c.mean().item() - 0.5) < 0.01
        assert abs(torch.corrcoef(torch.stack([c[:-1], c[1:]]))[0, 1].item()) < 0.02  # neighbours
    for a, b in ((0, 1), (1, 2)):  # the same element at consecutive steps
        assert abs(torch.corrcoef(torch.stack([coins[a], coins[b]]))[0, 1].item()) < 0.02


def test_apply_updates_refuses_a_bad_key_before_anything():
    params, updates = _mixed_tree()
    with pytest.raises(TypeError, match="integer"):
        fo.apply_updates(params, updates, stochastic_rounding_key=torch.tensor(0.5))
    with pytest.raises(TypeError, match="int"):
        fo.apply_updates({"b": params["b"]}, {"b": updates["b"]}, stochastic_rounding_key="seed")


def _quadratic(n=256, seed=0):
    """bfloat16 weights in [1, 2) (an ulp of 2^-7) and a float32 target at most 0.05 away."""
    g = torch.Generator().manual_seed(seed)
    w0 = (1 + torch.rand(n, generator=g) * 0.9).to(BF16)
    target = w0.float() + (torch.rand(n, generator=g) - 0.5) * 0.1
    return w0, target


def _quadratic_run(stochastic: bool, dtype=BF16, steps: int = 400, lr: float = 0.01):
    """SGD on 0.5 |w - target|^2: each update is at most lr * 0.05 = 5e-4, an eighth of half an ulp.
    SGD from parts (``scale_by_learning_rate``): ``fo.sgd`` rounds inside its update (see below)."""
    w0, target = _quadratic()
    params = {"w": w0.to(dtype)}
    tx = fo.scale_by_learning_rate(lr)
    state = tx.init(params)
    seed = torch.tensor(1)
    for step in range(steps):
        grads = {"w": (params["w"].float() - target).to(dtype)}
        updates, state = tx.update(grads, state, params)
        key = fo.fold_in(seed, step) if stochastic else None
        params = fo.apply_updates(params, updates, stochastic_rounding_key=key)
    return 0.5 * ((params["w"].float() - target) ** 2).mean().item(), params["w"], w0, target


def test_stochastic_rounding_trains_where_round_to_nearest_stalls():
    loss_rtn, w_rtn, w0, target = _quadratic_run(stochastic=False)
    loss_sr, w_sr, _, _ = _quadratic_run(stochastic=True)
    loss_f32, _, _, _ = _quadratic_run(stochastic=False, dtype=torch.float32)
    loss0 = 0.5 * ((w0.float() - target) ** 2).mean().item()
    assert torch.equal(w_rtn, w0)  # round to nearest: not one weight ever moved
    assert loss_rtn == pytest.approx(loss0)
    assert loss_f32 < 0.001 * loss0  # (1 - lr)^400 = 0.018: float32 gets there
    # stochastic rounding follows float32 in expectation, to within bfloat16's resolution there:
    # the residual is a fraction of an ulp (2^-7) per weight, far below the stalled loss
    assert loss_sr < 0.05 * loss0, (loss_sr, loss0)
    residual = (w_sr.float() - target).abs()
    assert residual.mean() < 0.5 * 2 ** -7 and residual.max() <= 3 * 2 ** -7  # measured: 0.40 and 2.0 ulps


def test_torch_exact_aliases_round_inside_their_update_the_building_blocks_do_not():
    """The documented limit: ``fo.sgd``, ``fo.adam`` ... compute the new parameter in its own dtype
    as torch does and return ``new - p``, so on bfloat16 params a sub-ulp update is already lost;
    a chain of building blocks returns the update itself, which stochastic rounding can add."""
    params = {"w": torch.ones(4, dtype=BF16)}
    grads = {"w": torch.full((4,), 0.05, dtype=BF16)}
    for alias in (fo.sgd(lr=1e-4), fo.adam(lr=1e-4), fo.adamw(lr=1e-4)):
        updates, _ = alias.update(grads, alias.init(params), params)
        assert torch.equal(updates["w"], torch.zeros(4, dtype=BF16))
    for parts in (fo.scale_by_learning_rate(1e-4), fo.chain(fo.scale_by_adam(), fo.scale_by_learning_rate(1e-4))):
        updates, _ = parts.update(grads, parts.init(params), params)
        assert bool((updates["w"] < 0).all())


def test_a_training_step_compiles_once_with_stochastic_rounding():
    torch._dynamo.reset()
    w0, target = _quadratic(64)
    tx = fo.chain(fo.scale_by_adam(), fo.scale_by_learning_rate(1e-3))

    def train_step(params, state, step, seed):
        grads = {"w": (params["w"].float() - target).to(BF16)}
        updates, state = tx.update(grads, state, params)
        return fo.apply_updates(params, updates, stochastic_rounding_key=fo.fold_in(seed, step)), state

    counter = CompileCounter()
    compiled = torch.compile(train_step, fullgraph=True, backend=counter)
    p_c = p_e = {"w": w0}
    s_c = s_e = tx.init(p_c)
    seed = torch.tensor(3)
    for step in range(4):
        p_c, s_c = compiled(p_c, s_c, torch.tensor(step), seed)
        p_e, s_e = train_step(p_e, s_e, torch.tensor(step), seed)
        assert torch.equal(p_c["w"], p_e["w"]), step  # aot_eager: the same ops, the same bits
    assert counter.frame_count == 1
    torch._dynamo.reset()


def test_apply_updates_under_vmap_with_batched_keys():
    skip_unless_vmap_batches_dtype_views()
    params = (1 + torch.rand(3, 10)).to(BF16)
    updates = torch.randn(3, 10) * 1e-3
    keys = torch.tensor([1, 2, 3])
    out = vmap(lambda p, u, k: fo.apply_updates({"w": p}, {"w": u}, stochastic_rounding_key=k)["w"])(
        params, updates, keys)
    for i in range(3):
        single = fo.apply_updates({"w": params[i]}, {"w": updates[i]}, stochastic_rounding_key=keys[i])["w"]
        assert torch.equal(out[i], single)


# ---------------------------------------------------------------------------- moment dtypes
BLOCKS = {
    # name: (factory taking dtype keywords, {state field: keyword})
    "scale_by_adam": (lambda **kw: S.scale_by_adam(**kw), {"mu": "mu_dtype", "nu": "nu_dtype"}),
    "scale_by_adam_nesterov": (lambda **kw: S.scale_by_adam(nesterov=True, **kw), {"mu": "mu_dtype", "nu": "nu_dtype"}),
    "scale_by_adam_no_bias_correction": (lambda **kw: S.scale_by_adam(bias_correction=False, eps_root=1e-8, **kw),
                                         {"mu": "mu_dtype", "nu": "nu_dtype"}),
    "scale_by_rms": (lambda **kw: S.scale_by_rms(0.9, initial_scale=0.5, bias_correction=True, **kw),
                     {"nu": "nu_dtype"}),
    "scale_by_stddev": (lambda **kw: S.scale_by_stddev(0.9, initial_scale=1.0, eps_in_sqrt=False, **kw),
                        {"mu": "mu_dtype", "nu": "nu_dtype"}),
    "ema": (lambda **kw: S.ema(0.9, **kw), {"ema": "accumulator_dtype"}),
}


def _grads(seed, like):
    g = torch.Generator().manual_seed(100 + seed)
    return {k: None if (seed == 2 and k == "b") else torch.randn(v.shape, generator=g) for k, v in like.items()}


@pytest.mark.parametrize("name", list(BLOCKS))
def test_init_keeps_each_moment_in_its_dtype(name):
    factory, fields = BLOCKS[name]
    params = small_tree(0)
    default = factory().init(params)
    low = factory(**{kw: BF16 for kw in fields.values()}).init(params)
    for field in fields:
        assert all(t.dtype == torch.float32 for t in getattr(default, field).values())
        assert all(t.dtype == BF16 for t in getattr(low, field).values())
        for k, v in getattr(low, field).items():  # the same initial values, rounded
            assert torch.equal(v, getattr(default, field)[k].to(BF16))
    assert all(c.dtype == torch.int32 for c in low.count.values())
    if len(fields) == 2:  # one moment low, the other in the param's dtype
        field, kw = next(iter(fields.items()))
        one = factory(**{kw: BF16}).init(params)
        other = [f for f in fields if f != field][0]
        assert all(t.dtype == BF16 for t in getattr(one, field).values())
        assert all(t.dtype == torch.float32 for t in getattr(one, other).values())


@pytest.mark.parametrize("name", list(BLOCKS))
def test_a_low_precision_step_is_the_float32_step_on_the_upcast_state_stored_rounded(name):
    """The semantics, exactly: the update is what the float32-state block computes from the stored
    moments read back in float32, and the new moments are its new moments rounded to nearest."""
    factory, fields = BLOCKS[name]
    low = factory(**{kw: BF16 for kw in fields.values()})
    full = factory()
    params = small_tree(0)
    state = low.init(params)
    for step in range(1, 6):
        grads = _grads(step, params)
        upcast = state._replace(**{f: {k: v.float() for k, v in getattr(state, f).items()} for f in fields})
        expected, expected_state = full.update(grads, upcast, params)
        out, state = low.update(grads, state, params)
        for k in params:
            if grads[k] is None:
                assert out[k] is None
                continue
            assert out[k].dtype == torch.float32
            assert torch.equal(out[k], expected[k]), (step, k)
        for f in fields:
            for k, v in getattr(state, f).items():
                assert v.dtype == BF16
                assert torch.equal(v, getattr(expected_state, f)[k].to(BF16)), (step, f, k)
        assert all(torch.equal(state.count[k], expected_state.count[k]) for k in params)


@pytest.mark.parametrize("name", list(BLOCKS))
def test_float32_moments_are_bitwise_the_default(name):
    factory, fields = BLOCKS[name]
    for dtype in (torch.float32, torch.float64):
        explicit = factory(**{kw: dtype for kw in fields.values()})
        default = factory()
        params = small_tree(0, dtype)
        s_e, s_d = explicit.init(params), default.init(params)
        for step in range(1, 5):
            grads = {k: None if v is None else v.to(dtype) for k, v in _grads(step, params).items()}
            o_e, s_e = explicit.update(grads, s_e, params)
            o_d, s_d = default.update(grads, s_d, params)
            for a, b in zip(fo.tree.flatten((o_e, s_e))[0], fo.tree.flatten((o_d, s_d))[0]):
                assert (a is None and b is None) or (a.dtype == b.dtype and torch.equal(a, b))


def test_scale_by_adam_float32_moments_still_torch_adam():
    """Default moments: chain(scale_by_adam, lr) against torch.optim.Adam, step by step."""
    params = [torch.randn(4, 3), torch.randn(5)]
    ref = [p.clone().requires_grad_() for p in params]
    opt = torch.optim.Adam(ref, lr=0.01, betas=(0.8, 0.95), eps=1e-6, foreach=False)
    tx = fo.chain(fo.scale_by_adam(0.8, 0.95, 1e-6, mu_dtype=torch.float32, nu_dtype=torch.float32),
                  fo.scale_by_learning_rate(0.01))
    state = tx.init(params)
    for step in range(5):
        grads = [torch.randn(p.shape) for p in params]
        for p, g in zip(ref, grads):
            p.grad = g.clone()
        opt.step()
        updates, state = tx.update(grads, state, params)
        params = fo.apply_updates(params, updates)
        for a, b in zip(params, ref):
            torch.testing.assert_close(a, b.detach(), rtol=1e-5, atol=1e-6)


def test_bfloat16_params_with_float32_moments_compute_in_float32():
    params = {"w": torch.randn(4, 3).to(BF16)}
    tx = S.scale_by_adam(mu_dtype=torch.float32, nu_dtype=torch.float32)
    state = tx.init(params)
    assert state.mu["w"].dtype == torch.float32 and state.nu["w"].dtype == torch.float32
    g = {"w": torch.randn(4, 3).to(BF16)}
    out, state = tx.update(g, state, params)
    assert out["w"].dtype == torch.float32 and state.mu["w"].dtype == torch.float32
    ref, _ = S.scale_by_adam().update({"w": g["w"].float()}, S.scale_by_adam().init({"w": params["w"].float()}))
    assert torch.equal(out["w"], ref["w"])


@pytest.mark.parametrize("name", list(BLOCKS))
def test_state_check_accepts_exactly_the_moment_dtype_and_names_the_path(name):
    factory, fields = BLOCKS[name]
    params = small_tree(0)
    grads = _grads(1, params)
    low = factory(**{kw: BF16 for kw in fields.values()})
    full = factory()
    block_name = name.split("_nesterov")[0].split("_no_bias")[0]
    for field in fields:
        # float32 moments where bfloat16 ones are expected, and the other way round
        wrong = low.init(params)
        wrong = wrong._replace(**{field: {**getattr(wrong, field), "w": getattr(wrong, field)["w"].float()}})
        with pytest.raises(ValueError, match=rf"{block_name}: state\.{field} at \['w'\] has dtype torch\.float32, "
                                             rf"expected torch\.bfloat16"):
            low.update(grads, wrong, params)
        low_field = full.init(params)._replace(**{field: getattr(low.init(params), field)})
        with pytest.raises(ValueError, match=rf"{block_name}: state\.{field} at .* expected torch\.float32"):
            full.update(grads, low_field, params)
        half = low.init(params)
        half = half._replace(**{field: {**getattr(half, field), "b": getattr(half, field)["b"].to(torch.float16)}})
        with pytest.raises(ValueError, match=r"at \['b'\] has dtype torch\.float16"):
            low.update(grads, half, params)


@pytest.mark.parametrize("name", list(BLOCKS))
def test_complex_leaves_need_the_default_dtype(name):
    factory, fields = BLOCKS[name]
    kw = next(iter(fields.values()))
    params = {"z": torch.randn(3, dtype=torch.complex64), "r": torch.randn(2)}
    with pytest.raises(ValueError, match=rf"{kw} is a real dtype; the complex leaf at \['z'\]"):
        factory(**{kw: BF16}).init(params)
    tx = factory(**{kw: BF16})
    state = tx.init({"z": torch.randn(3), "r": torch.randn(2)})
    with pytest.raises(ValueError, match=r"complex leaf at \['z'\]"):
        tx.update({"z": torch.randn(3, dtype=torch.complex64), "r": torch.randn(2)}, state, params)
    factory().update({"z": torch.randn(3, dtype=torch.complex64), "r": None}, factory().init(params), params)


@pytest.mark.parametrize("bad", [torch.int32, "bfloat16", torch.complex64])
def test_a_moment_dtype_must_be_a_real_floating_dtype(bad):
    with pytest.raises(TypeError, match="mu_dtype must be a real floating torch.dtype"):
        S.scale_by_adam(mu_dtype=bad)
    with pytest.raises(TypeError, match="nu_dtype"):
        S.scale_by_rms(nu_dtype=bad)
    with pytest.raises(TypeError, match="nu_dtype"):
        S.scale_by_stddev(nu_dtype=bad)
    with pytest.raises(TypeError, match="accumulator_dtype"):
        S.ema(0.9, accumulator_dtype=bad)


def _low(name):
    factory, fields = BLOCKS[name]
    return fo.chain(factory(**{kw: BF16 for kw in fields.values()}), fo.scale_by_learning_rate(0.1))


@pytest.mark.parametrize("name", list(BLOCKS))
def test_low_precision_moments_none_grads_and_purity(name):
    check_none_grads_and_purity(_low(name))


@pytest.mark.parametrize("name", ["scale_by_adam", "scale_by_stddev", "ema"])
def test_low_precision_moments_compile_without_recompiles(name):
    check_compiled_no_recompile(_low(name), [{"lr": 0.1}, {"lr": 0.05}, {"lr": 0.02}])


@pytest.mark.parametrize("name", ["scale_by_adam", "scale_by_rms", "ema"])
def test_low_precision_moments_vmap(name):
    check_vmap(_low(name))


def test_lion_mu_dtype_check_is_the_shared_one():
    tx = fo.scale_by_lion(mu_dtype=BF16)
    params = {"w": torch.randn(3)}
    with pytest.raises(ValueError, match=r"scale_by_lion: state\.mu at \['w'\] has dtype torch\.float32, "
                                         r"expected torch\.bfloat16"):
        tx.update({"w": torch.randn(3)}, fo.scale_by_lion().init(params), params)


# ---------------------------------------------------------------------------- compat
def _compat_params():
    torch.manual_seed(0)
    return [torch.nn.Parameter((1 + torch.rand(6, 4)).to(BF16)), torch.nn.Parameter(torch.randn(5)),
            torch.nn.Parameter((1 + torch.rand(3)).to(BF16))]


def _feed(params, step):
    g = torch.Generator().manual_seed(step)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g).to(p.dtype)


def test_transformation_optimizer_with_stochastic_rounding_equals_the_functional_loop():
    tx = fo.chain(fo.scale_by_adam(), fo.scale_by_learning_rate(1e-3))
    ps = _compat_params()
    opt = compat.TransformationOptimizer(ps, tx, stochastic_rounding_seed=5)
    plain_ps = _compat_params()
    plain = compat.TransformationOptimizer(plain_ps, tx)
    f_params = [p.detach().clone() for p in _compat_params()]
    f_state = tx.init(f_params)
    for step in range(4):
        _feed(ps, step), _feed(plain_ps, step)
        opt.step(), plain.step()
        updates, f_state = tx.update([p.grad for p in ps], f_state, f_params)
        key = fo.fold_in(fo.fold_in(5, 0), step)  # group 0, its step-th step
        rounded = fo.apply_updates(f_params, updates, stochastic_rounding_key=key)
        f_params = [r if p.dtype == BF16 else p + u for p, r, u in zip(f_params, rounded, updates)]
        for a, b in zip(ps, f_params):
            assert torch.equal(a.detach(), b), step
        assert torch.equal(ps[1].detach(), plain_ps[1].detach())  # float32: as without the option
    assert opt.param_groups[0]["stochastic_rounding_step"] == 4
    assert "stochastic_rounding_step" not in plain.param_groups[0]
    assert not torch.equal(ps[0].detach(), plain_ps[0].detach())  # bfloat16: not round to nearest


def test_transformation_optimizer_resumes_the_same_random_stream():
    tx = fo.chain(fo.scale_by_adam(), fo.add_decayed_weights(0.01), fo.scale_by_learning_rate(1e-3))
    full_ps = _compat_params()
    full = compat.TransformationOptimizer(full_ps, tx, stochastic_rounding_seed=1)
    first_ps = _compat_params()
    first = compat.TransformationOptimizer(first_ps, tx, stochastic_rounding_seed=1)
    for step in range(3):
        _feed(full_ps, step), _feed(first_ps, step)
        full.step(), first.step()
    saved = copy.deepcopy(first.state_dict())
    resumed_ps = [torch.nn.Parameter(p.detach().clone()) for p in first_ps]
    resumed = compat.TransformationOptimizer(resumed_ps, tx, stochastic_rounding_seed=1)
    resumed.load_state_dict(saved)
    for step in range(3, 6):
        _feed(full_ps, step), _feed(resumed_ps, step)
        full.step(), resumed.step()
    for a, b in zip(resumed_ps, full_ps):
        assert torch.equal(a.detach(), b.detach())


def test_transformation_optimizer_refuses_a_bad_seed():
    with pytest.raises(TypeError, match="stochastic_rounding_seed must be an int"):
        compat.TransformationOptimizer(_compat_params(), fo.adam(), stochastic_rounding_seed=1.0)
    with pytest.raises(TypeError, match="stochastic_rounding_seed must be an int"):
        compat.TransformationOptimizer(_compat_params(), fo.adam(), stochastic_rounding_seed=True)


def test_transformation_optimizer_trains_a_bfloat16_model_where_round_to_nearest_stalls():
    w0, target = _quadratic()

    def run(seed):
        w = torch.nn.Parameter(w0.clone())
        opt = compat.TransformationOptimizer([w], fo.scale_by_learning_rate(0.01), stochastic_rounding_seed=seed)
        for _ in range(400):
            opt.zero_grad()
            (0.5 * ((w.float() - target) ** 2).sum()).backward()
            opt.step()
        return 0.5 * ((w.detach().float() - target) ** 2).mean().item(), w.detach()

    loss0 = 0.5 * ((w0.float() - target) ** 2).mean().item()
    loss_rtn, w_rtn = run(None)
    loss_sr, _ = run(0)
    assert torch.equal(w_rtn, w0)
    assert loss_sr < 0.02 * loss0


# ---------------------------------------------------------------------------- the measurement script
def test_low_precision_benchmark_measures_bytes_and_losses():
    from benchmarks import low_precision as L

    result = L.measure(steps=8, hidden=8, n_samples=16, width=8, apply_workloads={"small": [(16,)] * 9}, reps=1)
    rows = {(what, dtype): (pb, sb) for what, dtype, pb, sb in result["bytes"]}
    n = sum(math.prod(s) for s in L._block_shapes(8))
    count_bytes = 4 * len(L._block_shapes(8)) / n  # one 4-byte step count per tensor
    assert rows[("torch.optim.AdamW", "float32")] == (4.0, pytest.approx(8 + count_bytes))
    assert rows[("fo.adamw", "float32")] == (4.0, pytest.approx(8 + count_bytes))
    assert rows[("AdamW from parts, float32 moments", "float32")][1] == pytest.approx(8 + count_bytes)
    assert rows[("AdamW from parts, mu bfloat16, nu float32", "float32")][1] == pytest.approx(6 + count_bytes)
    assert rows[("AdamW from parts, mu and nu bfloat16", "float32")][1] == pytest.approx(4 + count_bytes)
    assert rows[("AdamW from parts, mu and nu bfloat16", "bfloat16")] == (2.0, pytest.approx(4 + count_bytes))
    assert [r["name"] for r in result["runs"]] == [r.name for r in L.RUNS]
    for r in result["runs"]:
        assert len(r["losses"]) == 9 and all(math.isfinite(v) for v in r["losses"])
        assert r["losses"][-1] < r["losses"][0]
    ref, rtn = result["runs"][0], result["runs"][2]
    assert ref["param_bytes_per_param"] == 4.0 and rtn["param_bytes_per_param"] == 2.0
    meta = dict(date="d", torch=torch.__version__, python="p", platform="x", device="cpu", cpu="c", cpu_count=2,
                torch_threads=2, wall_s=1.0)
    assert [row[:2] for row in result["apply"]] == [("small", "eager")]
    assert all(ms > 0 for ms in result["apply"][0][2:])
    text = L.markdown(result, meta, "cmd")
    assert "| optimizer | params | param bytes/param | state bytes/param |" in text
    assert "stochastic rounding" in text and "`cmd`" in text and "| small | eager |" in text
    compiled = L.apply_cost({"one": [(32,)]}, reps=1, compiled=("one",), backend="aot_eager")
    assert [row[:2] for row in compiled] == [("one", "eager"), ("one", "compiled")]


# ---------------------------------------------------------------------------- the README recipe
RECIPE = '''\
import torch
from torch.func import functional_call, grad
import functional_optim as fo

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))
x, y = torch.randn(64, 8), torch.randn(64, 4)
params = {name: p.detach().to(torch.bfloat16) for name, p in model.named_parameters()}  # 2 bytes each

def loss_fn(float_params):  # forward and backward in float32, from the bfloat16 weights
    return torch.nn.functional.mse_loss(functional_call(model, float_params, (x,)), y)

adamw = fo.chain(
    fo.scale_by_adam(mu_dtype=torch.bfloat16, nu_dtype=torch.bfloat16),  # moments: 2 + 2 bytes each
    fo.add_decayed_weights(0.01),
    fo.scale_by_learning_rate(1e-3),
)
state = adamw.init(params)
seed = torch.tensor(0)
for step in range(200):
    grads = grad(loss_fn)({name: p.float() for name, p in params.items()})
    updates, state = adamw.update(grads, state, params)  # float32 math; moments stored in bfloat16
    params = fo.apply_updates(params, updates, stochastic_rounding_key=fo.fold_in(seed, step))
'''


def _recipe_loss(code: str) -> tuple[float, dict]:
    ns: dict = {"__name__": "recipe"}
    exec(compile(code, "<recipe>", "exec"), ns)
    return ns["loss_fn"]({k: v.float() for k, v in ns["params"].items()}).item(), ns


def test_recipe_bfloat16_adamw_with_stochastic_rounding_trains_like_float32():
    loss, ns = _recipe_loss(RECIPE)
    assert all(p.dtype == BF16 for p in ns["params"].values())
    adam_state = ns["state"][0]
    assert all(t.dtype == BF16 for t in (*adam_state.mu.values(), *adam_state.nu.values()))
    n = sum(p.numel() for p in ns["params"].values())
    assert fo.tree.flatten(adam_state.mu)[0][0].element_size() == 2
    assert sum(t.numel() * t.element_size() for t in (*adam_state.mu.values(), *adam_state.nu.values())) == 4 * n

    # the same recipe with float32 params and moments (the reference), and with round to nearest
    loss0, _ = _recipe_loss(RECIPE.replace("range(200)", "range(0)"))
    loss_f32, ns_f32 = _recipe_loss(RECIPE.replace("p.detach().to(torch.bfloat16)", "p.detach()").replace(
        "mu_dtype=torch.bfloat16, nu_dtype=torch.bfloat16", ""))
    loss_rtn, _ = _recipe_loss(RECIPE.replace("stochastic_rounding_key=fo.fold_in(seed, step)",
                                              "stochastic_rounding_key=None"))
    assert all(p.dtype == torch.float32 for p in ns_f32["params"].values())
    assert loss < 0.8 * loss0
    # stated tolerance: within 1% of the float32 run's loss; round to nearest lags behind it
    assert abs(loss - loss_f32) <= 0.01 * loss_f32, (loss0, loss, loss_f32, loss_rtn)
    assert loss_rtn - loss_f32 > 2 * abs(loss - loss_f32), (loss, loss_f32, loss_rtn)
