"""Fixtures shared by unit tests: import them into the test module (a second conftest.py would shadow the
integration conftest that tests import helpers from)."""

from pathlib import Path

import pytest
import torch
from hydra import initialize_config_dir

CONF = str(Path(__file__).resolve().parents[2] / "conf")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one thread avoids OpenMP stalls when the CPU is shared with other processes."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


@pytest.fixture(scope="module")
def hydra_conf():
    """One Hydra context over conf/ for the module (initializing it per compose is the slow part)."""
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        yield
