"""Step a torch optimizer setup and a composed functional transformation on the same gradients."""

from __future__ import annotations

from typing import Callable

import torch

import functional_optim as fo
from _parity import assert_close, grads_for_step, make_params


def run_composed_parity(make_torch: Callable[[list], torch.optim.Optimizer], tx: fo.GradientTransformation,
                        dtype: torch.dtype, steps: int = 6, before_step: Callable | None = None,
                        after_step: Callable | None = None, grad_fn: Callable = grads_for_step) -> dict:
    """Params must agree after every step. ``before_step(ref_params, step)`` runs before the torch
    step (e.g. clipping), ``after_step(torch_opt, step)`` after it (e.g. a scheduler). Also checks
    that ``update`` does not mutate its inputs. Returns the final functional state."""
    params = make_params(dtype)
    names = [f"p{i}" for i in range(len(params))]
    ref = [p.clone().requires_grad_() for p in params]
    opt_ref = make_torch(ref)
    tree = {n: p.clone() for n, p in zip(names, params)}
    state = tx.init(tree)
    for step in range(steps):
        grads = grad_fn(params, step)
        for r, g in zip(ref, grads):
            r.grad = None if g is None else g.clone()
        if before_step is not None:
            before_step(ref, step)
        opt_ref.step()
        if after_step is not None:
            after_step(opt_ref, step)
        g_tree = dict(zip(names, grads))
        snapshot = {n: (tree[n].clone(), None if g is None else g.clone()) for n, g in g_tree.items()}
        updates, state = tx.update(g_tree, state, tree)
        for n, (p_before, g_before) in snapshot.items():
            assert torch.equal(tree[n], p_before), f"update mutated params[{n}]"
            assert g_before is None or torch.equal(g_tree[n], g_before), f"update mutated grads[{n}]"
        tree = fo.apply_updates(tree, updates)
        for n, r in zip(names, ref):
            assert_close(tree[n], r.detach(), dtype, f"param {n} after step {step}")
    return state
