"""Client authors' path in TypeScript: types generated from the served spec with openapi-typescript,
calls through openapi-fetch; the scenario typechecks with tsc --strict and runs against a live server
(login, create, list with embed and paging, an error, refresh)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess

from tests.conftest import PASSWORD
from tests.node_tools import TOOLS, node_tool

SCENARIO = TOOLS / "typescript"


def run(command: list[str], cwd) -> str:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_typescript_client_runs_a_clinic_day(live_server, org_a, tmp_path):
    generator, tsc = node_tool("openapi-typescript"), node_tool("tsc")
    for name in ("scenario.ts", "tsconfig.json"):
        shutil.copy(SCENARIO / name, tmp_path / name)
    (tmp_path / "package.json").write_text('{"type": "module", "private": true}')
    (tmp_path / "node_modules").symlink_to(TOOLS / "node_modules")
    run([str(generator), f"{live_server}/openapi.json", "--output", "schema.d.ts"], tmp_path)
    types = (tmp_path / "schema.d.ts").read_text()
    assert not re.search(r":\s*any\b|<any>|any\[\]", types), "the generated types use no `any`"
    run([str(tsc), "-p", "tsconfig.json"], tmp_path)
    _the_types_refuse_what_the_contract_refuses(tsc, tmp_path)
    summary = run([shutil.which("node"), "out/scenario.js", live_server, org_a.admin_email, PASSWORD], tmp_path)
    assert json.loads(summary.strip().splitlines()[-1]) == {"patients": 3, "pages": 2,
                                                            "errorCode": "INVALID_REFERENCE", "refreshed": True}


# Three calls the contract refuses, one per line: tsc --strict must reject each, which it cannot if
# the generated types had decayed to `any` or `unknown` anywhere along the way.
MISUSE = """import createClient from "openapi-fetch";
import type { paths } from "./schema.js";
const api = createClient<paths>({ baseUrl: "http://127.0.0.1:1" });
const made = await api.POST("/patients", { body: { name: "No branch" } });
const wrong: number | undefined = made.data?.data.name;
await api.GET("/patients/{id}", { params: { path: { identifier: "x" } } });
export {};
"""


def _the_types_refuse_what_the_contract_refuses(tsc, folder) -> None:
    (folder / "misuse.ts").write_text(MISUSE)
    config = json.loads((folder / "tsconfig.json").read_text())
    (folder / "tsconfig.misuse.json").write_text(json.dumps({**config, "files": ["misuse.ts", "schema.d.ts"]}))
    done = subprocess.run([str(tsc), "-p", "tsconfig.misuse.json", "--noEmit"], cwd=folder, capture_output=True,
                          text=True, timeout=300)
    lines = {int(found) for found in re.findall(r"misuse\.ts\((\d+),\d+\): error", done.stdout)}
    assert done.returncode != 0 and lines == {4, 5, 6}, done.stdout + done.stderr
