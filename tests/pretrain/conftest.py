import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    # The machine is shared: several intra-op threads on 2 busy cores run 10x slower than one.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
