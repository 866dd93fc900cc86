import os
import warnings

import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile("jano", deadline=None, max_examples=8, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "jano"))

warnings.filterwarnings("ignore", message="There are modules in")


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test starts from an empty dynamo cache and keeps no state for the next."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    yield
    torch._dynamo.reset()
