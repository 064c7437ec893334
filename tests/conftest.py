import pyro
import pytest
import torch
from helpers import SEED

# The test models are tiny: one thread avoids paying for thread synchronization.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def fresh_pyro_state():
    """Each test starts from an empty param store, the suite's seed and validation on."""
    pyro.clear_param_store()
    pyro.set_rng_seed(SEED)
    pyro.enable_validation(True)
    yield
    pyro.clear_param_store()
