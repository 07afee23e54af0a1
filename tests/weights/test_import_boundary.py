"""bitdet.models never imports bitdet.weights; bitdet.weights builds models only when asked."""

import pytest

from tests.tools.tool_run import ROOT, run_python


def _modules_after(statement: str) -> set:
    code = f"import sys\n{statement}\nprint(' '.join(sorted(sys.modules)))"
    out = run_python("-c", code, cwd=ROOT).stdout
    return set(out.split())


@pytest.mark.parametrize(
    "statement", ["import bitdet.models", "from bitdet.models import ResNetV2, list_models"]
)
def test_models_do_not_import_weights(statement):
    loaded = _modules_after(statement)
    assert "bitdet.models.resnetv2" in loaded
    assert not {m for m in loaded if m.startswith("bitdet.weights")}


def test_weights_do_not_import_the_networks():
    loaded = _modules_after("import bitdet.weights")
    assert "bitdet.weights.loading" in loaded
    assert "bitdet.models.resnetv2" not in loaded
