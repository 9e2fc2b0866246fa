"""The eager functional update on an accelerator, checked without one: on the ``meta`` device.

A meta tensor has a device that is not the CPU and no data, so the update takes the path it takes
on CUDA, every kernel it would launch is dispatched (and counted here), and any read of the device
from the host (``.item()``, ``.tolist()``, ``.cpu()``: on CUDA a wait for the GPU's queue) raises.
The counter is ``benchmarks/kernel_counts.py``'s. What this shows: from ``init`` on, the update
never reads the device, and for the optimizers whose math torch's foreach step also does over
whole lists, the kernels it launches per step do not grow
with the number of parameters (small ones are stepped as one flat buffer, per-parameter scalars
are numbers computed on the host); and compat's steps launch no more kernels than torch's. The
numbers themselves are checked on CUDA (tests/test_cuda.py).
"""

import pytest
import torch

from _registry import OPTIMIZERS
from benchmarks.kernel_counts import Kernels, kernels_per_step

#: per-tensor math in torch's foreach step too (Rprop's sign cases, Adafactor's row and column
#: norms): their kernels grow with the parameters where they are not stepped as one flat buffer
PER_TENSOR = {"rprop", "adafactor"}
#: per tensor here and not in torch's foreach step: RAdam's rectified division runs per tensor (as
#: torch's for-loop's, to its rounding) where its parameters are not stepped as one flat buffer
NOT_YET_LIST_WIDE = {"radam": ("small-and-large",)}


def _params(n_small: int, n_large: int = 0) -> dict:
    shapes = [(32, 16) if i % 2 else (40,) for i in range(n_small)] + [(300, 300)] * n_large
    return {f"p{i}": torch.zeros(s, device="meta") for i, s in enumerate(shapes)}


def _kernels_per_step(entry, params: dict, steps: int = 9):
    return kernels_per_step(entry.factory(**entry.kwargs), params, steps)


@pytest.mark.parametrize("entry", OPTIMIZERS, ids=[e.name for e in OPTIMIZERS])
@pytest.mark.parametrize("n_large", [0, 3], ids=["small", "small-and-large"])
def test_no_read_of_the_device_from_init_on(entry, n_large):
    # (RAdam rectifies from its 7th step on with these betas, ASGD averages from its 2nd)
    _kernels_per_step(entry, _params(24, n_large), steps=9)  # a host read raises on meta


def _list_wide_cases():
    for entry in OPTIMIZERS:
        if entry.name in PER_TENSOR:
            continue
        for n_large, label in ((0, "small"), (3, "small-and-large")):
            marks = ([pytest.mark.xfail(strict=True, reason=f"{entry.name}: per-tensor kernels left (NOT_YET_LIST_WIDE)")]
                     if label in NOT_YET_LIST_WIDE.get(entry.name, ()) else [])
            yield pytest.param(entry, n_large, marks=marks, id=f"{label}-{entry.name}")


@pytest.mark.parametrize("entry, n_large", list(_list_wide_cases()))
def test_kernels_per_step_do_not_grow_with_the_parameters(entry, n_large):
    few, many = _kernels_per_step(entry, _params(16, n_large)), _kernels_per_step(entry, _params(160, n_large))
    assert sum(many.values()) == sum(few.values()), (few, many)
    assert sum(few.values()) < 60, few


def _compat_kernels(cls, entry, impl: str) -> int:
    """The kernels of the third step of ``cls`` on 20 meta parameters (``is_same_size``, compat's
    gradient shape check, launches none)."""
    params = [torch.zeros((8, 8) if i % 2 else (16,), device="meta", requires_grad=True) for i in range(20)]
    for p in params:
        p.grad = torch.ones_like(p)
    opt = cls(params, foreach=impl == "foreach", **entry.kwargs)
    for _ in range(3):
        counted = kernels_per_step_of(opt.step)
    return sum(n for name, n in counted.items() if name != "is_same_size")


def kernels_per_step_of(step):
    with Kernels() as counted:
        step()
    return counted.ops


@pytest.mark.parametrize("impl", ["for-loop", "foreach"])
@pytest.mark.parametrize("entry", OPTIMIZERS, ids=[e.name for e in OPTIMIZERS])
def test_compat_launches_no_more_kernels_than_torch(entry, impl):
    """compat's steps on an accelerator's path: no read of the device where torch's reads none, and
    no more kernels than torch's step of the same implementation."""
    try:
        theirs = _compat_kernels(entry.torch_cls, entry, impl)
    except (RuntimeError, NotImplementedError) as e:  # torch's own step reads the device (.item())
        pytest.skip(f"torch.optim.{entry.torch_cls.__name__} ({impl}) reads the device: {e}")
    assert _compat_kernels(entry.compat_cls, entry, impl) <= theirs


@pytest.mark.parametrize("device, numel, expected", [
    ("cpu", 1 << 16, [[0], [1], [2], [3], [4]]),  # a cache-sized tensor: one at a time, as torch's loop
    ("cpu", 1 << 10, [[0, 1, 2, 3, 4]]),  # small ones batched
    ("meta", 1 << 22, [[0, 1, 2, 3], [4]]),  # an accelerator: up to ACCELERATOR_LOOP_CHUNK_NUMEL together
    ("meta", (1 << 24) + 1, [[0], [1], [2], [3], [4]]),  # a tensor larger than that alone
])
def test_for_loop_chunks_are_cache_sized_on_the_cpu_and_larger_on_an_accelerator(device, numel, expected):
    """compat's for-loop runs its kernel over chunks of the group: one large tensor at a time on
    the CPU (its temporaries stay in cache), up to 2**24 elements on an accelerator, where the
    step is host-bound and each chunk costs the kernel's Python once per operation."""
    from compat import optimizer

    assert optimizer.ACCELERATOR_LOOP_CHUNK_NUMEL == 1 << 24
    params = [torch.empty(numel, device=device) for _ in range(5)]
    assert optimizer._cache_sized_chunks(params) == expected
