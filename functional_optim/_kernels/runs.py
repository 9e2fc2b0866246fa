"""The runs of views the eager update hands out, and cutting a flat buffer into them quickly.

The eager functional update steps many small CPU parameters as one flat buffer and hands the
results (updates, new state, and through :func:`functional_optim.apply_updates` the new params)
back as consecutive views of new buffers (:mod:`.grouped`). In a training loop those very tensors
come back at the next call. Two costs per tensor are left on 1000 parameters of a few thousand
elements, beside the math: making the views (two ATen calls each) and reading them again at the
next step (shape, dtype, device, address, contiguity: a Python call each).

* :class:`Layout` holds the shapes of a run and a plan to cut a flat buffer into them. Models
  repeat their blocks, so the shapes of their small tensors repeat with a short period (a
  transformer block's biases and norms, block after block): each stretch that repeats at least
  :data:`MIN_REPEATS` times is cut as a ``(repeats, period)`` matrix, one ``unbind`` per position
  in the period, and the rest tensor by tensor. The views are the same (shape, strides, storage
  offset, base) as ``torch._C._nn.unflatten_dense_tensors`` makes.
* :func:`record` remembers a run of views; :func:`known` recognises a list that is exactly a
  recorded run -- the same tensor objects, in order, at the recorded addresses, with the version
  counter they share with their buffer where it was -- and returns the record, so the checks and
  the flat layout use what it says instead of asking each tensor. Anything else gets ``None`` and
  is read tensor by tensor, as before; so does a run after any in-place change of one of its views
  (``mul_``, ``unsqueeze_``, ``set_``, ``resize_`` all bump that shared counter), and a run whose
  tensors were copied, rebuilt or replaced (a replaced ``.data`` moves the address). The record
  keeps only a weak reference to the first view (when it is freed the record goes) and the ids of
  the others; nothing is stored on the tensors themselves, so they pickle, deep-copy and load with
  ``weights_only=True`` as other tensors do.

Recorded eagerly only (the callers run on :data:`FOREACH_PURE`'s path); under ``torch.compile``
nothing is known.

A run of per-parameter scalars on an accelerator (the step counters, NAdam's ``mu_product``,
ASGD's ``eta`` and ``mu``) is recorded with its values on the host (``host``, a CPU copy that the
update advances as it advances the scalars), so the per-parameter scalar math (bias corrections,
step sizes) is done on the host and handed to the foreach kernels as numbers, as torch's own
(non-capturable) step does with its CPU state, without reading the device: reading it would wait
for the GPU's queue. :func:`host_values` gives them. During CUDA graph capture
nothing is recorded with host values and none are used: a replay advances the device counters
without the host knowing.
"""

from __future__ import annotations

import functools
import itertools
import weakref
from typing import NamedTuple, Optional, Sequence

import torch
from torch import Tensor

__all__ = ["Layout", "Run", "record", "known", "known_scalars", "host_values", "host_of", "cut"]

#: a stretch of shapes repeating fewer times than this is cut tensor by tensor
MIN_REPEATS = 8
#: the longest period looked for (tensors per repeated block)
MAX_PERIOD = 64


class Layout:
    """The shapes of a run of consecutive views of a flat buffer, and how to cut one into them.

    Built once per run of shapes and handed from run to run (a step's new buffers are laid out
    like its params), so the plan is found once per training loop."""

    __slots__ = ("shapes", "numels", "numel", "smallest", "largest", "_plan")

    def __init__(self, shapes: Sequence[torch.Size]):
        self.shapes = tuple(shapes)
        self.numels = [s.numel() for s in self.shapes]
        self.numel = sum(self.numels)
        self.smallest, self.largest = min(self.numels), max(self.numels)
        self._plan = None  # found at the first cut

    @staticmethod
    @functools.lru_cache(maxsize=16)
    def scalars(n: int) -> "Layout":
        """The layout of ``n`` 0-d tensors (per-parameter step counters)."""
        return Layout((torch.Size(()),) * n)

    @classmethod
    def of(cls, tensors: Sequence[Tensor]) -> "Layout":
        """The layout of ``tensors`` (a known run's, or read from each)."""
        run = known(tensors)
        return run.layout if run is not None else cls([t.shape for t in tensors])

    def cut(self, flat: Tensor) -> list:
        """``flat`` (contiguous, 1-D, :attr:`numel` elements) as views in these shapes, in order."""
        if self._plan is None:
            self._plan = _plan(self.shapes)
        out: list = []
        for start, element, period, repeats, block in self._plan:
            if repeats == 1:  # tensors one by one: one view each, where split + view made two
                base = flat.storage_offset() + element
                out.extend(flat.as_strided(shape, stride, base + offset) for shape, stride, offset in block)
                continue
            rows = flat.narrow(0, element, repeats * block).view(repeats, block)
            columns, offset = [], 0
            for shape, n in zip(self.shapes[start:start + period], self.numels[start:start + period]):
                columns.append(rows.narrow(1, offset, n).view(repeats, *shape).unbind(0))
                offset += n
            out.extend(itertools.chain.from_iterable(zip(*columns)))
        return out


@functools.lru_cache(maxsize=32)
def _plan(shapes: tuple) -> tuple:
    """``(start, first element, period, repeats, block)`` stretches covering the shapes: a
    shortest period repeated at least :data:`MIN_REPEATS` times (``block``: its elements), or
    single tensors (``repeats == 1``; consecutive singles merged into one stretch; ``block``:
    each one's ``(shape, contiguous strides, offset from the stretch's first element)``). Found
    once per distinct run of shapes (cached: a layout rebuilt every step, from tensors that are
    not a known run, finds it again in the cache), comparing each shape's number in order of
    first appearance."""
    codes: dict = {}
    seq = [codes.setdefault(shape, len(codes)) for shape in shapes]
    numels = [shape.numel() for shape in shapes]
    plan: list = []
    i, n, element = 0, len(seq), 0
    singles_from = None
    while i < n:
        found = None
        for period in range(1, min(MAX_PERIOD, (n - i) // MIN_REPEATS) + 1):
            if seq[i + period] != seq[i] or seq[i + (MIN_REPEATS - 1) * period] != seq[i]:
                continue  # (the cheap test first: most periods fail it)
            block = seq[i:i + period]
            repeats = 1
            while seq[i + repeats * period:i + (repeats + 1) * period] == block:
                repeats += 1
            if repeats >= MIN_REPEATS:
                found = (period, repeats)
                break
        if found is None:
            if singles_from is None:
                singles_from = (i, element)
            element += numels[i]
            i += 1
            continue
        if singles_from is not None:
            plan.append(_singles(shapes, singles_from, i))
            singles_from = None
        period, repeats = found
        block_numel = sum(numels[i:i + period])
        plan.append((i, element, period, repeats, block_numel))
        element += repeats * block_numel
        i += repeats * period
    if singles_from is not None:
        plan.append(_singles(shapes, singles_from, n))
    return tuple(plan)


def _singles(shapes: tuple, begin: tuple, end: int) -> tuple:
    """:func:`_plan`'s stretch of single tensors ``shapes[begin[0]:end]`` from element ``begin[1]``."""
    start, element = begin
    views, offset = [], 0
    for shape in shapes[start:end]:
        views.append((shape, contiguous_strides(shape), offset))
        offset += shape.numel()
    return (start, element, end - start, 1, tuple(views))


def contiguous_strides(shape: Sequence[int]) -> tuple:
    """The strides of a contiguous tensor of ``shape``, as torch gives them (a dimension of
    size 0 or 1 counts as 1 for the strides of the dimensions before it)."""
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


class Run(NamedTuple):
    """What is known of a recorded run of views of one contiguous flat buffer."""

    first: weakref.ref  # to the first view (its death forgets the run)
    ids: list  # id() of each view, in order
    addresses: list  # each view's data_ptr()
    layout: Layout
    dtype: torch.dtype
    device: torch.device
    version: int  # the version counter the views share with their buffer, when recorded
    storage_offset: int  # the first view's, in elements
    host: Optional[Tensor] = None  # scalars on an accelerator: their values, on the CPU

    @property
    def shapes(self) -> tuple:
        return self.layout.shapes

    def flat(self, first: Tensor) -> Tensor:
        """The run's elements as one 1-D view (``first``: its first tensor)."""
        return first.as_strided((self.layout.numel,), (1,), self.storage_offset)


#: id(first view) -> its run; an entry goes when its first view is freed
_RUNS: dict = {}


def _forget(key: int) -> None:
    _RUNS.pop(key, None)


def record(views: list, flat: Tensor, layout: Layout, host: Optional[Tensor] = None) -> list:
    """Remember ``views``, consecutive views of the contiguous 1-D ``flat`` in ``layout``; returns them.
    ``host``: ``flat``'s values as a CPU tensor, for a run of scalars on an accelerator."""
    if not views:
        return views
    if host is not None and capturing(flat.device):
        host = None
    first = views[0]
    key = id(first)
    _RUNS[key] = Run(
        first=weakref.ref(first, lambda _, key=key: _forget(key)), ids=list(map(id, views)),
        addresses=list(map(Tensor.data_ptr, views)), layout=layout, dtype=flat.dtype,
        device=flat.device, version=first._version, storage_offset=flat.storage_offset(), host=host,
    )
    return views


def capturing(device: torch.device) -> bool:
    """Whether work for ``device`` is being captured into a CUDA graph now (host values then
    cannot follow it: a replay runs without the host)."""
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def host_values(leaves: Sequence) -> Optional[Tensor]:
    """The values of ``leaves``, a known run of 0-d counters, as a CPU vector, without reading an
    accelerator: the run's buffer itself on the CPU, the values recorded with it elsewhere; else ``None``."""
    run = known_scalars(leaves)
    return None if run is None else host_of(run, leaves[0])


def host_of(run: Run, first: Tensor) -> Optional[Tensor]:
    """:func:`host_values` of a run already known (``first``: its first tensor), without
    recognising it again."""
    if run.device.type == "cpu":
        return run.flat(first)
    if run.host is None or capturing(run.device):
        return None
    return run.host


def known_scalars(leaves: Sequence) -> Optional[Run]:
    """:func:`known`, for a run of 0-d tensors (per-parameter counters) only."""
    run = known(leaves)
    if run is None or run.shapes != Layout.scalars(len(leaves)).shapes:
        return None
    return run


def cut(flat: Tensor, layout: Layout) -> list:
    """``flat`` cut into views in ``layout`` (:meth:`Layout.cut`), recorded as a run."""
    return record(layout.cut(flat), flat, layout)


def known(leaves: Sequence) -> Optional[Run]:
    """The recorded run that ``leaves`` is exactly, untouched since, or ``None``."""
    if not leaves or torch.compiler.is_compiling():
        return None
    first = leaves[0]
    run = _RUNS.get(id(first))
    if run is None or len(run.ids) != len(leaves) or run.first() is not first or first._version != run.version:
        return None
    if list(map(id, leaves)) != run.ids:
        return None
    try:
        addresses = list(map(Tensor.data_ptr, leaves))
    except (TypeError, RuntimeError):  # (an id reused by an object that is not a plain tensor)
        return None
    return run if addresses == run.addresses else None
