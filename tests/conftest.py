import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny models gain nothing from intra-op threads, and the suite's subprocesses (DDP ranks,
    # tool runs) share the same cores: one thread each avoids OpenMP oversubscription, which
    # made tests several times slower on 2-core machines.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# The suite's peak of temporary files (checkpoints of the training tests; a passing test's
# directory is removed when it ends, see setup.cfg), measured on the full suite with margin.
_TMP_SPACE_NEEDED_GB = 2.0


def pytest_sessionstart(session):
    """Stop at once, in one line, when the temporary files cannot fit (rather than hundreds of
    ENOSPC errors)."""
    root = Path(session.config.option.basetemp or tempfile.gettempdir()).resolve()
    while not root.exists():
        root = root.parent
    free_gb = shutil.disk_usage(root).free / 2**30
    if free_gb < _TMP_SPACE_NEEDED_GB:
        pytest.exit(
            f"the tests need about {_TMP_SPACE_NEEDED_GB:.0f} GB free for their temporary files "
            f"under {root}; {free_gb:.1f} GB free there (free some, or pass --basetemp DIR)",
            returncode=1,
        )
