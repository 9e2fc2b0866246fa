"""optax-style building blocks (functional_optim.scaling): torch parity where torch has the
optimizer, optax's formulas otherwise, None grads, state checks, compile (no recompiles) and vmap."""

import math

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

import functional_optim as fo
from _composed import run_composed_parity
from _parity import assert_close
from functional_optim import scaling as S
from functional_optim.combine import chain
from functional_optim.transforms import add_decayed_weights, scale_by_learning_rate

DTYPES = [torch.float64, torch.float32]


# ---------------------------------------------------------------------------- torch parity
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_scale_by_adam_then_lr_is_torch_adam(dtype):
    kw = dict(lr=0.05, betas=(0.8, 0.95), eps=1e-6)
    tx = chain(S.scale_by_adam(0.8, 0.95, 1e-6), scale_by_learning_rate(0.05))
    state = run_composed_parity(lambda ps: torch.optim.Adam(ps, **kw), tx, dtype)
    # per-leaf counts: p1 had no gradient at step 2
    assert [int(state[0].count[k]) for k in ("p0", "p1", "p2", "p3")] == [6, 5, 6, 6]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_adam_blocks_compose_to_adamw_and_adam_l2(dtype):
    tx = chain(S.scale_by_adam(), add_decayed_weights(0.1), scale_by_learning_rate(0.01))
    run_composed_parity(lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.1), tx, dtype)
    tx = chain(add_decayed_weights(0.1), S.scale_by_adam(), scale_by_learning_rate(0.01))
    run_composed_parity(lambda ps: torch.optim.Adam(ps, lr=0.01, weight_decay=0.1), tx, dtype)


@pytest.mark.parametrize("centered", [False, True])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rms_and_stddev_are_torch_rmsprop(dtype, centered):
    block = (S.scale_by_stddev if centered else S.scale_by_rms)(0.9, 1e-6, eps_in_sqrt=False)
    tx = chain(block, scale_by_learning_rate(0.01))
    run_composed_parity(lambda ps: torch.optim.RMSprop(ps, lr=0.01, alpha=0.9, eps=1e-6, centered=centered),
                        tx, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rss_is_torch_adagrad(dtype):
    tx = chain(S.scale_by_rss(0.1, eps=0.0), scale_by_learning_rate(0.1))
    run_composed_parity(lambda ps: torch.optim.Adagrad(ps, lr=0.1, initial_accumulator_value=0.1, eps=0.0),
                        tx, dtype)


# ---------------------------------------------------------------------------- optax formulas
def _tree(seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(4, 3, generator=g, dtype=dtype), "b": torch.randn(3, generator=g, dtype=dtype),
            "s": torch.randn((), generator=g, dtype=dtype)}


def test_adam_nesterov_and_no_bias_correction_formulas():
    p = _tree(0)
    b1, b2, eps = 0.9, 0.99, 1e-8
    for nesterov in (False, True):
        for bc in (False, True):
            tx = S.scale_by_adam(b1, b2, eps, eps_root=1e-10, nesterov=nesterov, bias_correction=bc)
            state, mu, nu = tx.init(p), 0.0, 0.0
            for t in range(1, 4):
                g = _tree(t)["w"]
                out, state = tx.update({"w": g, "b": None, "s": None}, state, p)
                mu, nu = b1 * mu + (1 - b1) * g, b2 * nu + (1 - b2) * g * g
                c1, c2 = (1 - b1 ** t, 1 - b2 ** t) if bc else (1.0, 1.0)
                if nesterov:
                    n1 = 1 - b1 ** (t + 1) if bc else 1.0
                    m_hat = b1 * mu / n1 + (1 - b1) * g / c1
                else:
                    m_hat = mu / c1
                torch.testing.assert_close(out["w"], m_hat / (torch.sqrt(nu / c2 + 1e-10) + eps), rtol=1e-12, atol=0)
                assert out["b"] is None and int(state.count["b"]) == 0
                assert torch.equal(state.mu["b"], torch.zeros(3, dtype=torch.float64))


def test_rms_stddev_defaults_bias_correction_and_initial_scale():
    p = _tree(0)
    g = _tree(1)
    d, eps = 0.9, 1e-8
    out, st = S.scale_by_rms(d, eps, initial_scale=1.0).update(g, S.scale_by_rms(d, eps, 1.0).init(p), p)
    nu = d * 1.0 + (1 - d) * g["w"] ** 2
    torch.testing.assert_close(out["w"], g["w"] / torch.sqrt(nu + eps), rtol=1e-12, atol=0)
    tx = S.scale_by_rms(d, eps, bias_correction=True)
    out, _ = tx.update(g, tx.init(p), p)
    torch.testing.assert_close(out["w"], g["w"] / torch.sqrt(g["w"] ** 2 + eps), rtol=1e-12, atol=0)
    tx = S.scale_by_stddev(d, eps, bias_correction=True)
    out, _ = tx.update(g, tx.init(p), p)  # one step, bias-corrected: nu - mu^2 = 0
    torch.testing.assert_close(out["w"], g["w"] / math.sqrt(eps), rtol=1e-6, atol=0)


def test_trust_ratio_optax_semantics_and_extensions():
    p = {"a": torch.tensor([3.0, 4.0], dtype=torch.float64), "z": torch.zeros(2, dtype=torch.float64),
         "c": torch.tensor([30.0, 40.0], dtype=torch.float64)}
    u = {"a": torch.tensor([0.6, 0.8], dtype=torch.float64), "z": torch.tensor([1.0, 0.0], dtype=torch.float64),
         "c": torch.zeros(2, dtype=torch.float64)}
    tx = S.scale_by_trust_ratio()
    out, _ = tx.update(u, tx.init(p), p)
    torch.testing.assert_close(out["a"], u["a"] * 5.0)  # ||p|| / ||u|| = 5
    assert torch.equal(out["z"], u["z"]) and torch.equal(out["c"], u["c"])  # a zero norm: ratio 1
    out, _ = S.scale_by_trust_ratio(0.0, 0.5, 1.0).update(u, EMPTY_STATE, p)
    torch.testing.assert_close(out["a"], u["a"] * 0.5 * 5.0 / 2.0)
    out, _ = S.scale_by_trust_ratio(min_norm=2.0).update(u, EMPTY_STATE, p)
    torch.testing.assert_close(out["a"], u["a"] * 5.0 / 2.0)  # ||u|| = 1 floored at 2
    torch.testing.assert_close(out["z"], u["z"])  # ||p|| = 0 floored at 2 / ||u|| = 1 floored at 2
    out, _ = S.scale_by_trust_ratio(max_param_norm=2.5).update(u, EMPTY_STATE, p)
    torch.testing.assert_close(out["a"], u["a"] * 2.5)
    # LARS form: r = tc ||p|| / (||u|| + wd ||p||), applied to u + wd p
    out, _ = S.scale_by_trust_ratio(trust_coefficient=0.1, weight_decay=0.2).update(u, EMPTY_STATE, p)
    torch.testing.assert_close(out["a"], (u["a"] + 0.2 * p["a"]) * 0.1 * 5.0 / (1.0 + 0.2 * 5.0))
    torch.testing.assert_close(out["c"], (0.2 * p["c"]) * 0.1 / 0.2)  # ||u|| = 0 but wd ||p|| > 0
    with pytest.raises(ValueError, match="needs params"):
        tx.update(u, EMPTY_STATE)


EMPTY_STATE = fo.transforms.EmptyState()


def test_rss_ema_schedule_centralize_block_scales():
    p, g1, g2 = _tree(0), _tree(1), _tree(2)
    tx = S.scale_by_rss(0.0, 1e-7)
    out, st = tx.update(g1, tx.init(p), p)
    torch.testing.assert_close(out["w"], g1["w"] / torch.sqrt(g1["w"] ** 2 + 1e-7), rtol=1e-12, atol=0)
    out, _ = tx.update({"w": torch.zeros(4, 3, dtype=torch.float64), "b": None, "s": None}, tx.init(p), p)
    assert torch.equal(out["w"], torch.zeros(4, 3, dtype=torch.float64))  # s = 0: update 0, no NaN
    for debias in (True, False):
        tx = S.ema(0.8, debias=debias)
        st = tx.init(p)
        _, st = tx.update(g1, st, p)
        out, st = tx.update(g2, st, p)
        e = 0.8 * 0.2 * g1["w"] + 0.2 * g2["w"]
        torch.testing.assert_close(out["w"], e / (1 - 0.8 ** 2) if debias else e, rtol=1e-12, atol=0)
    tx = S.scale_by_schedule(fo.schedules.exponential_decay(1.0, 1, 0.5))
    st = tx.init(p)
    for t in range(3):
        out, st = tx.update(g1, st, p)
        torch.testing.assert_close(out["w"], g1["w"] * 0.5 ** t)
    assert int(st.count) == 3
    out, _ = S.centralize().update(g1, EMPTY_STATE)
    torch.testing.assert_close(out["w"], g1["w"] - g1["w"].mean(dim=1, keepdim=True))
    assert torch.equal(out["b"], g1["b"]) and torch.equal(out["s"], g1["s"])
    out, _ = S.scale_by_param_block_norm(1e-3).update(g1, EMPTY_STATE, p)
    torch.testing.assert_close(out["w"], g1["w"] * p["w"].norm())
    out, _ = S.scale_by_param_block_rms(1e-3).update(g1, EMPTY_STATE, p)
    torch.testing.assert_close(out["b"], g1["b"] * p["b"].pow(2).mean().sqrt())
    out, _ = S.scale_by_param_block_norm(10.0).update(g1, EMPTY_STATE, p)
    torch.testing.assert_close(out["w"], g1["w"] * 10.0)  # norm below min_scale


def test_polyak_step():
    p, g = _tree(0), _tree(1)
    sq = sum(float((x ** 2).sum()) for x in g.values())
    tx = S.scale_by_polyak(f_min=0.5, max_learning_rate=100.0)
    out, _ = tx.update(g, EMPTY_STATE, p, tx.hparams._replace(value=torch.tensor(2.0, dtype=torch.float64)))
    torch.testing.assert_close(out["w"], g["w"] * (1.5 / sq), rtol=1e-12, atol=0)
    out, _ = tx.update(g, EMPTY_STATE, p, tx.hparams._replace(value=1e9))
    torch.testing.assert_close(out["w"], g["w"] * 100.0)  # capped
    out, _ = S.scale_by_polyak(f_min=5.0, variant="sps+").update(g, EMPTY_STATE, p,
                                                                  S.ScaleByPolyakHParams(5.0, 1.0, 0.0, 2.0))
    assert torch.equal(out["w"], torch.zeros_like(g["w"]))  # negative gap clipped to 0
    zeros = {k: torch.zeros_like(v) for k, v in g.items()}
    out, _ = tx.update(zeros, EMPTY_STATE, p, tx.hparams._replace(value=2.0))
    assert torch.isfinite(out["w"]).all()
    with pytest.raises(ValueError, match="needs the loss"):
        tx.update(g, EMPTY_STATE, p)


def test_orthogonalize_uses_newton_schulz():
    g = _tree(1, torch.float32)
    out, _ = S.orthogonalize(ns_steps=3).update(g, EMPTY_STATE)
    assert torch.equal(out["w"], fo.newton_schulz(g["w"], ns_steps=3).float())
    assert torch.equal(out["b"], g["b"]) and out["w"].dtype == torch.float32
    with pytest.raises(ValueError, match="less than 100"):
        S.orthogonalize(ns_steps=100)


def test_add_noise_deterministic_reproducible_and_normal():
    p = {"w": torch.zeros(200, 100), "b": torch.zeros(3)}
    g = {"w": torch.zeros(200, 100), "b": None}
    tx = S.add_noise(eta=4.0, gamma=0.0, seed=7)
    st = tx.init(p)
    out1, st1 = tx.update(g, st, p)
    again, _ = tx.update(g, st, p)  # same state -> same noise
    assert torch.equal(out1["w"], again["w"]) and out1["b"] is None
    out2, _ = tx.update(g, st1, p)  # next step -> different noise
    other, _ = S.add_noise(4.0, 0.0, seed=8).update(g, S.add_noise(4.0, 0.0, seed=8).init(p), p)
    assert not torch.equal(out1["w"], out2["w"]) and not torch.equal(out1["w"], other["w"])
    z = out1["w"] / 2.0  # std = sqrt(eta) = 2
    assert abs(float(z.mean())) < 0.03 and abs(float(z.std()) - 1.0) < 0.03
    assert abs(float((z ** 3).mean())) < 0.06 and abs(float((z ** 4).mean()) - 3.0) < 0.15
    assert abs(float(torch.corrcoef(torch.stack([z.flatten(), (out2["w"] / 2).flatten()]))[0, 1])) < 0.03
    # annealing: std = sqrt(eta / (1 + t)^gamma)
    tx = S.add_noise(eta=1.0, gamma=2.0, seed=1)
    st = tx.init(p)
    _, st = tx.update(g, st, p)
    out, st = tx.update(g, st, p)
    assert abs(float(out["w"].std()) - 0.5) < 0.02 and int(st.count) == 2


def test_state_checks_name_the_path():
    p = _tree(0)
    tx = S.scale_by_adam()
    st = tx.init(p)
    bad = st._replace(mu={**st.mu, "w": torch.zeros(2, 3, dtype=torch.float64)})
    with pytest.raises(ValueError, match=r"state.mu at \['w'\] has shape"):
        tx.update(_tree(1), bad, p)
    with pytest.raises(TypeError, match="expects a ScaleByAdamState"):
        tx.update(_tree(1), S.ScaleByRmsState(st.count, st.nu), p)
    with pytest.raises(ValueError, match=r"state.count .*extra leaf at \[.b.\]"):
        tx.update({"w": p["w"]}, st, p)


# ---------------------------------------------------------------------------- compile and vmap
def _t(x):
    return torch.tensor(x, dtype=torch.float64)


BLOCKS = {  # name: (factory, tensor hparams for step k)
    "scale_by_adam": (lambda: S.scale_by_adam(), lambda k: S.ScaleByAdamHParams(_t(0.9 - 0.01 * k), _t(0.99),
                                                                                    _t(1e-8), _t(0.0))),
    "scale_by_adam_nesterov": (lambda: S.scale_by_adam(nesterov=True),
                               lambda k: S.ScaleByAdamHParams(_t(0.9 - 0.01 * k), _t(0.99), _t(1e-8), _t(0.0))),
    "scale_by_rms": (lambda: S.scale_by_rms(bias_correction=True),
                     lambda k: S.ScaleByRmsHParams(_t(0.9 - 0.01 * k), _t(1e-8))),
    "scale_by_stddev": (lambda: S.scale_by_stddev(initial_scale=1.0),
                        lambda k: S.ScaleByStddevHParams(_t(0.9 - 0.01 * k), _t(1e-8))),
    "scale_by_trust_ratio": (lambda: S.scale_by_trust_ratio(max_param_norm=10.0),
                             lambda k: S.ScaleByTrustRatioHParams(_t(0.0), _t(1.0 + k), _t(1e-6), _t(0.01 * k))),
    "scale_by_rss": (lambda: S.scale_by_rss(), lambda k: S.ScaleByRssHParams(_t(1e-7 * (k + 1)))),
    "scale_by_schedule": (lambda: S.scale_by_schedule(fo.schedules.cosine_decay_schedule(1.0, 10)), lambda k: None),
    "ema": (lambda: S.ema(0.9), lambda k: S.EmaHParams(_t(0.9 - 0.01 * k))),
    "centralize": (lambda: S.centralize(), lambda k: None),
    "add_noise": (lambda: S.add_noise(seed=3), lambda k: S.AddNoiseHParams(_t(0.01 * (k + 1)), _t(0.55))),
    "scale_by_param_block_norm": (lambda: S.scale_by_param_block_norm(),
                                  lambda k: S.ScaleByParamBlockHParams(_t(1e-3 * (k + 1)))),
    "scale_by_param_block_rms": (lambda: S.scale_by_param_block_rms(),
                                 lambda k: S.ScaleByParamBlockHParams(_t(1e-3 * (k + 1)))),
    "scale_by_polyak": (lambda: S.scale_by_polyak(),
                        lambda k: S.ScaleByPolyakHParams(_t(0.0), _t(1.0), _t(0.0), _t(2.0 + k))),
    "orthogonalize": (lambda: S.orthogonalize(), lambda k: S.OrthogonalizeHParams(_t(1e-7 * (k + 1)))),
}


def _inputs(step, batch=None):
    g = torch.Generator().manual_seed(100 + step)
    shape = () if batch is None else (batch,)
    tree = {"w": torch.randn(*shape, 4, 3, generator=g), "b": torch.randn(*shape, 3, generator=g),
            "s": torch.randn(shape, generator=g)}
    return tree


@pytest.mark.parametrize("name", list(BLOCKS))
def test_block_compiles_fullgraph_without_recompiles(name):
    torch._dynamo.reset()
    factory, hparams_at = BLOCKS[name]
    tx = factory()
    params = _inputs(0)

    def step(grads, state, params, hparams):
        return tx.update(grads, state, params, hparams)

    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(step, backend=counter, fullgraph=True)
    state = eager_state = tx.init(params)
    frames = []
    for k in range(3):
        grads = _inputs(k + 1)
        grads["b"] = None  # a leaf without a gradient, at every step (a new None pattern would recompile)
        out, state = compiled(grads, state, params, hparams_at(k))
        ref, eager_state = step(grads, eager_state, params, hparams_at(k))
        for key in params:
            assert (out[key] is None) == (ref[key] is None)
            if ref[key] is not None:
                torch.testing.assert_close(out[key], ref[key], rtol=1e-5, atol=1e-6)
        frames.append(counter.frame_count)
    torch._dynamo.reset()
    assert frames[1:] == [frames[0]] * 2, f"recompiled when hparams changed: {frames}"


def test_adam_trust_ratio_chain_compiles_with_inductor():
    torch._dynamo.reset()
    tx = chain(S.scale_by_adam(eps=1e-6), add_decayed_weights(0.01), S.scale_by_trust_ratio(),
               scale_by_learning_rate(1e-3))
    params = _inputs(0)
    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(tx.update, backend=counter, fullgraph=True)
    state = eager_state = tx.init(params)
    frames = []
    for k in range(3):
        hp = (tx.hparams[0], tx.hparams[1], tx.hparams[2], scale_by_learning_rate(1.0).hparams._replace(
            lr=_t(1e-3 * (k + 1))))
        grads = _inputs(k + 1)
        out, state = compiled(grads, state, params, hp)
        frames.append(counter.frame_count)
        ref, eager_state = tx.update(grads, eager_state, params, hp)
        for key in params:
            torch.testing.assert_close(out[key], ref[key], rtol=1e-5, atol=1e-7)
    torch._dynamo.reset()
    # changing the tensor lr never recompiles; the first call itself compiled twice once in a CI
    # run of the whole suite (not reproduced alone), as test_compile.py allows for its first call
    assert frames[1:] == [frames[0]] * 2, f"recompiled when the lr changed: {frames}"


@pytest.mark.parametrize("name", list(BLOCKS))
def test_block_vmaps(name):
    factory, hparams_at = BLOCKS[name]
    tx = factory()
    n = 3
    params = _inputs(0, batch=n)
    state = torch.func.vmap(tx.init)(params)
    singles = [tx.init({k: v[i] for k, v in params.items()}) for i in range(n)]
    for k in range(2):
        grads = _inputs(k + 1, batch=n)
        hp = hparams_at(k)
        out, state = torch.func.vmap(tx.update, in_dims=(0, 0, 0, None))(grads, state, params, hp)
        for i in range(n):
            ref, singles[i] = tx.update({key: v[i] for key, v in grads.items()}, singles[i],
                                        {key: v[i] for key, v in params.items()}, hp)
            for key in params:
                # orthogonalize iterates in bfloat16: batched matmuls round differently from single
                # ones, and five quintic steps amplify that to ~0.1 (as far as either is from float64)
                tol = dict(rtol=0, atol=0.15) if name == "orthogonalize" else dict(rtol=1e-5, atol=1e-6)
                torch.testing.assert_close(out[key][i], ref[key], **tol)


def test_states_load_with_weights_only(tmp_path):
    p = _tree(0)
    tx = chain(S.scale_by_adam(), S.scale_by_rms(), S.scale_by_stddev(), S.scale_by_rss(), S.ema(0.9),
               S.add_noise(seed=5), S.scale_by_schedule(lambda c: 1.0), S.centralize())
    _, state = tx.update(_tree(1), tx.init(p), p)
    torch.save(state, tmp_path / "s.pt")
    loaded = torch.load(tmp_path / "s.pt", weights_only=True)
    assert type(loaded[0]) is S.ScaleByAdamState and type(loaded[5]) is S.AddNoiseState
    assert torch.equal(loaded[0].mu["w"], state[0].mu["w"]) and int(loaded[5].seed) == 5


@pytest.mark.parametrize("name", list(BLOCKS))
def test_block_is_pure_and_keeps_dtypes(name):
    factory, hparams_at = BLOCKS[name]
    tx = factory()
    params, grads = _inputs(0), _inputs(1)
    state = tx.init(params)
    _, state = tx.update(grads, state, params, hparams_at(0))
    before = [x.clone() for x in fo.tree.flatten((params, grads, state))[0] if isinstance(x, torch.Tensor)]
    out, _ = tx.update(grads, state, params, hparams_at(1))
    # float32 leaves, the 0-d one included, get float32 updates (no promotion by float64 scalars)
    assert all(out[k].dtype == params[k].dtype for k in params), {k: out[k].dtype for k in out}
    after = [x for x in fo.tree.flatten((params, grads, state))[0] if isinstance(x, torch.Tensor)]
    assert all(torch.equal(a, b) for a, b in zip(after, before))


def test_ema_orthogonalize_compose_to_torch_muon():
    """Muon (no Nesterov, square matrices so the lr adjustment is 1) from parts:
    chain(ema(mu, debias=False), orthogonalize(), add_decayed_weights(wd), scale_by_learning_rate(lr))."""
    if not hasattr(torch.optim, "Muon"):
        pytest.skip("torch.optim.Muon needs torch >= 2.9")
    g = torch.Generator().manual_seed(0)
    params = [torch.randn(4, 4, generator=g), torch.randn(6, 6, generator=g)]
    ref = [p.clone().requires_grad_() for p in params]
    opt = torch.optim.Muon(ref, lr=0.02, weight_decay=0.1, momentum=0.9, nesterov=False)
    tx = chain(S.ema(0.9, debias=False), S.orthogonalize(), add_decayed_weights(0.1), scale_by_learning_rate(0.02))
    tree = [p.clone() for p in params]
    state = tx.init(tree)
    for step in range(4):
        grads = [torch.randn(p.shape, generator=g) for p in params]
        for r, gr in zip(ref, grads):
            r.grad = gr.clone()
        opt.step()
        updates, state = tx.update(grads, state, tree)
        tree = fo.apply_updates(tree, updates)
        for i, r in enumerate(ref):
            torch.testing.assert_close(tree[i], r.detach(), rtol=1e-5, atol=1e-6, msg=f"param {i} step {step}")
