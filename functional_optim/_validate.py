"""Hyperparameter checks with torch.optim's exception types and messages (one place for all)."""

from __future__ import annotations

from typing import Any

import torch


def check_lr(lr: Any) -> None:
    if isinstance(lr, torch.Tensor) and lr.numel() != 1:
        raise ValueError("Tensor lr must be 1-element")
    if not 0.0 <= lr:
        raise ValueError(f"Invalid learning rate: {lr}")


def check_eps(eps: Any) -> None:
    if not 0.0 <= eps:
        raise ValueError(f"Invalid epsilon value: {eps}")


def check_lr_decay(lr_decay: Any) -> None:
    if not 0.0 <= lr_decay:
        raise ValueError(f"Invalid lr_decay value: {lr_decay}")


def check_initial_accumulator_value(initial_accumulator_value: Any) -> None:
    if not 0.0 <= initial_accumulator_value:
        raise ValueError(f"Invalid initial_accumulator_value value: {initial_accumulator_value}")


def check_weight_decay(weight_decay: Any) -> None:
    if not 0.0 <= weight_decay:
        raise ValueError(f"Invalid weight_decay value: {weight_decay}")


def check_momentum_decay(momentum_decay: Any) -> None:
    if not 0.0 <= momentum_decay:
        raise ValueError(f"Invalid momentum_decay value: {momentum_decay}")


def check_rho(rho: Any) -> None:
    """Adadelta's ``rho`` in [0, 1]."""
    if not 0.0 <= rho <= 1.0:
        raise ValueError(f"Invalid rho value: {rho}")


def check_betas(betas: Any) -> None:
    """Adam-style ``betas``: both in [0, 1), both floats or both tensors, tensors 1-element."""
    for i, beta in enumerate(betas):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"Invalid beta parameter at index {i}: {beta}")


def check_betas_kind(betas: Any) -> None:
    if not (
        (isinstance(betas[0], float) and isinstance(betas[1], float))
        or (isinstance(betas[0], torch.Tensor) and isinstance(betas[1], torch.Tensor))
    ):
        raise ValueError("betas must be either both floats or both Tensors")
    for i, beta in enumerate(betas):
        if isinstance(beta, torch.Tensor) and beta.numel() != 1:
            raise ValueError(f"Tensor betas[{i}] must be 1-element")


def squeeze_scalar(x: Any) -> Any:
    """A 1-element tensor becomes 0-d (as torch's ``_to_scalar``); numbers stay numbers."""
    if isinstance(x, torch.Tensor) and x.dim() != 0:
        return x.squeeze()
    return x


def float64_scalar(value: Any, device: Any = None) -> torch.Tensor:
    """``value`` (a number, a symbolic float, or a tensor) as a 0-d float64 tensor on ``device``.

    Under torch.compile a Python float that changes between calls (a scheduler's ``lr``, a
    statistic kept as a float in ``param_groups``) is specialized by ``torch.tensor``/``as_tensor``
    (one graph per value); ``ones * value`` is exact and Dynamo keeps it symbolic after its first
    change. Eagerly, and for tensors, ``torch.as_tensor``.
    """
    if torch.compiler.is_compiling() and isinstance(value, (float, int, torch.SymFloat, torch.SymInt)) \
            and not isinstance(value, bool):
        return torch.ones((), dtype=torch.float64, device=device) * value
    return torch.as_tensor(value, dtype=torch.float64, device=device)


def scalar_hparam(value: Any, where: str) -> Any:
    """One hyperparameter as the math needs it: a number, or a 0-d tensor.

    A 1-element tensor is squeezed to 0-d, as torch does with a 1-element ``lr``; any other
    tensor is refused, since it would broadcast into the parameters and change their shapes.
    """
    if not isinstance(value, torch.Tensor) or value.dim() == 0:
        return value
    if value.numel() != 1:
        raise ValueError(
            f"{where} must be a number or a 0-d (or 1-element) tensor, got a tensor of shape {tuple(value.shape)}"
        )
    return value.reshape(())


def scalar_hparams(record: Any, name: str) -> Any:
    """``record`` (an hparams NamedTuple, fields possibly tuples such as ``betas``) with every
    tensor field made 0-d by :func:`scalar_hparam`; errors name the transformation and field."""
    if record is None:
        return None
    changed = {}
    for field, value in zip(record._fields, record):
        if isinstance(value, tuple):
            new = tuple(scalar_hparam(v, f"{name} hparams.{field}[{i}]") for i, v in enumerate(value))
            if any(n is not v for n, v in zip(new, value)):
                changed[field] = new
        else:
            new = scalar_hparam(value, f"{name} hparams.{field}")
            if new is not value:
                changed[field] = new
    return record._replace(**changed) if changed else record


def check_hparams_record(name: str, defaults: Any, given: Any) -> Any:
    """The record ``update`` runs with: ``defaults`` when ``given`` is ``None``, else ``given``
    checked for its type and made scalar (see :func:`scalar_hparams`)."""
    if given is None:
        return defaults
    if not isinstance(given, type(defaults)):
        raise TypeError(f"{name}.update expects hparams of type {type(defaults).__name__}, got {type(given).__name__}")
    return scalar_hparams(given, name)


def check_adafactor(lr: Any, beta2_decay: Any, eps: Any, d: Any, weight_decay: Any) -> None:
    """torch.optim.Adafactor's checks, in its order (``eps`` is ``(eps1 | None, eps2)``)."""
    if isinstance(lr, torch.Tensor) and lr.numel() != 1:
        raise ValueError("Tensor lr must be 1-element")
    if not 0.0 <= lr:
        raise ValueError(f"Learning rate should be >= 0 but is: {lr}")
    if not 0.0 >= beta2_decay:
        raise ValueError(f"beta2_decay should be <= 0 but is: {beta2_decay}")
    if eps[0] is not None and not 0.0 <= eps[0]:
        raise ValueError(f"epsilon1 should be >= 0 but is: {eps[0]}")
    if not 0.0 <= eps[1]:
        raise ValueError(f"epsilon2 should be >= 0 but is: {eps[1]}")
    if not 1.0 <= d:
        raise ValueError(f"Clipping threshold d should be >= 1 but is: {d}")
    if not 0.0 <= weight_decay:
        raise ValueError(f"weight_decay should be >= 0 but is: {weight_decay}")
