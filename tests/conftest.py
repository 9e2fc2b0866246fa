import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(autouse=True)
def _default_dtype_and_seed():
    old = torch.get_default_dtype()
    torch.manual_seed(0)
    yield
    torch.set_default_dtype(old)
