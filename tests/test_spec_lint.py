"""The contract passes openapi-spec-validator and the committed Spectral style rules."""
import shutil
import subprocess

import pytest
from openapi_spec_validator import validate
from openapi_spec_validator.readers import read_from_filename

from config import ROOT

TOOLS = ROOT / "tools"
SPECTRAL = TOOLS / "node_modules" / ".bin" / "spectral"


def test_spec_is_valid_openapi():
    validate(read_from_filename(str(ROOT / "spec" / "openapi.yaml"))[0])


@pytest.fixture(scope="module")
def spectral():
    if not SPECTRAL.exists():
        if shutil.which("npm") is None:
            pytest.skip("npm is not installed: Spectral (tools/package.json) cannot be installed")
        done = subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--silent"], cwd=TOOLS,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
    return SPECTRAL


def test_spec_follows_the_style_rules(spectral):
    done = subprocess.run(
        [str(spectral), "lint", str(ROOT / "spec" / "openapi.yaml"), "--ruleset", str(ROOT / ".spectral.yaml"),
         "--fail-severity", "warn", "-f", "text"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
