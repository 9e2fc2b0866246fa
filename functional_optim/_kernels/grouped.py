"""Small tensors stepped as one flat buffer (the eager functional update).

On the CPU every ``torch._foreach_*`` op is a loop that dispatches one ATen kernel per tensor
(~2 µs each), so on many small tensors an optimizer step costs ``tensors x operations`` dispatches
whatever the sizes: Adam on 1000 tensors of 2048 and 512 elements spent nearly all of its time
there. An elementwise optimizer computes the same numbers whether a parameter is stepped alone or
as a slice of a larger buffer, as long as every per-parameter scalar of the slice is the same. So
:func:`step_lists` lays small parameters out as one flat buffer per group of parameters that share
their dtype *and* the values of their per-parameter scalar slots (the ``step`` counters, NAdam's
``mu_product``; read on the host, as torch's CPU step reads them): the kernel then runs on one
tensor per group, its per-parameter scalars are one number, and the results are handed back as
views of the group's new buffers, in the parameters' shapes.

Flattening copies (``torch.cat``) what is not already laid out flat: the gradients, and on the
first step the params and state. The state and updates this path returns are consecutive views
of one buffer, in the order :func:`step_lists` lays them out again, so from the second step on
the state is re-flattened without a copy (:func:`_flat`).

Only for definitions marked ``elementwise`` (no per-tensor reductions or shapes in the math),
dense real contiguous tensors of at most :data:`SMALL_NUMEL` elements, groups of at least
:data:`MIN_GROUP` parameters. Everything else runs per tensor, as before.

On an accelerator the per-tensor cost is a kernel launch per tensor per operation (and the
allocation of each new tensor), and the same grouping applies where it needs no read of the
device: for definitions whose only scalar slot is the step, with counters whose values are known
on the host (:func:`.runs.host_values`: the counters this module and ``init`` hand out).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from . import runs

__all__ = ["step_lists", "add_lists", "flat_view", "SMALL_NUMEL", "MIN_GROUP"]

#: parameters with at most this many elements are stepped as part of a flat buffer
SMALL_NUMEL = 1 << 16
#: fewer small parameters than this in a group are stepped one by one (nothing to gain)
MIN_GROUP = 8

_FLAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _flat(tensors: Sequence[Tensor]) -> Tensor:
    """The tensors' elements as one 1-D tensor: a view when they already lie one after another in
    one storage (the buffers this module hands out), else a copy."""
    view = flat_view(tensors)
    return view if view is not None else torch._C._nn.flatten_dense_tensors(list(tensors))


def flat_view(tensors: Sequence[Tensor]) -> Tensor | None:
    """A 1-D view of the tensors' elements if they lie one after another in one storage, else None.

    Adjacent addresses alone could span two allocations that happen to touch: the view is taken
    only if the whole run lies inside the first tensor's storage. A run this module handed out
    (:mod:`.runs`) is known without reading each tensor."""
    first = tensors[0]
    run = runs.known(tensors)
    if run is not None:
        return run.flat(first)
    itemsize, address = first.element_size(), first.data_ptr()
    total = 0
    for t in tensors:
        if t.data_ptr() != address + total * itemsize or not t.is_contiguous():
            return None
        total += t.numel()
    offset = first.storage_offset()
    if (offset + total) * itemsize > first.untyped_storage().nbytes():
        return None
    return first.as_strided((total,), (1,), offset)


def _unflat(flat: Tensor, like: list, layout: runs.Layout | None = None) -> list:
    """``flat`` cut into views shaped like the tensors ``like``, in order (``layout``: theirs, if
    known), remembered as a run (:mod:`.runs`) for the next step."""
    return runs.cut(flat, layout if layout is not None else runs.Layout.of(like))


def _eligible(definition: Any, params: list, grads: list, state: dict) -> list:
    """Indices of the parameters that may be stepped inside a flat buffer: small, dense, real,
    contiguous tensors whose gradient and full-size state slots are contiguous too, on the CPU, or
    on one accelerator where the step counters' values are known on the host (:func:`_host_steps`)."""
    slots = [state[s] for s in definition.slots if s not in definition.scalar_slots]
    device = params[0].device
    if device.type != "cpu" and _host_steps(definition, params, state) is None:
        return []
    known = _known_eligible(params, slots)
    if known is not None:  # only the gradients to read
        return [i for i, g in enumerate(grads)
                if type(g) is Tensor and g.layout == torch.strided and g.dtype == known and g.is_contiguous()]
    out = []
    for i, (p, g) in enumerate(zip(params, grads)):
        if (0 < p.numel() <= SMALL_NUMEL and p.dtype in _FLAT_DTYPES and p.device == device and p.is_contiguous()
                and type(g) is Tensor and g.layout == torch.strided and g.dtype == p.dtype and g.is_contiguous()):
            for s in slots:
                if s[i] is not None and not s[i].is_contiguous():
                    break
            else:
                out.append(i)
    return out


def _known_eligible(params: list, slots: list) -> torch.dtype | None:
    """The params' dtype if they and every full-size slot are known runs (:mod:`.runs`: contiguous
    by construction, on one device) of small, non-empty tensors of a dtype that is stepped flat, else ``None``."""
    run = runs.known(params)
    if (run is None or run.dtype not in _FLAT_DTYPES or run.layout.smallest == 0
            or run.layout.largest > SMALL_NUMEL or not all(runs.known(s) is not None for s in slots)):
        return None
    return run.dtype


def _host_steps(definition: Any, params: list, state: dict) -> Tensor | None:
    """On an accelerator: the step counters' values as a CPU vector where they are known on the
    host (:func:`.runs.host_values`) and the step is the definition's only scalar slot, else ``None``.

    There the parameters are stepped as one group or not grouped (:func:`step_lists`): the new
    counters are then again one run with host values, which the next step finds; counters split
    between groups and the rest would have to be read from the device at the next step."""
    if definition.scalar_slots or len(params) < 2:
        return None
    return runs.host_values(state["step"])


def _scalar_values(leaves: list, candidates: list) -> list:
    """The values of the 0-d tensors ``leaves[i]`` for the candidates, read on the host at once
    (without reading an accelerator where :func:`.runs.host_values` knows them)."""
    host = runs.host_values(leaves) if len(leaves) > 1 else None
    if host is not None:
        return host[candidates].tolist() if len(candidates) < len(leaves) else host.tolist()
    return torch.stack([leaves[i] for i in candidates]).tolist()


def _groups(definition: Any, params: list, state: dict, candidates: list) -> list:
    """The candidates grouped by (dtype, the values of every scalar slot, which slots are present),
    in their order, each with its step value; groups smaller than :data:`MIN_GROUP` are dropped."""
    scalar_names = ["step", *definition.scalar_slots]
    values = [_scalar_values(state[n], candidates) for n in scalar_names]
    full = [state[s] for s in definition.slots if s not in definition.scalar_slots]
    dtypes = [params[i].dtype for i in candidates]
    absent = [[s[i] is None for i in candidates] for s in full]
    groups: dict = {}
    for i, key in zip(candidates, zip(dtypes, *values, *absent)):
        groups.setdefault(key, []).append(i)
    return [(members, key[1]) for key, members in groups.items() if len(members) >= MIN_GROUP]


def _run_group(definition, ops, run_kernel, members: list, step: float, params, grads, state, hparams, static):
    """Step ``members`` (whose counters hold ``step``) as one flat buffer; returns (updates,
    {slot: new values}) per member."""
    member_params = [params[i] for i in members]
    layout = runs.Layout.of(member_params)
    scalars = {"step", *definition.scalar_slots}
    flat_state = {}
    for name, leaves in state.items():
        first = leaves[members[0]]
        if name in scalars or first is None:
            flat_state[name] = [first]  # the group shares these values (see _groups)
        else:
            flat_state[name] = [_flat([leaves[i] for i in members])]
    flat_params = [_flat(member_params)]
    new_params, new_state = run_kernel(definition, ops, flat_params, [_flat([grads[i] for i in members])],
                                       flat_state, hparams, static)
    updates = _unflat(ops.updates(new_params, flat_params)[0], member_params, layout)
    n = len(members)
    out_state = {}
    for name, (value,) in new_state.items():
        if value is None:
            out_state[name] = [None] * n
        elif name in scalars:
            counters = value.expand(n).clone()
            # on an accelerator the new step's value on the host: the kernel's own ``step + 1``
            host = torch.full((n,), step, dtype=value.dtype) + 1 if name == "step" and not counters.is_cpu else None
            out_state[name] = runs.record(list(counters.unbind()), counters, runs.Layout.scalars(n), host=host)
        else:
            out_state[name] = _unflat(value, member_params, layout)
    return updates, out_state


def add_lists(params: list, updates: list, add) -> list:
    """``params + updates`` (``add``: the list addition to use), with every run of at least
    :data:`MIN_GROUP` updates that lie one after another in one buffer (as :func:`step_lists`
    returns them) added as one flat tensor; the sums of such a run are again one buffer."""
    spans = _spans(params, updates)
    out: list = [None] * len(params)
    singles: list = []  # indices added one tensor each: all in one call of ``add``
    for start, end in spans:
        olds, deltas = params[start:end], updates[start:end]
        flat_delta = flat_view(deltas) if end - start >= MIN_GROUP else None
        if flat_delta is None:
            singles.extend(range(start, end))
        else:
            out[start:end] = _unflat(add([_flat(olds)], [flat_delta])[0], olds, runs.Layout.of(deltas))
    if singles:
        for i, new in zip(singles, add([params[i] for i in singles], [updates[i] for i in singles])):
            out[i] = new
    return out


def _spans(params: list, updates: list) -> list:
    """``(start, end)`` of each run of updates that lie one after another in memory, in order."""
    run = runs.known(updates)
    if run is not None and _all_of_dtype(params, run.dtype):
        return [(0, len(updates))]
    spans, start = [], 0
    continues = _continuations(params, updates)
    for end in range(1, len(updates) + 1):
        if end == len(updates) or not continues[end - 1]:
            spans.append((start, end))
            start = end
    return spans


def _all_of_dtype(tensors: list, dtype: torch.dtype) -> bool:
    """Whether every one of ``tensors`` is a plain tensor of ``dtype`` (a known run: its record)."""
    run = runs.known(tensors)
    if run is not None:
        return run.dtype == dtype
    return all(type(t) is Tensor and t.dtype == dtype for t in tensors)


def _continuations(params: list, updates: list) -> list:
    """For each ``i``: whether update ``i + 1`` starts where update ``i`` ends in memory, both
    plain tensors of one dtype, their parameters' (a wider update is cast back per tensor). One
    pass over the lists, no call per pair (1000 parameters)."""
    plain = [type(u) is Tensor and u.dtype == p.dtype for u, p in zip(updates, params)]
    starts = [u.data_ptr() if ok else None for u, ok in zip(updates, plain)]
    ends = [start + u.numel() * u.element_size() if ok else None for start, u, ok in zip(starts, updates, plain)]
    return [plain[i] and plain[i + 1] and ends[i] == starts[i + 1] and updates[i].dtype == updates[i + 1].dtype
            for i in range(len(updates) - 1)] + [False]


def step_lists(definition: Any, ops: Any, run_kernel, params: list, grads: list, state: dict,
               hparams: Any, static: Any, flat: bool) -> tuple[list, dict]:
    """One step of ``definition`` on lists: ``(updates, new state lists)``.

    ``flat``: whether small parameters may be stepped as flat buffers (eager, foreach pure ops);
    otherwise one ``run_kernel`` over the lists, as in-place Ops run it.
    """
    groups = []
    if flat and definition.elementwise and len(params) >= MIN_GROUP:
        candidates = _eligible(definition, params, grads, state)
        if len(candidates) >= MIN_GROUP:
            groups = _groups(definition, params, state, candidates)
        if not params[0].is_cpu and not (len(groups) == 1 and len(groups[0][0]) == len(params)):
            groups = []  # on an accelerator, one group of every parameter, or none (see _host_steps)
    if not groups:
        new_params, new_state = run_kernel(definition, ops, params, grads, state, hparams, static)
        return list(ops.updates(new_params, params)), new_state
    updates: list = [None] * len(params)
    new_state = {name: list(leaves) for name, leaves in state.items()}
    grouped = set()
    for members, step in groups:
        group_updates, group_state = _run_group(definition, ops, run_kernel, members, step, params, grads, state,
                                                hparams, static)
        for j, i in enumerate(members):
            updates[i] = group_updates[j]
            for name, values in group_state.items():
                new_state[name][i] = values[j]
        grouped.update(members)
    rest = [i for i in range(len(params)) if i not in grouped]
    if rest:
        rest_params = [params[i] for i in rest]
        rest_new, rest_state = run_kernel(definition, ops, rest_params, [grads[i] for i in rest],
                                          {name: [leaves[i] for i in rest] for name, leaves in state.items()},
                                          hparams, static)
        for j, (i, u) in enumerate(zip(rest, ops.updates(rest_new, rest_params))):
            updates[i] = u
            for name in new_state:
                new_state[name][i] = rest_state[name][j]
    return updates, new_state
