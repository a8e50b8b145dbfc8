"""Swagger UI in a real browser: "Authorize" logs in with the OAuth2 password flow, and "Try it
out" on a secured operation then answers 200 (Debian's chromium, driven by playwright-core)."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import PASSWORD
from tests.node_tools import TOOLS, node_tool

CHROMIUM = Path("/usr/bin/chromium")


def test_authorize_then_try_it_out_answers_200(live_server, org_a, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("chromium is not installed (.ci/run installs Debian's chromium)")
    node_tool("playwright-core")
    done = subprocess.run(
        [shutil.which("node"), str(TOOLS / "browser" / "swagger-ui-login.mjs"), live_server,
         org_a.admin_email, PASSWORD, str(tmp_path / "profile")],
        capture_output=True, text=True, timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen == {"tokenStatus": 200, "authorized": True, "status": 200, "authorization": "Bearer",
                    "shown": "200"}
