import os

# must be set before torch initialises OpenMP (see fieldcraft.runtime)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
