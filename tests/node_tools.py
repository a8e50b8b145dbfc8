"""The npm tools of tools/package.json, installed with `npm ci` the first time a test needs one."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from config import ROOT

TOOLS = ROOT / "tools"


def node_tool(name: str) -> Path:
    """tools/node_modules/.bin/<name>; skipped only where npm (and so node) is not installed."""
    tool = TOOLS / "node_modules" / ".bin" / name
    if not tool.exists():
        if shutil.which("npm") is None:
            pytest.skip(f"npm is not installed: {name} (tools/package.json) cannot be installed")
        done = subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--silent"], cwd=TOOLS,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
    return tool
