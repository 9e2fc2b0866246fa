"""Muon for the matrices, AdamW for everything else: the split used in practice, as one transformation."""

from __future__ import annotations

from typing import Any, Optional, Union

import optree
from torch import Tensor

from ._kernels.muon import NS_COEFFICIENTS, NS_EPS, NS_STEPS
from .adam import adamw
from .base import GradientTransformation
from .combine import partition
from .muon import muon
from .tree import is_empty

Number = Union[float, Tensor]

__all__ = ["muon_adamw", "muon_adamw_labels", "MUON_LABEL", "ADAMW_LABEL"]

#: the partition labels (and keys of ``hparams``/``state.inner_states``) of :func:`muon_adamw`
MUON_LABEL = "muon"
ADAMW_LABEL = "adamw"


def _label(p: Any) -> str:
    return MUON_LABEL if isinstance(p, Tensor) and p.ndim == 2 else ADAMW_LABEL


def muon_adamw_labels(params: Any) -> Any:
    """``params -> labels``: ``"muon"`` for each 2-D tensor, ``"adamw"`` for every other leaf.

    What ``fo.by_name(lambda name, p: "muon" if p.ndim == 2 else "adamw")`` gives, built with
    ``optree.tree_map``: under ``torch.compile`` (torch 2.13) dynamo fails to unflatten a dict whose
    leaves are all strings (``ValueError: length mismatch``), which ``by_name`` does."""
    return optree.tree_map(_label, params, is_leaf=is_empty, none_is_leaf=True)


def muon_adamw(
    lr: Number = 1e-3,
    weight_decay: Number = 0.1,
    momentum: Number = 0.95,
    nesterov: bool = True,
    ns_coefficients: tuple = NS_COEFFICIENTS,
    eps: Number = NS_EPS,
    ns_steps: int = NS_STEPS,
    adjust_lr_fn: Optional[str] = None,
    *,
    adamw_lr: Optional[Number] = None,
    adamw_betas: tuple[Number, Number] = (0.9, 0.999),
    adamw_eps: Number = 1e-8,
    adamw_weight_decay: Number = 1e-2,
) -> GradientTransformation:
    """Muon on the 2-D parameters, AdamW on the others (a composition: ``fo.partition``).

    The way Muon is used in practice (Jordan et al., 2024, "Muon: An optimizer for hidden
    layers"; ``torch.optim.Muon``'s documentation; Moonlight, Liu et al., 2025): the hidden
    layers' weight matrices get Muon, biases, norm gains (1-D), scalars and any other shape get
    AdamW. It is (with the labels built by :func:`muon_adamw_labels`)::

        fo.partition({"muon": fo.muon(lr, weight_decay, momentum, nesterov, ns_coefficients, eps,
                                      ns_steps, adjust_lr_fn),
                      "adamw": fo.adamw(adamw_lr, adamw_betas, adamw_eps, adamw_weight_decay)},
                     fo.by_name(lambda name, p: "muon" if p.ndim == 2 else "adamw"))

    so each part equals its torch optimizer step by step (``torch.optim.Muon`` on the matrices,
    ``torch.optim.AdamW`` on the rest). Muon's formula: see :func:`functional_optim.muon`
    (momentum, Newton–Schulz orthogonalisation, decoupled decay ``theta (1 - lr wd)``, the shape
    factor of ``adjust_lr_fn``); AdamW's: see :func:`functional_optim.adamw`.

    Arguments: the first eight are ``fo.muon``'s (torch.optim.Muon's names and defaults); the
    keyword-only ``adamw_*`` are ``fo.adamw``'s ``lr``, ``betas``, ``eps``, ``weight_decay``
    (torch.optim.AdamW's defaults). ``adamw_lr=None`` uses ``lr`` (one learning rate for both,
    what ``adjust_lr_fn="match_rms_adamw"`` is for; the Muon reference code instead uses e.g.
    ``lr=0.02`` for Muon and ``adamw_lr=3e-4``).

    Note: an embedding table or a classifier head is 2-D too; the Muon authors give those to
    AdamW. Use ``fo.partition`` with your own labels (e.g. ``fo.by_name({"embed*": "adamw",
    "head*": "adamw"}, default=...)``) for that; this alias routes by shape alone.

    State: ``PartitionState({"muon": MuonState, "adamw": AdamState})``, each part's state over its
    own leaves. ``update(grads, state, params, hparams=None)`` needs ``params`` (the routing is by
    the parameters' shapes, and both parts decay the weights); ``hparams`` is a dict
    ``{"muon": MuonHParams(...), "adamw": AdamHParams(...)}`` (either may be left out; floats or
    0-d tensors, so changing tensor values never recompiles under ``torch.compile``).

    Example::

        opt = fo.muon_adamw(lr=0.02, weight_decay=0.0, adamw_lr=3e-4, adamw_betas=(0.9, 0.95))
        state = opt.init(params)
        updates, state = opt.update(grads, state, params)
        params = fo.apply_updates(params, updates)
    """
    return partition(
        {
            MUON_LABEL: muon(lr, weight_decay, momentum, nesterov, ns_coefficients, eps, ns_steps, adjust_lr_fn),
            ADAMW_LABEL: adamw(lr if adamw_lr is None else adamw_lr, adamw_betas, adamw_eps, adamw_weight_decay),
        },
        muon_adamw_labels,
    )
