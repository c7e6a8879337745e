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


def shared_data(*parts: str) -> str:
    """Path of a file or folder in the shared datasets; skips the test, saying what is missing and
    where it is looked for, when it is not there (a bare clone has no ../shared/data)."""
    path = os.path.join(SHARED_DATA, *parts)
    if not os.path.exists(path):
        pytest.skip(f"needs the shared dataset {os.path.join(*parts)} (looked in {os.path.abspath(SHARED_DATA)}; "
                    "set FIELDCRAFT_SHARED_DATA to its folder)")
    return path
