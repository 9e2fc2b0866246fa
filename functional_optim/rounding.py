"""Stochastic rounding of float32 to bfloat16, with pure, counter-based randomness.

Rounding to nearest loses every change smaller than half a unit in the last place (ulp): a
bfloat16 weight near 1.0 has an ulp of 2^-7 = 0.0078, so an update of 1e-4 added to it, rounded to
nearest, leaves it where it was, step after step, and training stalls. Stochastic rounding rounds
``x`` up to the next bfloat16 value with probability ``(x - lo) / (hi - lo)`` and down to ``lo``
otherwise (``lo``, ``hi`` the two bfloat16 neighbours of ``x``), so ``E[round(x)] = x``: small
updates accumulate in expectation (Gupta et al., 2015, "Deep Learning with Limited Numerical
Precision", https://arxiv.org/abs/1502.02551; torchao's and heavyball's bf16 optimizers use it).

How: bfloat16 is the upper 16 bits of float32, so adding 16 random bits to the low half of the
float32 bit pattern and clearing that half carries into the kept part with exactly that
probability, on the magnitude (the sign is the top bit), so negatives round symmetrically.

Randomness design. A *key* is a 0-d int64 tensor (or a Python int); the random bits of element
``j`` of a tensor are an integer hash of ``(key, j)``, computed with tensor ops. Nothing holds a
generator: the same key gives the same bits eagerly, under ``torch.compile(fullgraph=True)``
(a key that changes value is a tensor input: no recompile), under ``torch.func.vmap`` (a batched
key gives each member its own bits) and on any device. Derive a fresh key for every use with
:func:`fold_in` (JAX's name for the same idea)::

    seed = torch.tensor(0)                                   # once
    key = fo.fold_in(seed, step)                             # each step (step: an int or a 0-d tensor)
    params = fo.apply_updates(params, updates, stochastic_rounding_key=key)

``apply_updates`` folds each leaf's position into the key, so two leaves never share bits. The
hash is a 32-bit xor-shift-multiply mix, fine for rounding noise, not for cryptography; it is not
torch's random stream.
"""

from __future__ import annotations

from typing import Union

import torch
from torch import Tensor

from ._kernels.grouped import _flat, _unflat

__all__ = ["stochastic_round", "fold_in", "Key"]

#: a key: a 0-d integer tensor, or a Python int
Key = Union[int, Tensor]

_MASK32 = 0xFFFFFFFF
_LOW16 = 0xFFFF
_HIGH16 = -0x10000  # 0xFFFF0000 as an int32: clears the bits bfloat16 drops
_FOLD = 0x2545F491  # an odd constant, so that data 0 does not hash to the key's own mix


def _mix32(x: Tensor) -> Tensor:
    """A 32-bit integer hash (xor-shift-multiply; multipliers below 2^31, so int64 never overflows)."""
    x = x & _MASK32
    x = x ^ (x >> 16)
    x = (x * 0x45D9F3B) & _MASK32
    x = x ^ (x >> 16)
    x = (x * 0x45D9F3B) & _MASK32
    return x ^ (x >> 16)


def _as_key(key: Key, device: torch.device) -> Tensor:
    """``key`` as a 0-d int64 tensor on ``device``; anything but an integer scalar is refused."""
    if isinstance(key, Tensor):
        if key.is_floating_point() or key.is_complex() or key.dtype == torch.bool:
            raise TypeError(f"a stochastic rounding key must be an integer tensor, got {key.dtype}")
        if key.dim() != 0:
            raise ValueError(f"a stochastic rounding key must be a 0-d tensor, got shape {tuple(key.shape)}")
        return key.to(device=device, dtype=torch.int64)
    if isinstance(key, bool) or not isinstance(key, int):
        raise TypeError(f"a stochastic rounding key must be an int or a 0-d integer tensor, got {type(key).__name__}")
    return torch.tensor(key & ((1 << 63) - 1), dtype=torch.int64, device=device)


def check_key(key: Key) -> None:
    """``TypeError``/``ValueError`` unless ``key`` is an int or a 0-d integer tensor."""
    _as_key(key, key.device if isinstance(key, Tensor) else None)


def _key32(key: Tensor) -> Tensor:
    """All 64 bits of an int64 key mixed into 32."""
    return _mix32(key ^ _mix32(key >> 32))


def _fold_in(key: Tensor, data: Tensor) -> Tensor:
    """:func:`fold_in` on tensors, elementwise over ``data`` (one pass for many leaves' keys)."""
    return _mix32(_key32(key) ^ _mix32(data + _FOLD))


def fold_in(key: Key, data: Key) -> Tensor:
    """A new key from ``key`` and ``data`` (a step count, a leaf's index ...): a 0-d int64 tensor.

    Pure and deterministic: the same inputs give the same key, different ``data`` give
    (with overwhelming probability) unrelated keys. ``data`` may be a 0-d integer tensor (a step
    counter inside a compiled step: no recompile as it advances) or a Python int. Example:
    ``key = fo.fold_in(seed, step)``.
    """
    device = key.device if isinstance(key, Tensor) else data.device if isinstance(data, Tensor) else None
    k = _as_key(key, device)
    return _fold_in(k, _as_key(data, k.device))


def _bits16(key32: Tensor, index: Tensor) -> Tensor:
    """16 random bits (int32 in ``[0, 2^16)``) per element: the low half of the hash of
    ``key32 ^ index``. One hash per element: the mix is a bijection of 32-bit integers, so the
    elements of a tensor (fewer than 2^32) never share an input, and its low 16 bits over
    consecutive indices are uniform and uncorrelated to the precision the tests measure."""
    return (_mix32(key32 ^ index) & _LOW16).to(torch.int32)


def _round_with_bits(x32: Tensor, bits: Tensor) -> Tensor:
    """float32 ``x32`` to bfloat16, rounding up (in magnitude) where ``bits`` (16 per element)
    carry past the half that bfloat16 drops; non-finite values as they are."""
    finite = torch.isfinite(x32)
    raw = torch.where(finite, x32, torch.zeros_like(x32)).detach().view(torch.int32)
    up_or_down = ((raw + bits) & _HIGH16).view(torch.float32)  # the low half is zero: exact in bfloat16
    return torch.where(finite, up_or_down, x32.detach()).to(torch.bfloat16)


def stochastic_round(x: Tensor, dtype: torch.dtype, key: Key) -> Tensor:
    """``x`` rounded stochastically to ``dtype`` (``torch.bfloat16``): unbiased, ``E[result] = x``.

    Each element becomes one of its two bfloat16 neighbours, ``lo <= x <= hi``, the upper one
    with probability ``(x - lo) / (hi - lo)`` (an exactly representable ``x`` stays as it is); the
    random bits are a hash of ``key`` and the element's row-major index (see the module
    docstring), so the result is a pure function of ``(x, key)``, whatever ``x``'s strides.
    ``x`` is a real floating tensor; float16 and bfloat16 become float32 exactly, float64 is first
    rounded to nearest float32 (a bias below 2^-24 relative). Infinities and NaN pass as they
    are; a finite ``x`` above bfloat16's largest value may round to infinity, as its upper
    neighbour is. Signed zeros keep their sign.

    Differentiable as the plain cast is (straight-through: the gradient is the identity) where
    ``x`` requires grad. Runs under ``torch.compile(fullgraph=True)`` and ``torch.func.vmap``.

    Example::

        y = fo.stochastic_round(x, torch.bfloat16, fo.fold_in(torch.tensor(0), step))
    """
    if dtype != torch.bfloat16:
        raise ValueError(f"stochastic_round rounds to torch.bfloat16 (the upper half of a float32), got {dtype}")
    if not isinstance(x, Tensor) or not x.is_floating_point():
        got = x.dtype if isinstance(x, Tensor) else type(x).__name__
        raise TypeError(f"stochastic_round needs a real floating tensor, got {got}")
    k = _as_key(key, x.device)
    x32 = x.to(torch.float32)
    index = torch.arange(x32.numel(), dtype=torch.int64, device=x32.device).reshape(x32.shape)
    out = _round_with_bits(x32, _bits16(_key32(k), index))
    if x.requires_grad:
        nearest = x32.to(torch.bfloat16)
        out = nearest + (out - nearest).detach()
    return out


def add_stochastic_flat(params: list, updates: list, key: Key, positions: list) -> list:
    """``[stochastic_round(float32(p) + float32(u), bfloat16, fold_in(key, i)) for p, u, i in zip(params,
    updates, positions)]``, the same bits, computed on one flat buffer (the eager path of
    :func:`~functional_optim.apply_updates` for many small bfloat16 parameters: a fixed number of
    ops instead of some twenty per parameter).

    ``params``: contiguous tensors on one device; ``updates``: tensors of one dtype, shaped like
    them. Each element's key is its parameter's folded key and its index the one it has inside its
    parameter, so the result is what the per-parameter calls give. The results are views of one
    new buffer, in the parameters' shapes."""
    device = params[0].device
    k = _as_key(key, device)
    numels = torch.tensor([p.numel() for p in params], dtype=torch.int64, device=device)
    leaf_keys32 = _key32(_fold_in(k, torch.tensor(positions, dtype=torch.int64, device=device)))
    total = _flat(params).to(torch.float32) + _flat(updates).to(torch.float32)
    starts = torch.cumsum(numels, 0) - numels
    index = torch.arange(total.numel(), dtype=torch.int64, device=device) - torch.repeat_interleave(starts, numels)
    out = _round_with_bits(total, _bits16(torch.repeat_interleave(leaf_keys32, numels), index))
    return _unflat(out, params)
