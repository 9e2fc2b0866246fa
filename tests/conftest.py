import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# Dynamo's profile-guided "automatic dynamic" state is kept in files under the Inductor cache, shared
# by every process on the machine and read back after torch._dynamo.reset(): a compile elsewhere (an
# earlier test, another test run) could then change how many frames a test's compile takes. The
# tests count compilations, so they start from Dynamo's in-process state only.
torch._dynamo.config.automatic_dynamic_local_pgo = False


@pytest.fixture(autouse=True)
def _default_dtype_and_seed():
    old = torch.get_default_dtype()
    torch.manual_seed(0)
    yield
    torch.set_default_dtype(old)
