"""`make lint`'s Python half runs in `make test` too: pyflakes' checks and syntax errors (ruff.toml)."""
import subprocess
import sys
from pathlib import Path

import config


def test_ruff_finds_nothing():
    ruff = Path(sys.executable).with_name("ruff")
    found = subprocess.run([str(ruff), "check", "--output-format", "concise", "."], cwd=config.ROOT,
                           capture_output=True, text=True)
    assert found.returncode == 0, found.stdout[-3000:]
