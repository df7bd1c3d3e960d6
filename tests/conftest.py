"""Shared pytest fixtures for dampit's tests.

``shared_data`` points at the real audio in ``../shared/data`` (or
``$DAMPIT_DATA``). When it is missing the tests that need it skip locally
but fail under CI (``CI=true``), so CI never passes without real audio.
"""

import os
import pathlib

import pytest
import torch

REPO = pathlib.Path(__file__).resolve().parents[1]


def _data_root():
    env = os.environ.get("DAMPIT_DATA")
    if env:
        return pathlib.Path(env)
    return REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data():
    """Path to the shared real-audio folder (dspspeech, noise, rir...)."""
    root = _data_root()
    if not (root / "dspspeech" / "manifest.csv").is_file():
        msg = f"real audio not found at {root} (set DAMPIT_DATA)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(msg)
        pytest.skip(msg)
    return root


@pytest.fixture(autouse=True)
def _seed_and_threads():
    """Seed torch for every test; 2 cores on this machine and CI."""
    torch.manual_seed(0)
    yield


def pytest_configure(config):
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
