import os

# must be set before torch initialises OpenMP (see fieldcraft.runtime)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


# The shared datasets (../shared/data beside the checkout); FIELDCRAFT_SHARED_DATA points elsewhere.
SHARED_DATA = os.environ.get("FIELDCRAFT_SHARED_DATA") or os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
