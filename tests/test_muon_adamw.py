"""Muon + AdamW split by shape: fo.muon_adamw and compat.MuonWithAdamW against torch.optim.Muon on
the 2-D parameters and torch.optim.AdamW on the others, run side by side on the same inputs."""

import copy
import itertools

import pytest
import torch

import compat
import functional_optim as fo
from compat.muon_adamw import MuonWithAdamW
from functional_optim.adam import AdamHParams
from functional_optim.muon import MuonHParams
from functional_optim.muon_adamw import muon_adamw

TorchMuon = getattr(torch.optim, "Muon", None)
pytestmark = pytest.mark.skipif(TorchMuon is None, reason="torch.optim.Muon needs torch >= 2.9")

SHAPES = [(5, 3), (3,), (4, 4), (), (2, 3, 2), (6, 2)]
CONFIGS = [
    dict(lr=0.05, weight_decay=0.1, momentum=0.9, nesterov=True, adjust_lr_fn=None,
         adamw_lr=3e-3, adamw_betas=(0.9, 0.95), adamw_eps=1e-10, adamw_weight_decay=0.0),
    dict(lr=0.02, weight_decay=0.0, nesterov=False, adjust_lr_fn="match_rms_adamw"),  # adamw_lr = lr
    dict(lr=0.01, adjust_lr_fn="original", ns_steps=3, adamw_weight_decay=0.1, adamw_betas=(0.8, 0.99)),
]
TOL = {torch.float64: dict(rtol=1e-12, atol=1e-14), torch.float32: dict(rtol=1e-6, atol=1e-7)}


def _params(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g).to(dtype) for s in SHAPES]


def _grads(params, step):
    """Random grads; at step 1 the first matrix and the vector get None, at step 2 one gets zeros."""
    g = torch.Generator().manual_seed(100 + step)
    out = [torch.randn(p.shape, generator=g).to(p.dtype) for p in params]
    if step == 1:
        out[0] = out[1] = None
    if step == 2:
        out[2] = torch.zeros_like(params[2])
    return out


def _split_kwargs(cfg):
    muon_kw = {k: v for k, v in cfg.items() if not k.startswith("adamw_")}
    adamw_kw = {k[len("adamw_"):]: v for k, v in cfg.items() if k.startswith("adamw_")}
    adamw_kw.setdefault("lr", cfg.get("lr", 1e-3))
    return muon_kw, adamw_kw


class _Reference:
    """torch.optim.Muon on the 2-D params and torch.optim.AdamW on the others, side by side."""

    def __init__(self, params, cfg, groups=None):
        muon_kw, adamw_kw = _split_kwargs(cfg)
        mats = [p for p in params if p.ndim == 2]
        rest = [p for p in params if p.ndim != 2]
        if groups is None:
            self.muon = TorchMuon(mats, **muon_kw)
            self.adamw = torch.optim.AdamW(rest, **adamw_kw)
        else:  # [(params, muon overrides, adamw overrides)]
            self.muon = TorchMuon([{"params": [p for p in ps if p.ndim == 2], **m} for ps, m, _ in groups], **muon_kw)
            self.adamw = torch.optim.AdamW([{"params": [p for p in ps if p.ndim != 2], **a} for ps, _, a in groups],
                                           **adamw_kw)

    def step(self):
        self.muon.step()
        self.adamw.step()


def _leaves(ps):
    return [torch.nn.Parameter(p.clone()) for p in ps]


def _set_grads(ps, grads):
    for p, g in zip(ps, grads):
        p.grad = None if g is None else g.clone()


# ------------------------------------------------------------------ functional
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("cfg", CONFIGS)
def test_functional_matches_torch_muon_and_adamw(dtype, cfg):
    params = _params(dtype)
    ref_ps = _leaves(params)
    ref = _Reference(ref_ps, cfg)
    tx = muon_adamw(**cfg)
    tree = {f"p{i}": p for i, p in enumerate(params)}
    state = tx.init(tree)
    for step in range(4):
        grads = _grads(params, step)
        _set_grads(ref_ps, grads)
        ref.step()
        updates, state = tx.update({f"p{i}": g for i, g in enumerate(grads)}, state, tree)
        tree = fo.apply_updates(tree, updates)
        for i, p in enumerate(ref_ps):
            torch.testing.assert_close(tree[f"p{i}"], p.detach(), **TOL[dtype])
    # each part keeps state only for its own leaves, in torch's layout
    muon_state = state.inner_states["muon"].momentum_buffer
    for i, p in enumerate(ref_ps):
        if p.ndim == 2:
            torch.testing.assert_close(muon_state[f"p{i}"], ref.muon.state[p]["momentum_buffer"], **TOL[dtype])
        else:
            torch.testing.assert_close(state.inner_states["adamw"].exp_avg[f"p{i}"], ref.adamw.state[p]["exp_avg"],
                                       **TOL[dtype])


def test_functional_is_the_partition_and_defaults():
    tx = muon_adamw()
    assert set(tx.hparams) == {"muon", "adamw"}
    assert tx.hparams["muon"] == fo.muon().hparams
    assert tx.hparams["adamw"] == fo.adamw().hparams
    assert muon_adamw(lr=0.3).hparams["adamw"].lr == 0.3  # adamw_lr=None: the same lr
    assert muon_adamw(lr=0.3, adamw_lr=0.1).hparams["adamw"].lr == 0.1
    assert fo.muon_adamw is muon_adamw


def test_functional_compiles_without_recompiling_on_tensor_hparams():
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    tx = muon_adamw(lr=0.05)
    params = {"w": torch.randn(4, 3), "b": torch.randn(3), "s": torch.randn(())}
    grads = {"w": torch.randn(4, 3), "b": torch.randn(3), "s": torch.randn(())}
    counter = CompileCounter()
    compiled = torch.compile(tx.update, backend=counter, fullgraph=True)
    state = state_eager = tx.init(params)
    for lr, wd, alr in ((0.05, 0.0, 1e-3), (0.01, 0.1, 3e-3), (0.2, 0.2, 1e-2)):
        hp = {"muon": MuonHParams(torch.tensor(lr), torch.tensor(wd), torch.tensor(0.9), torch.tensor(1e-7)),
              "adamw": AdamHParams(torch.tensor(alr), (torch.tensor(0.9), torch.tensor(0.99)), torch.tensor(1e-8),
                                   torch.tensor(wd))}
        updates, state = compiled(grads, state, params, hp)
        expected, state_eager = tx.update(grads, state_eager, params, hp)
        torch.testing.assert_close(updates, expected, rtol=0, atol=0)
        torch.testing.assert_close(state, state_eager, rtol=0, atol=0)
    assert counter.frame_count == 1


def test_functional_vmap_routes_by_the_per_example_shape():
    """Under vmap a (3, 4, 6) stack is three 4x6 matrices (Muon), a (3, 5) stack three vectors
    (AdamW). AdamW's elementwise math is exact per example; Muon's batched bfloat16 matmuls
    round differently from single ones, so its params agree to that noise."""
    torch.manual_seed(0)
    tx = muon_adamw(lr=0.02, adamw_lr=1e-2)
    stacked = {"w": torch.randn(3, 4, 6, dtype=torch.float64), "b": torch.randn(3, 5, dtype=torch.float64)}
    grads = [{k: torch.randn_like(v) for k, v in stacked.items()} for _ in range(2)]

    def step(p, s, g):
        updates, s = tx.update(g, s, p)
        return fo.apply_updates(p, updates), s

    ens, ens_state = stacked, torch.func.vmap(tx.init)(stacked)
    singles = [({k: v[i] for k, v in stacked.items()},) for i in range(3)]
    singles = [(p[0], tx.init(p[0])) for p in singles]
    for g in grads:
        ens, ens_state = torch.func.vmap(step)(ens, ens_state, g)
        singles = [step(p, s, {k: v[i] for k, v in g.items()}) for i, (p, s) in enumerate(singles)]
    for i, (p, s) in enumerate(singles):
        torch.testing.assert_close(ens["b"][i], p["b"], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(ens_state.inner_states["adamw"].exp_avg_sq["b"][i],
                                   s.inner_states["adamw"].exp_avg_sq["b"], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(ens_state.inner_states["muon"].momentum_buffer["w"][i],
                                   s.inner_states["muon"].momentum_buffer["w"], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(ens["w"][i], p["w"], rtol=0, atol=0.1 * 0.02 * 2)


# ------------------------------------------------------------------ compat
def _run_pair(ours, ref, ours_ps, ref_ps, dtype, steps, sched=()):
    for step in steps:
        grads = _grads([p.detach() for p in ref_ps], step)
        _set_grads(ours_ps, grads)
        _set_grads(ref_ps, grads)
        ours.step()
        ref.step()
        for s in sched:
            s.step()
        for a, b in zip(ours_ps, ref_ps):
            torch.testing.assert_close(a.detach(), b.detach(), **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("cfg", CONFIGS)
def test_compat_matches_torch_muon_and_adamw(dtype, cfg):
    params = _params(dtype)
    ours_ps, ref_ps = _leaves(params), _leaves(params)
    ours = MuonWithAdamW(ours_ps, **cfg)
    ref = _Reference(ref_ps, cfg)
    _run_pair(ours, ref, ours_ps, ref_ps, dtype, range(4))
    for a, b in zip(ours_ps, ref_ps):  # state in torch's layout, key for key
        inner = ref.muon if b.ndim == 2 else ref.adamw
        assert set(ours.state[a]) == set(inner.state[b])
        for k in inner.state[b]:
            torch.testing.assert_close(ours.state[a][k], inner.state[b][k], **TOL[dtype])


def test_compat_param_groups_are_split_by_shape():
    ps = _leaves(_params(torch.float64))
    opt = MuonWithAdamW([{"params": ps[:3], "lr": 0.1, "adamw_lr": 0.2},
                         {"params": ps[3:], "weight_decay": 0.0, "adamw_betas": (0.8, 0.9)}],
                        lr=0.05, adamw_lr=0.01)
    kinds = [(g["use_muon"], [tuple(p.shape) for p in g["params"]], g["lr"]) for g in opt.param_groups]
    assert kinds == [(True, [(5, 3), (4, 4)], 0.1), (False, [(3,)], 0.2), (True, [(6, 2)], 0.05),
                     (False, [(), (2, 3, 2)], 0.01)]
    assert opt.param_groups[2]["weight_decay"] == 0.0 and opt.param_groups[3]["weight_decay"] == 1e-2
    assert opt.param_groups[3]["betas"] == (0.8, 0.9) and opt.param_groups[1]["betas"] == (0.9, 0.999)
    assert opt.param_groups[0]["nesterov"] is True and "momentum" not in opt.param_groups[1]
    with pytest.raises(ValueError, match="more than one parameter group"):
        opt.add_param_group({"params": [ps[0]]})
    with pytest.raises(ValueError, match="unknown param group keys"):
        MuonWithAdamW([{"params": ps, "betas": (0.9, 0.9)}])
    with pytest.raises(ValueError, match="Learning rate"):
        MuonWithAdamW(ps, lr=-1.0)
    extra = torch.nn.Parameter(torch.randn(2, 2, dtype=torch.float64))
    opt.add_param_group({"params": [extra, torch.nn.Parameter(torch.randn(2, dtype=torch.float64))]})
    assert [g["use_muon"] for g in opt.param_groups[4:]] == [True, False]


def test_compat_groups_scheduler_and_state_dict_round_trip_mid_run():
    dtype = torch.float64
    cfg = dict(lr=0.05, weight_decay=0.1, adamw_lr=3e-3, adamw_weight_decay=0.05)
    params = _params(dtype)
    ours_ps, ref_ps = _leaves(params), _leaves(params)

    def make(ps):
        ours = MuonWithAdamW([{"params": ps[:3], "lr": 0.1, "adamw_lr": 1e-2}, {"params": ps[3:]}], **cfg)
        return ours, torch.optim.lr_scheduler.LambdaLR(ours, lambda s: 0.7 ** s)

    ours, ours_sched = make(ours_ps)
    ref = _Reference(ref_ps, cfg, groups=[(ref_ps[:3], {"lr": 0.1}, {"lr": 1e-2}), (ref_ps[3:], {}, {})])
    ref_scheds = [torch.optim.lr_scheduler.LambdaLR(o, lambda s: 0.7 ** s) for o in (ref.muon, ref.adamw)]
    _run_pair(ours, ref, ours_ps, ref_ps, dtype, range(3), [ours_sched, *ref_scheds])
    assert [g["lr"] for g in ours.param_groups] == pytest.approx([0.1 * 0.7 ** 3, 1e-2 * 0.7 ** 3,
                                                                  0.05 * 0.7 ** 3, 3e-3 * 0.7 ** 3])

    # save mid-run, load into a fresh optimizer over copies of the params, continue both
    saved = copy.deepcopy((ours.state_dict(), ours_sched.state_dict()))
    new_ps = [torch.nn.Parameter(p.detach().clone()) for p in ours_ps]
    new, new_sched = make(new_ps)
    new.load_state_dict(saved[0])
    new_sched.load_state_dict(saved[1])
    assert [g["lr"] for g in new.param_groups] == [g["lr"] for g in ours.param_groups]
    _run_pair(new, ref, new_ps, ref_ps, dtype, range(3, 6), [new_sched, *ref_scheds])
    for a, b in zip(new_ps, ref_ps):
        inner = ref.muon if b.ndim == 2 else ref.adamw
        for k in inner.state[b]:
            torch.testing.assert_close(new.state[a][k], inner.state[b][k], rtol=1e-12, atol=1e-14)
    # the halves step over the loaded groups and state
    assert new._muon.param_groups[0] is new.param_groups[0] and new._adamw.state is new.state


def test_compat_load_state_dict_refuses_mismatches_and_changes_nothing():
    ps = _leaves(_params(torch.float64))
    opt = MuonWithAdamW(ps, lr=0.05)
    _set_grads(ps, _grads([p.detach() for p in ps], 0))
    opt.step()
    good = opt.state_dict()
    before = copy.deepcopy(opt.state_dict())

    bad = copy.deepcopy(good)
    bad["param_groups"][0]["use_muon"] = False
    with pytest.raises(ValueError, match="use_muon"):
        opt.load_state_dict(bad)
    bad = copy.deepcopy(good)
    pid = bad["param_groups"][0]["params"][0]
    bad["state"][pid]["momentum_buffer"] = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="momentum_buffer"):
        opt.load_state_dict(bad)
    bad = copy.deepcopy(good)
    pid = bad["param_groups"][1]["params"][0]
    del bad["state"][pid]["step"]
    with pytest.raises(ValueError, match="step"):
        opt.load_state_dict(bad)
    after = opt.state_dict()
    assert after["param_groups"] == before["param_groups"]
    for k in before["state"]:
        for key, v in before["state"][k].items():
            torch.testing.assert_close(after["state"][k][key], v, rtol=0, atol=0)


def test_compat_zero_grad_closure_and_export():
    assert compat.MuonWithAdamW is MuonWithAdamW
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3), torch.nn.Linear(3, 1))
    opt = compat.MuonWithAdamW(model.parameters(), lr=0.02, adamw_lr=1e-3)
    assert sorted(g["use_muon"] for g in opt.param_groups) == [False, True]
    x = torch.randn(8, 4)

    def closure():
        opt.zero_grad()
        loss = model(x).pow(2).mean()
        loss.backward()
        return loss

    losses = [opt.step(closure).item() for _ in range(3)]
    assert losses[-1] < losses[0]
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_compat_use_muon_groups_as_muon_with_aux_adam():
    """A group with ``use_muon`` is not split (the Muon reference code's MuonWithAuxAdam groups):
    a 2-D "embedding" goes to AdamW with AdamW's own key names."""
    dtype = torch.float64
    params = _params(dtype)
    ours_ps, ref_ps = _leaves(params), _leaves(params)
    ours = MuonWithAdamW([dict(params=[ours_ps[0], ours_ps[2]], use_muon=True, lr=0.02, weight_decay=0.01),
                          dict(params=[ours_ps[5], ours_ps[1]], use_muon=False, lr=3e-3, betas=(0.9, 0.95),
                               weight_decay=0.01),
                          dict(params=[ours_ps[3], ours_ps[4]])], lr=0.05, adamw_lr=1e-2, adamw_eps=1e-10)
    assert [g["use_muon"] for g in ours.param_groups] == [True, False, False]
    assert ours.param_groups[1]["eps"] == 1e-10 and ours.param_groups[2]["lr"] == 1e-2
    muon = TorchMuon([ref_ps[0], ref_ps[2]], lr=0.02, weight_decay=0.01)
    adamw = torch.optim.AdamW([dict(params=[ref_ps[5], ref_ps[1]], lr=3e-3, betas=(0.9, 0.95), weight_decay=0.01),
                               dict(params=[ref_ps[3], ref_ps[4]], lr=1e-2)], eps=1e-10)
    ref = _Reference.__new__(_Reference)
    ref.muon, ref.adamw = muon, adamw
    _run_pair(ours, ref, ours_ps, ref_ps, dtype, range(3))
    with pytest.raises(ValueError, match="2D"):
        MuonWithAdamW([dict(params=[ours_ps[1]], use_muon=True)])
    with pytest.raises(ValueError, match="unknown param group keys"):
        MuonWithAdamW([dict(params=[ours_ps[0]], use_muon=True, betas=(0.9, 0.9))])


def test_compat_deepcopy_and_pickle_keep_the_halves_linked():
    import pickle

    dtype = torch.float64
    params = _params(dtype)
    ps = _leaves(params)
    opt = MuonWithAdamW(ps, lr=0.05, adamw_lr=1e-2)
    _set_grads(ps, _grads([p.detach() for p in ps], 0))
    opt.step()
    for clone in (copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
        assert clone._muon.state is clone.state and clone._adamw.state is clone.state
        assert clone._muon.param_groups[0] is clone.param_groups[0]
        assert clone._adamw.param_groups[0] is clone.param_groups[1]
        cps = [p for g in clone.param_groups for p in g["params"]]
        assert all(clone.state[p] for p in cps)
    clone = copy.deepcopy(opt)
    cps = [p for g in clone.param_groups for p in g["params"]]
    ops = [p for g in opt.param_groups for p in g["params"]]
    grads = _grads([p.detach() for p in ops], 3)
    _set_grads(ops, grads)
    _set_grads(cps, grads)
    opt.step()
    clone.step()
    for a, b in zip(cps, ops):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
