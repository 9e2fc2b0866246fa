"""Train a small MLP with a purely functional loop: torch.func + functional_optim.adamw.

The data is generated here (two interleaved spirals), so the example needs nothing downloaded.
Run:  python examples/train_mlp.py
"""

import math

import torch
from torch.func import functional_call, grad_and_value

import functional_optim as fo


def two_spirals(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` points per class on two interleaved spirals, with a little noise."""
    t = torch.linspace(0.25, 3 * math.pi, n)
    arm = torch.stack([t * torch.cos(t), t * torch.sin(t)], dim=1) / (3 * math.pi)
    x = torch.cat([arm, -arm]) + 0.02 * torch.randn(2 * n, 2, generator=generator)
    y = torch.cat([torch.zeros(n, dtype=torch.long), torch.ones(n, dtype=torch.long)])
    return x, y


def main(steps: int = 400, seed: int = 0) -> float:
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x, y = two_spirals(256, generator)
    model = torch.nn.Sequential(
        torch.nn.Linear(2, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64), torch.nn.Tanh(), torch.nn.Linear(64, 2)
    )
    params = {name: p.detach() for name, p in model.named_parameters()}

    def loss_fn(params, x, y):
        logits = functional_call(model, params, (x,))
        return torch.nn.functional.cross_entropy(logits, y)

    optimizer = fo.adamw(lr=1e-2, weight_decay=1e-4)
    state = optimizer.init(params)
    compute_grads = grad_and_value(loss_fn)

    for step in range(steps + 1):
        grads, loss = compute_grads(params, x, y)
        updates, state = optimizer.update(grads, state, params)
        params = fo.apply_updates(params, updates)
        if step % 100 == 0:
            accuracy = (functional_call(model, params, (x,)).argmax(1) == y).float().mean()
            print(f"step {step:4d}  loss {loss.item():.4f}  accuracy {accuracy.item():.3f}")
    return loss.item()


if __name__ == "__main__":
    main()
