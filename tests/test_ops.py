"""The alert rules and the dashboard only use metrics the app really exports."""
import json
import re
import shutil
import subprocess

import pytest
import yaml

from config import ROOT

OPS = ROOT / "ops"
PROMQL_FUNCTIONS = {"sum", "rate", "histogram_quantile", "by", "up", "humanizePercentage", "humanizeDuration"}


def _expressions():
    rules = yaml.safe_load((OPS / "prometheus-alerts.yml").read_text())
    dashboard = json.loads((OPS / "grafana-dashboard.json").read_text())
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    exprs += [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    return exprs


def _metric_names(expr: str) -> set[str]:
    names = set(re.findall(r"\b([a-z_][a-z0-9_]*)\s*(?:\{|\[)", expr))
    return {n for n in names if n not in PROMQL_FUNCTIONS}


def test_every_metric_named_is_exported(client, org_a):
    client.get("/patients", headers=org_a.headers)
    exported = client.get("/metrics").text
    families = set(re.findall(r"^# TYPE (\w+) (\w+)", exported, re.M))
    names = {name for name, _ in families}
    names |= {f"{name}_bucket" for name, kind in families if kind == "histogram"}
    names |= {f"{name}_total" for name, kind in families if kind == "counter"}
    names.add("up")  # Prometheus's own per-target metric
    used = set().union(*(_metric_names(e) for e in _expressions()))
    assert used and used <= names, used - names


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool not installed (Debian package 'prometheus'); .ci/run installs it")
def test_promtool_accepts_the_rules():
    done = subprocess.run(["promtool", "check", "rules", str(OPS / "prometheus-alerts.yml")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
