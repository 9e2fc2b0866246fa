"""The README's "Recipes": each recipe's code, run as written, checked against a reference.

The recipe code lives in the strings below (``SETUP`` plus one string per recipe); the README shows
the same text. Each test executes ``SETUP`` and its recipe in a fresh namespace, then re-executes
``SETUP`` alone (it seeds the generator, so the model, data and params come out the same) to run the
reference from the same starting point. ``test_readme_shows_the_tested_code`` checks that every
string appears verbatim in the README's "## Recipes" section once that section exists.
"""

import pathlib
import re

import optree
import pytest
import torch
from torch.func import grad

import functional_optim as fo
from test_low_precision import RECIPE as BF16_ADAMW_RECIPE

SETUP = '''\
import torch
from torch.func import functional_call, grad
import functional_optim as fo

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))
x, y = torch.randn(64, 8), torch.randn(64, 4)
params = {name: p.detach() for name, p in model.named_parameters()}

def loss_fn(params):
    return torch.nn.functional.mse_loss(functional_call(model, params, (x,)), y)
'''

LAMB = '''\
lamb = fo.named_chain(
    ("adam", fo.scale_by_adam(b1=0.9, b2=0.999, eps=1e-6)),
    ("decay", fo.add_decayed_weights(0.01)),
    ("trust_ratio", fo.scale_by_trust_ratio()),
    ("lr", fo.scale_by_learning_rate(1e-2)),
)
state = lamb.init(params)
for _ in range(5):
    updates, state = lamb.update(grad(loss_fn)(params), state, params)
    params = fo.apply_updates(params, updates)
'''

MUON_ADAMW = '''\
labels = fo.by_name(lambda name, p: "muon" if p.ndim == 2 else "adamw")
optimizer = fo.partition({"muon": fo.muon(lr=0.02), "adamw": fo.adamw(lr=3e-4)}, labels)
state = optimizer.init(params)
for _ in range(5):
    updates, state = optimizer.update(grad(loss_fn)(params), state, params)
    params = fo.apply_updates(params, updates)
'''

MUON_ADAMW_COMPAT = '''\
import optree
import compat

opt = compat.TransformationOptimizer(model.parameters(), fo.partition(
    {"muon": fo.muon(), "adamw": fo.adamw()},
    lambda ps: optree.tree_map(lambda p: "muon" if p.ndim == 2 else "adamw", ps)),
    **{"muon.lr": 0.02, "adamw.lr": 3e-4})
for _ in range(5):
    opt.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()
    opt.step()
'''

SCHEDULE_FREE = '''\
optimizer = fo.schedule_free_adamw(lr=1e-2, warmup_steps=2, weight_decay=0.01)
state = optimizer.init(params)
for _ in range(5):
    updates, state = optimizer.update(grad(loss_fn)(params), state, params)
    params = fo.apply_updates(params, updates)
eval_params = fo.schedule_free_eval_params(state, params)  # schedulefree's optimizer.eval()
eval_loss = loss_fn(eval_params)  # training goes on from params; nothing to switch back
'''

LOW_PRECISION = '''\
lion = fo.lion(lr=1e-3, weight_decay=0.1, mu_dtype=torch.bfloat16)
state = lion.init(params)
for _ in range(20):
    updates, state = lion.update(grad(loss_fn)(params), state, params)
    params = fo.apply_updates(params, updates)
momentum = fo.tree_get(state, fo.ScaleByLionState).mu  # bfloat16, half the bytes of float32
'''

RECIPES = {"setup": SETUP, "lamb": LAMB, "muon_adamw": MUON_ADAMW, "muon_adamw_compat": MUON_ADAMW_COMPAT,
           "schedule_free": SCHEDULE_FREE, "low_precision": LOW_PRECISION,
           # self-contained; run and checked by tests/test_low_precision.py
           "bfloat16_adamw_stochastic_rounding": BF16_ADAMW_RECIPE}


def _run(*code: str) -> dict:
    ns: dict = {"__name__": "recipe"}
    for c in code:
        exec(compile(c, "<recipe>", "exec"), ns)
    return ns


def _fresh() -> dict:
    """``SETUP`` alone: the same model, data, params and ``loss_fn`` a recipe started from."""
    return _run(SETUP)


def _functional_loop(tx, ns: dict, steps: int):
    params, loss_fn = ns["params"], ns["loss_fn"]
    state = tx.init(params)
    for _ in range(steps):
        updates, state = tx.update(grad(loss_fn)(params), state, params)
        params = fo.apply_updates(params, updates)
    return params, state


def _assert_trees_equal(a, b):
    la, sa = optree.tree_flatten(a, none_is_leaf=True)
    lb, sb = optree.tree_flatten(b, none_is_leaf=True)
    assert sa == sb
    for x, y in zip(la, lb):
        assert (x is None and y is None) or torch.equal(x, y)


def _assert_close(ours: dict, ref: dict, **tol):
    assert set(ours) == set(ref)
    for k in ref:
        torch.testing.assert_close(ours[k], ref[k], msg=lambda m: f"{k}: {m}", **tol)


def _assert_like_torch_muon_adamw(ours: dict, ref: dict):
    """AdamW's leaves (the biases) bit for bit; Muon's (the matrices) to a few float32 ulps: fo.muon
    returns ``new - old`` and ``apply_updates`` adds it back, where torch updates ``p`` in place (a
    flipped bfloat16 rounding in Newton-Schulz would add ~1e-5; a step moves the weights ~5e-3)."""
    assert set(ours) == set(ref)
    for k in ref:
        tol = dict(rtol=1e-5, atol=2e-5) if ref[k].ndim == 2 else dict(rtol=0, atol=0)
        torch.testing.assert_close(ours[k], ref[k], msg=lambda m: f"{k}: {m}", **tol)


# ---------------------------------------------------------------------------- 1. LAMB from parts
def test_recipe_lamb_from_parts_equals_fo_lamb():
    ns = _run(SETUP, LAMB)
    ref = _fresh()
    ref_params, ref_state = _functional_loop(
        fo.lamb(lr=1e-2, b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.01), ref, 5)
    _assert_trees_equal(ns["params"], ref_params)
    _assert_trees_equal(ns["state"], ref_state)

    # and the algorithm written out (optax's lamb: bias-corrected Adam, decay, per-leaf trust ratio)
    p = dict(ref["params"])
    m = {k: torch.zeros_like(v) for k, v in p.items()}
    v = {k: torch.zeros_like(t) for k, t in p.items()}
    for t in range(1, 6):
        g = grad(ref["loss_fn"])(p)
        for k in p:
            m[k] = 0.9 * m[k] + 0.1 * g[k]
            v[k] = 0.999 * v[k] + 0.001 * g[k] ** 2
            r = (m[k] / (1 - 0.9 ** t)) / ((v[k] / (1 - 0.999 ** t)).sqrt() + 1e-6) + 0.01 * p[k]
            pn, rn = p[k].norm(), r.norm()
            ratio = pn / rn if pn > 0 and rn > 0 else 1.0
            p[k] = p[k] - 1e-2 * ratio * r
    _assert_close(ns["params"], p, rtol=1e-5, atol=1e-6)
    assert not torch.equal(ns["params"]["0.weight"], ref["params"]["0.weight"])  # it did train


# ---------------------------------------------------------------------------- 2. Muon + AdamW
def _torch_muon_adamw(ref: dict, steps: int, functional_grads: bool) -> dict:
    """torch.optim.Muon on the matrices, torch.optim.AdamW on the rest, same model and data."""
    model = ref["model"]
    matrices = [p for p in model.parameters() if p.ndim == 2]
    others = [p for p in model.parameters() if p.ndim != 2]
    muon, adamw = torch.optim.Muon(matrices, lr=0.02), torch.optim.AdamW(others, lr=3e-4)
    for _ in range(steps):
        muon.zero_grad(), adamw.zero_grad()
        if functional_grads:  # the recipe's gradients, bit for bit: compare the optimizers only
            g = grad(ref["loss_fn"])({n: p.detach() for n, p in model.named_parameters()})
            for n, p in model.named_parameters():
                p.grad = g[n].clone()
        else:
            torch.nn.functional.mse_loss(model(ref["x"]), ref["y"]).backward()
        muon.step(), adamw.step()
    return {n: p.detach() for n, p in model.named_parameters()}


@pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch.optim.Muon needs torch >= 2.9")
def test_recipe_muon_adamw_partition_equals_torch_muon_plus_adamw():
    ns = _run(SETUP, MUON_ADAMW)
    ref = _torch_muon_adamw(_fresh(), 5, functional_grads=True)
    _assert_like_torch_muon_adamw(ns["params"], ref)
    # the split happened: Muon's momentum for the two matrices, AdamW's moments for the two biases
    inner = ns["state"].inner_states
    assert [t.shape for t in optree.tree_leaves(inner["muon"])] == [(16, 8), (4, 16)]
    assert all(t.ndim <= 1 for t in optree.tree_leaves(inner["adamw"]))
    start = _fresh()["params"]
    assert all(not torch.equal(ns["params"][k], start[k]) for k in start)


@pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch.optim.Muon needs torch >= 2.9")
def test_recipe_muon_adamw_as_one_torch_optimizer():
    ns = _run(SETUP, MUON_ADAMW_COMPAT)
    # the README's call as written: one param group whose keys drive each part's lr
    (group,) = ns["opt"].param_groups
    assert group["muon.lr"] == 0.02 and group["adamw.lr"] == 3e-4
    ours = {n: p.detach() for n, p in ns["model"].named_parameters()}
    ref = _torch_muon_adamw(_fresh(), 5, functional_grads=False)
    _assert_like_torch_muon_adamw(ours, ref)


# ---------------------------------------------------------------------------- 3. schedule-free
def test_recipe_schedule_free_with_eval_switch_equals_schedulefree():
    schedulefree = pytest.importorskip("schedulefree")
    ns = _run(SETUP, SCHEDULE_FREE)
    ref = _fresh()
    model = ref["model"]
    opt = schedulefree.AdamWScheduleFree(model.parameters(), lr=1e-2, warmup_steps=2, weight_decay=0.01)
    opt.train()
    for _ in range(5):
        g = grad(ref["loss_fn"])({n: p.detach() for n, p in model.named_parameters()})
        for n, p in model.named_parameters():
            p.grad = g[n].clone()
        opt.step()
    tol = dict(rtol=2e-5, atol=2e-6)  # float32, a few ulps (the reference's op order differs)
    _assert_close(ns["params"], {n: p.detach().clone() for n, p in model.named_parameters()}, **tol)
    opt.eval()  # the reference moves the model's params to x
    eval_ref = {n: p.detach().clone() for n, p in model.named_parameters()}
    _assert_close(ns["eval_params"], eval_ref, **tol)
    torch.testing.assert_close(ns["eval_loss"], ref["loss_fn"](eval_ref), **tol)
    assert not torch.allclose(ns["eval_params"]["0.weight"], ns["params"]["0.weight"])  # x != y


# ---------------------------------------------------------------------------- 4. low-precision state
def test_recipe_low_precision_lion_state_is_bfloat16_and_trains_like_float32():
    ns = _run(SETUP, LOW_PRECISION)
    momentum = ns["momentum"]
    params = ns["params"]
    assert set(momentum) == set(params)
    for k, m in momentum.items():
        assert m.dtype == torch.bfloat16 and m.shape == params[k].shape
        assert params[k].dtype == torch.float32  # only the state is low precision
        assert m.element_size() * 2 == params[k].element_size()

    ref = _fresh()
    f32_params, f32_state = _functional_loop(fo.lion(lr=1e-3, weight_decay=0.1), ref, 20)
    assert all(m.dtype == torch.float32 for m in f32_state[0].mu.values())
    loss0 = ref["loss_fn"](ref["params"])
    loss_bf16, loss_f32 = ns["loss_fn"](params), ref["loss_fn"](f32_params)
    assert loss_f32 < loss0 and loss_bf16 < loss0
    # stated tolerance: the bfloat16-state run's final loss is within 1% of the float32-state run's
    assert abs(loss_bf16 - loss_f32) <= 0.01 * loss_f32, (loss0, loss_bf16, loss_f32)

    # the momentum was rounded to bfloat16 (it differs from the float32 state) and stays within
    # bfloat16's rounding of it (2^-8 relative per step; 1% of the norm after 20 steps)
    for k, m in momentum.items():
        m32 = f32_state[0].mu[k]
        assert not torch.equal(m.float(), m32)
        assert torch.linalg.vector_norm(m.float() - m32) <= 0.01 * torch.linalg.vector_norm(m32), k

    # after one step it is exactly the float32 state rounded to bfloat16
    start = _fresh()
    lo, hi = fo.lion(lr=1e-3, weight_decay=0.1, mu_dtype=torch.bfloat16), fo.lion(lr=1e-3, weight_decay=0.1)
    p = start["params"]
    s_lo, s_hi = lo.init(p), hi.init(p)
    g = grad(start["loss_fn"])(p)
    _, s_lo = lo.update(g, s_lo, p)
    _, s_hi = hi.update(g, s_hi, p)
    for k in p:
        assert torch.equal(s_lo[0].mu[k], s_hi[0].mu[k].to(torch.bfloat16))


# ---------------------------------------------------------------------------- the README's text
def test_readme_shows_the_tested_code():
    readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    match = re.search(r"^## Recipes\n(.*?)(?=^## |\Z)", readme, re.S | re.M)
    if match is None:
        pytest.skip("README.md has no '## Recipes' section yet")
    blocks = re.findall(r"```python\n(.*?)```", match.group(1), re.S)
    for name, code in RECIPES.items():
        assert code in blocks, f"the README's Recipes section lacks the tested code of {name!r}:\n{code}"
