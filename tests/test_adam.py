"""Adam / AdamW: functional and compat against torch.optim, every flag and implementation."""

import itertools

import pytest
import torch

import compat
import functional_optim as fo
from _parity import IMPLS, run_compat_parity, run_functional_parity

FLAGS = [
    dict(amsgrad=a, maximize=m, weight_decay=w)
    for a, m, w in itertools.product([False, True], [False, True], [0.0, 0.1])
]
DTYPES = [torch.float64, torch.float32, torch.complex128]


@pytest.mark.parametrize("decoupled", [False, True])
@pytest.mark.parametrize("flags", FLAGS, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_functional_matches_torch(decoupled, flags, dtype):
    kwargs = dict(lr=0.05, betas=(0.8, 0.9), eps=1e-6, **flags)
    run_functional_parity(
        torch.optim.Adam, lambda: fo.adam(**kwargs, decoupled_weight_decay=decoupled),
        dict(kwargs, decoupled_weight_decay=decoupled), dtype,
    )


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("flags", FLAGS, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cls", ["Adam", "AdamW"])
def test_compat_matches_torch(cls, impl, flags, dtype):
    if impl == "fused" and dtype.is_complex:
        pytest.skip("torch's fused Adam rejects complex params")
    kwargs = dict(lr=0.05, betas=(0.8, 0.9), eps=1e-6, **flags, **IMPLS[impl])
    run_compat_parity(getattr(torch.optim, cls), getattr(compat, cls), kwargs, dtype, swap_at=2)
