"""How far compiled ``fo.soap`` ends from ``pytorch_optimizer.SOAP``, with a fixed or a fresh gradient.

A fixed gradient keeps each Kronecker factor at that gradient's rank: its null space is a free
choice that rounding makes, and the gradient's components there (rounding noise) come out of
Adam's division at O(1). Eager kernels and a graph run without Inductor (``aot_eager``) round as
the reference does; Inductor's fused kernels do not, and choose another basis. A fresh random
gradient each step fills the factors' rank, and all of them agree.

    .venv/bin/python -m benchmarks.soap_null_space            # fixed and fresh gradients, 25 steps
    .venv/bin/python -m benchmarks.soap_null_space --steps 10

Prints, per gradient kind and backend, the largest parameter difference from the reference.
"""

from __future__ import annotations

import argparse

import torch

import functional_optim as fo

SHAPES = ((64, 256), (256, 64), (256,))
LR = 3e-3


def gradients(steps: int, fixed: bool, gen: torch.Generator) -> list:
    """``steps`` lists of gradients for :data:`SHAPES`: one list repeated, or a fresh one per step."""
    def draw():
        return [0.1 * torch.randn(shape, generator=gen) for shape in SHAPES]

    if fixed:
        one = draw()
        return [one] * steps
    return [draw() for _ in range(steps)]


def reference_params(base: list, grads: list) -> list:
    import pytorch_optimizer

    params = [p.clone().requires_grad_() for p in base]
    opt = pytorch_optimizer.SOAP(params, lr=LR)
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = g.clone()
        opt.step()
    return [p.detach() for p in params]


def functional_params(base: list, grads: list, backend: str) -> list:
    tx = fo.soap(lr=LR)

    def step(params, step_grads, state):
        updates, state = tx.update(step_grads, state, params)
        return fo.apply_updates(params, updates), state

    torch._dynamo.reset()
    run = step if backend == "eager" else torch.compile(step, backend=backend, fullgraph=True)
    params = [p.clone() for p in base]
    state = tx.init(params)
    for step_grads in grads:
        params, state = run(params, step_grads, state)
    return params


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=25)
    args = parser.parse_args(argv)
    gen = torch.Generator().manual_seed(0)
    base = [torch.randn(shape, generator=gen) for shape in SHAPES]
    print(f"torch {torch.__version__}; shapes {SHAPES}; lr {LR}; {args.steps} steps")
    for fixed in (True, False):
        grads = gradients(args.steps, fixed, gen)
        expected = reference_params(base, grads)
        for backend in ("eager", "aot_eager", "inductor"):
            got = functional_params(base, grads, backend)
            diff = max(float((a - b).abs().max()) for a, b in zip(got, expected))
            print(f"{'fixed' if fixed else 'fresh'} gradient, {backend}: max |p - reference| = {diff:.2g}")


if __name__ == "__main__":
    main()
