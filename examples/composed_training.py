"""A functional training loop with a composed optimizer, compiled end to end.

    clip_by_global_norm(1.0)                       -- like torch.nn.utils.clip_grad_norm_
    -> AdamW, weight decay on matrices only        -- partition: biases and norms get none
    with a warmup-cosine learning rate              -- inject_hyperparams: lr lives in the state
    over 4 accumulated micro-batches per step       -- MultiSteps
    skipping any step whose gradient is not finite  -- apply_if_finite

The model is an ``nn.Module`` used through ``torch.func.functional_call``; the gradient comes
from ``torch.func.grad``; the whole step (forward, backward, optimizer) is one
``torch.compile(fullgraph=True)`` graph, and the changing learning rate never recompiles it.

Run: ``python examples/composed_training.py`` (about a minute on 2 CPU cores, almost all of it compiling).
"""

from __future__ import annotations

import math
import time

import torch
from torch import nn

import functional_optim as fo
from functional_optim.accumulate import MultiSteps
from functional_optim.combine import by_name, chain, partition
from functional_optim.inject import inject_hyperparams
from functional_optim.schedules import warmup_cosine_decay_schedule
from functional_optim.transforms import apply_if_finite, clip_by_global_norm

MICRO_BATCHES = 4
STEPS = 100  # optimizer steps, i.e. STEPS * MICRO_BATCHES calls


def make_data(n: int = 2048, seed: int = 0):
    """Points in the plane labelled by which of three spiral arms they lie on."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (n,), generator=g)
    radius = torch.rand(n, generator=g)
    angle = 4.0 * radius + labels * (2 * math.pi / 3) + 0.2 * torch.randn(n, generator=g)
    x = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1)
    return x, labels


def main() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 128), nn.LayerNorm(128), nn.GELU(), nn.Linear(128, 3))
    names = [n for n, _ in model.named_parameters()]
    params = [p.detach() for p in model.parameters()]
    # The optimizer works on the list of tensors (see the README: dict trees whose leaves are all
    # constants do not trace under dynamo with optree 0.20); names give each leaf its label.
    labels = by_name(lambda name, p: "decay" if p.ndim >= 2 else "no_decay")(dict(zip(names, params)))
    labels = [labels[n] for n in names]

    adamw = partition({"decay": fo.adamw(weight_decay=0.05), "no_decay": fo.adamw(weight_decay=0.0)}, labels)
    schedule = warmup_cosine_decay_schedule(0.0, 1e-2, warmup_steps=6, decay_steps=STEPS, end_value=1e-4)
    optimizer = MultiSteps(
        apply_if_finite(inject_hyperparams(chain(clip_by_global_norm(1.0), adamw), lr=schedule)),
        every_k_schedule=MICRO_BATCHES,
    ).gradient_transformation()

    def loss_fn(params, x, y):
        logits = torch.func.functional_call(model, dict(zip(names, params)), (x,))
        return nn.functional.cross_entropy(logits, y)

    def train_step(params, state, x, y):
        grads, loss = torch.func.grad_and_value(loss_fn)(params, x, y)
        updates, state = optimizer.update(grads, state, params)
        return fo.apply_updates(params, updates), state, loss

    compiled_step = torch.compile(train_step, fullgraph=True)

    x, y = make_data()
    micro = x.shape[0] // (STEPS * MICRO_BATCHES) * 4
    state = optimizer.init(params)
    start = time.perf_counter()
    for call in range(STEPS * MICRO_BATCHES):
        i = (call * micro) % (x.shape[0] - micro)
        params, state, loss = compiled_step(params, state, x[i:i + micro], y[i:i + micro])
        if call % (10 * MICRO_BATCHES) == MICRO_BATCHES - 1:
            lr = state.inner_opt_state.inner_state.hyperparams["lr"]
            print(f"step {call // MICRO_BATCHES + 1:3d}  loss {loss.item():.4f}  lr {lr.item():.2e}  "
                  f"({time.perf_counter() - start:.0f} s)")
    with torch.no_grad():
        final = loss_fn(params, x, y).item()
        accuracy = (torch.func.functional_call(model, dict(zip(names, params)), (x,)).argmax(1) == y).float().mean()
    print(f"full-data loss {final:.4f}, accuracy {accuracy.item():.1%}, "
          f"skipped steps {int(state.inner_opt_state.total_notfinite)}")


if __name__ == "__main__":
    main()
