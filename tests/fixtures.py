"""The tests' real COCO-format fixtures: ``tools/fetch_test_fixtures.py`` (run by the set-up)
fetches them into the cache, and the tests read them from there with its :func:`fetch_fixture`,
which fetches first where the set-up could not."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_NAME = "fetch_test_fixtures"
_TOOL = Path(__file__).resolve().parents[1] / "tools" / f"{_NAME}.py"


def _load_tool():
    """The tool as a module, loaded once: every test sees the same classes and table."""
    if _NAME not in sys.modules:
        spec = importlib.util.spec_from_file_location(_NAME, _TOOL)
        module = importlib.util.module_from_spec(spec)
        sys.modules[_NAME] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[_NAME]
            raise
    return sys.modules[_NAME]


fetch_test_fixtures = _load_tool()
FixtureIntegrityError = fetch_test_fixtures.FixtureIntegrityError
FixtureUnavailableError = fetch_test_fixtures.FixtureUnavailableError
fetch_fixture = fetch_test_fixtures.fetch_fixture
normalize_coco = fetch_test_fixtures.normalize_coco
