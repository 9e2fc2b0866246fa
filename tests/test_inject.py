"""inject_hyperparams / replace_hparams: schedules vs torch LR schedulers, external changes, compile."""

import pytest
import torch

import functional_optim as fo
from _composed import run_composed_parity
from functional_optim import schedules as S
from functional_optim.combine import by_name, chain, partition, tree_get, tree_set
from functional_optim.inject import inject_hyperparams, named_hparams, replace_hparams
from functional_optim.transforms import clip_by_global_norm

DTYPES = [torch.float64, torch.float32]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_scheduled_lr_matches_torch_scheduler(dtype):
    """inject_hyperparams(adam, lr=cosine) == torch Adam + CosineAnnealingLR, step by step."""
    tx = inject_hyperparams(fo.adam(betas=(0.8, 0.9)), lr=S.cosine_decay_schedule(0.1, 5, alpha=0.1))

    def make(ps):
        opt = torch.optim.Adam(ps, lr=0.1, betas=(0.8, 0.9))
        make.sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=5, eta_min=0.01)
        return opt

    state = run_composed_parity(make, tx, dtype, after_step=lambda opt, step: make.sched.step())
    assert int(state.count) == 6 and state.hyperparams["lr"].dtype == torch.float64 if dtype == torch.float64 \
        else state.hyperparams["lr"].dtype == torch.float32


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_one_schedule_drives_every_part(dtype):
    """chain(clip, partition(adamw, adamw)) with one injected lr == clip + torch AdamW groups + LambdaLR."""
    sched = S.warmup_cosine_decay_schedule(0.0, 0.05, 2, 6)
    inner = chain(clip_by_global_norm(0.5),
                  partition({"d": fo.adamw(weight_decay=0.2), "n": fo.adamw(weight_decay=0.0)},
                            by_name(lambda name, p: "d" if p.ndim >= 2 else "n")))
    tx = inject_hyperparams(inner, lr=sched)

    def make(ps):
        opt = torch.optim.AdamW([{"params": [ps[0], ps[3]], "weight_decay": 0.2},
                                 {"params": [ps[1], ps[2]], "weight_decay": 0.0}], lr=0.05)
        make.sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: sched(t) / 0.05)
        return opt

    run_composed_parity(make, tx, dtype, before_step=lambda ps, step: torch.nn.utils.clip_grad_norm_(ps, 0.5),
                        after_step=lambda opt, step: make.sched.step())


def test_set_from_outside_and_factory_form():
    params = [torch.ones(2, dtype=torch.float64)]
    tx = inject_hyperparams(fo.transforms.scale(1.0))  # no names: every unambiguous field
    state = tx.init(params)
    assert set(state.hyperparams) == {"step_size"}
    state = tree_set(state, step_size=-3.0)
    updates, state = tx.update([torch.ones(2, dtype=torch.float64)], state, params)
    assert torch.equal(updates[0], torch.full((2,), -3.0, dtype=torch.float64))

    make = inject_hyperparams(fo.adam)  # optax's form
    tx = make(lr=S.linear_schedule(1.0, 0.0, 4), betas=(0.5, S.constant_schedule(0.9)), amsgrad=True)
    state = tx.init(params)
    assert state.inner_state.max_exp_avg_sq[0] is not None  # amsgrad reached the factory
    for _ in range(2):
        _, state = tx.update([torch.ones(2, dtype=torch.float64)], state, params)
    assert float(state.hyperparams["lr"]) == 0.75 and float(state.hyperparams["betas"][1]) == 0.9
    with pytest.raises(ValueError, match="cannot be scheduled"):
        inject_hyperparams(fo.adam)(amsgrad=lambda t: True)  # static: fixed when the optimizer is made


def test_replace_hparams_names_and_errors():
    tx = chain(clip_by_global_norm(1.0), partition({"d": fo.adamw(weight_decay=0.2), "n": fo.adamw(weight_decay=0.0)},
                                                   {"w": "d", "b": "n"}))
    assert named_hparams(tx.hparams) == {"max_norm": 1.0, "lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8}
    hp = replace_hparams(tx.hparams, {"lr": 0.5, "d.weight_decay": 0.3})
    assert hp[1]["d"].lr == 0.5 and hp[1]["n"].lr == 0.5
    assert hp[1]["d"].weight_decay == 0.3 and hp[1]["n"].weight_decay == 0.0
    with pytest.raises(ValueError, match="no hyperparameter named \\['momentum'\\]"):
        replace_hparams(tx.hparams, momentum=0.9)
    with pytest.raises(TypeError, match="must be a number, a 0-d tensor or a schedule"):
        inject_hyperparams(fo.adam(), lr="high")


def test_compiled_schedule_never_recompiles():
    from torch._dynamo.testing import CompileCounter

    tx = inject_hyperparams(chain(clip_by_global_norm(1.0), fo.adamw()),
                            lr=S.warmup_cosine_decay_schedule(0.0, 0.1, 2, 8), max_norm=1.0)
    params = [torch.randn(3, 2), torch.randn(2)]

    def step(params, grads, state):
        updates, state = tx.update(grads, state, params)
        return fo.apply_updates(params, updates), state

    counter = CompileCounter()
    compiled = torch.compile(step, fullgraph=True, backend=counter)
    p_c = p_e = params
    s_c = s_e = tx.init(params)
    for i in range(6):
        if i == 3:
            s_c, s_e = tree_set(s_c, max_norm=0.1), tree_set(s_e, max_norm=0.1)
        grads = [torch.randn(3, 2), torch.randn(2)]
        p_c, s_c = compiled(p_c, grads, s_c)
        p_e, s_e = step(p_e, grads, s_e)
        for a, b in zip(p_c, p_e):
            torch.testing.assert_close(a, b)
    assert counter.frame_count == 1
    assert float(tree_get(s_c, "hyperparams")["lr"]) == pytest.approx(S.warmup_cosine_decay_schedule(0.0, 0.1, 2, 8)(5))
