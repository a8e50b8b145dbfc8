"""The contract passes openapi-spec-validator and the committed Spectral style rules."""
import subprocess

import pytest
from openapi_spec_validator import validate
from openapi_spec_validator.readers import read_from_filename

from config import ROOT
from tests.node_tools import node_tool


def test_spec_is_valid_openapi():
    validate(read_from_filename(str(ROOT / "spec" / "openapi.yaml"))[0])


@pytest.fixture(scope="module")
def spectral():
    return node_tool("spectral")


def test_spec_follows_the_style_rules(spectral):
    done = subprocess.run(
        [str(spectral), "lint", str(ROOT / "spec" / "openapi.yaml"), "--ruleset", str(ROOT / ".spectral.yaml"),
         "--fail-severity", "warn", "-f", "text"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
