"""SparseAdam as a functional optimizer (math in :mod:`functional_optim._kernels.sparse_adam`)."""

from __future__ import annotations

from typing import Any, NamedTuple, Optional, Union

import torch
from torch import Tensor

from . import _validate
from ._definition import OptimizerDefinition, make_transformation
from ._kernels.eager import inside_functorch_transform
from ._kernels.sparse_adam import sparse_adam_kernel
from .base import GradientTransformation
from .tree import flatten, flatten_like, flatten_plain, lazy_paths

Number = Union[float, Tensor]

__all__ = ["sparse_adam", "SparseAdamHParams", "SparseAdamState", "SparseAdamStatic", "SPARSE_ADAM"]


class SparseAdamHParams(NamedTuple):
    """SparseAdam's numeric hyperparameters (torch's defaults). Each may be a float or a 0-d tensor."""

    lr: Number = 1e-3
    betas: tuple[Number, Number] = (0.9, 0.999)
    eps: Number = 1e-8


class SparseAdamStatic(NamedTuple):
    """Choices fixed when the optimizer is made."""

    maximize: bool = False


class SparseAdamState(NamedTuple):
    """Per-parameter state, keyed like ``torch.optim.SparseAdam``'s ``state[p]``. ``step`` is a 0-d
    float32 tensor per leaf here; torch (and ``compat.SparseAdam``) keep a Python int."""

    step: object
    exp_avg: object
    exp_avg_sq: object


def _init_slots(p: Tensor, hparams, static) -> dict:
    zeros = lambda: torch.zeros_like(p, memory_format=torch.preserve_format)  # noqa: E731
    return {"exp_avg": zeros(), "exp_avg_sq": zeros()}


DENSE_GRADIENT_ERROR = "SparseAdam does not support dense gradients, please consider Adam instead"


def _check_grad(grad: Tensor, hparams, static) -> None:
    if not grad.is_sparse:
        raise RuntimeError(DENSE_GRADIENT_ERROR)


SPARSE_ADAM = OptimizerDefinition(
    name="sparse_adam",
    hparams_type=SparseAdamHParams,
    static_type=SparseAdamStatic,
    state_type=SparseAdamState,
    init_slots=_init_slots,
    kernel=sparse_adam_kernel,
    supports_complex=False,
    supports_sparse=True,
    check_grad=_check_grad,
)


def validate(hparams: SparseAdamHParams) -> None:
    """torch.optim.SparseAdam's hyperparameter checks (same order, exception types and messages;
    unlike Adam, ``lr`` and ``eps`` must be positive)."""
    lr, eps = hparams.lr, hparams.eps
    if isinstance(lr, Tensor) and lr.numel() != 1:
        raise ValueError("Tensor lr must be 1-element")
    if not 0.0 < lr:
        raise ValueError(f"Invalid learning rate: {lr}")
    if not 0.0 < eps:
        raise ValueError(f"Invalid epsilon value: {eps}")
    _validate.check_betas(hparams.betas)


def _check_params(leaves: list, paths) -> None:
    """Dense, real parameters (torch refuses the others at construction), errors naming the path."""
    for i, p in enumerate(leaves):
        if isinstance(p, Tensor) and p.is_sparse:
            raise ValueError(f"sparse_adam: params at {paths()[i]} is sparse; SparseAdam requires dense parameter tensors")
        if isinstance(p, Tensor) and p.is_complex():
            raise ValueError(f"sparse_adam: params at {paths()[i]} is complex; SparseAdam does not support complex "
                             f"parameters")


def _check_sparse_grads(params: Any, grads: Any) -> None:
    """The checks the shared machinery leaves to optimizers that take sparse gradients: size,
    dtype and device of each sparse gradient against its parameter, naming the path."""
    p_leaves, spec = flatten_plain(params)
    paths = lazy_paths(params)
    for i, (p, g) in enumerate(zip(p_leaves, flatten_like(spec, params, grads, "params", "grads"))):
        if not (isinstance(g, Tensor) and isinstance(p, Tensor) and g.is_sparse):
            continue
        if g.shape != p.shape:
            raise ValueError(f"grads at {paths()[i]} has shape {tuple(g.shape)}, expected {tuple(p.shape)}")
        if g.dtype != p.dtype:
            raise ValueError(f"grads at {paths()[i]} has dtype {g.dtype}, expected {p.dtype}")
        if g.device != p.device:
            raise ValueError(f"grads at {paths()[i]} is on {g.device}, expected {p.device}")


_EAGER_ONLY = "sparse_adam runs eagerly: torch.compile does not trace sparse (COO) tensors"


def _refuse_functorch_transforms() -> None:
    """Sparse COO tensors are not supported by torch.func transforms (they compute wrong shapes
    or fail deep inside): refuse clearly."""
    if inside_functorch_transform():
        raise RuntimeError("sparse_adam works on sparse (COO) gradients eagerly only: torch.func transforms "
                           "(vmap, grad, ...) do not support sparse tensors")


def sparse_adam(
    lr: Number = 1e-3,
    betas: tuple[Number, Number] = (0.9, 0.999),
    eps: Number = 1e-8,
    *,
    maximize: bool = False,
) -> GradientTransformation:
    """SparseAdam, equal to ``torch.optim.SparseAdam`` step by step: Adam (Kingma & Ba, 2014)
    masked to the entries of sparse (COO) gradients.

    For the entries a gradient holds: ``m <- m + (1 - beta1)(g - m)``,
    ``v <- v + (1 - beta2)(g^2 - v)``, ``theta <- theta - lr sqrt(1 - beta2^t) / (1 - beta1^t) *
    m / (sqrt(v) + eps)``; all other entries of ``m``, ``v`` and ``theta`` stay as they are (the
    lazy Adam of embedding tables, e.g. ``nn.Embedding(sparse=True)``, hybrid gradients included).
    ``step`` counts every update a leaf gets a gradient, also one without stored values (which
    changes nothing else), as torch.

    Gradients must be sparse: a dense gradient raises torch's ``RuntimeError`` ("SparseAdam does
    not support dense gradients, please consider Adam instead"); ``None`` skips the leaf. Params
    must be dense and real (``ValueError`` naming the path, as torch refuses them). State
    :class:`SparseAdamState` ``(step, exp_avg, exp_avg_sq)``; ``update(grads, state, params,
    hparams=None)`` takes a :class:`SparseAdamHParams`. The update is pure; the returned update
    leaves are dense (zero where the gradient has no entry).

    Eager only: torch.func transforms (``vmap``, ``grad``) do not support sparse tensors, so
    ``update`` raises a ``RuntimeError`` saying so inside one; ``torch.compile`` does not trace
    them, so ``update`` is marked ``torch.compiler.disable``: a compiled step that calls it runs
    the update eagerly (same numbers; a graph break), and ``fullgraph=True`` refuses it with
    dynamo's "Skip calling torch.compiler.disable()d function" naming this reason.
    """
    hparams = SparseAdamHParams(lr, tuple(betas), eps)
    validate(hparams)
    inner = make_transformation(SPARSE_ADAM, hparams, SparseAdamStatic(maximize))
    eager_update = torch.compiler.disable(inner.update, reason=_EAGER_ONLY)

    def init(params: Any) -> SparseAdamState:
        _check_params(flatten(params)[0], lazy_paths(params))
        return inner.init(params)

    def update(grads: Any, state: SparseAdamState, params: Any = None,
               hparams_now: Optional[SparseAdamHParams] = None):
        _refuse_functorch_transforms()
        if params is not None:
            _check_params(flatten_plain(params)[0], lazy_paths(params))
            _check_sparse_grads(params, grads)
        return eager_update(grads, state, params, hparams_now)

    return GradientTransformation(init, torch.compiler.disable(update, reason=_EAGER_ONLY), inner.hparams)
