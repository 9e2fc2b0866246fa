"""Learn the learning rate by differentiating through unrolled optimizer steps.

The functional update is pure, so the loss after K inner Adam steps is a differentiable function
of Adam's ``lr`` (a 0-d tensor in its hparams record). An outer loop does gradient descent on
log(lr) with that hypergradient (Maclaurin et al., 2015; Baydin et al., 2018) — the same
machinery MAML uses for learning an initialisation. Data is generated here.
Run:  python examples/meta_learning.py
"""

import torch
from torch.func import functional_call

import functional_optim as fo


def main(outer_steps: int = 30, inner_steps: int = 5, seed: int = 0) -> float:
    torch.manual_seed(seed)
    x = torch.randn(64, 4, dtype=torch.float64)
    y = x @ torch.tensor([1.5, -2.0, 0.5, 1.0], dtype=torch.float64) + 0.3
    model = torch.nn.Linear(4, 1).double()
    init = {k: v.detach() for k, v in model.named_parameters()}

    def loss_fn(params):
        return ((functional_call(model, params, (x,)).squeeze(-1) - y) ** 2).mean()

    optimizer = fo.adam()
    log_lr = torch.tensor(-4.0, dtype=torch.float64, requires_grad=True)  # lr = e^-4 ~ 0.018
    meta_opt = torch.optim.Adam([log_lr], lr=0.1)

    for outer in range(outer_steps + 1):
        hparams = optimizer.hparams._replace(lr=log_lr.exp())
        params = {k: v.clone().requires_grad_() for k, v in init.items()}
        state = optimizer.init(params)
        for _ in range(inner_steps):
            grads = torch.autograd.grad(loss_fn(params), list(params.values()), create_graph=True)
            updates, state = optimizer.update(dict(zip(params, grads)), state, params, hparams)
            params = fo.apply_updates(params, updates)
        final_loss = loss_fn(params)
        meta_opt.zero_grad()
        final_loss.backward()  # hypergradient d loss_K / d log(lr), through all K updates
        meta_opt.step()
        if outer % 10 == 0:
            print(f"outer {outer:3d}  lr {log_lr.exp().item():.4f}  loss after {inner_steps} steps "
                  f"{final_loss.item():.4f}")
    return final_loss.item()


if __name__ == "__main__":
    main()
