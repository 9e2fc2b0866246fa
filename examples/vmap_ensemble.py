"""Train an ensemble of N small models at once: one optimizer state, vmapped.

``torch.func.stack_module_state`` stacks N models' parameters; ``vmap`` runs the loss, the
gradient and ``adam.update`` for all of them in one call. The result equals N separate runs
(tests/test_func_transforms.py checks it). Data is generated here.
Run:  python examples/vmap_ensemble.py
"""

import torch
from torch.func import functional_call, grad_and_value, stack_module_state, vmap

import functional_optim as fo


def main(members: int = 8, steps: int = 300, seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    x = torch.linspace(-3, 3, 128).unsqueeze(1)
    y = torch.sin(x) + 0.1 * torch.randn_like(x)
    models = [torch.nn.Sequential(torch.nn.Linear(1, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
              for _ in range(members)]
    params, _ = stack_module_state(models)
    params = {k: v.detach() for k, v in params.items()}
    template = models[0]

    def loss_fn(params, x, y):
        return ((functional_call(template, params, (x,)) - y) ** 2).mean()

    optimizer = fo.adam(lr=1e-2)

    def train_step(params, state, x, y):
        grads, loss = grad_and_value(loss_fn)(params, x, y)
        updates, state = optimizer.update(grads, state, params)
        return fo.apply_updates(params, updates), state, loss

    state = vmap(optimizer.init)(params)
    step_all = vmap(train_step, in_dims=(0, 0, None, None))
    for step in range(steps + 1):
        params, state, losses = step_all(params, state, x, y)
        if step % 100 == 0:
            print(f"step {step:4d}  loss per member " + " ".join(f"{v:.3f}" for v in losses.tolist()))
    return losses


if __name__ == "__main__":
    main()
