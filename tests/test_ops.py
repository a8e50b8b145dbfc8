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


needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None,
                                    reason="promtool not installed (Debian package 'prometheus'); .ci/run installs it")


def _promtool(*args: str) -> str:
    done = subprocess.run(["promtool", *args], capture_output=True, text=True, cwd=OPS)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@needs_promtool
def test_promtool_accepts_the_rules():
    _promtool("check", "rules", "prometheus-alerts.yml")


@needs_promtool
def test_the_alerts_fire_as_their_tests_say():
    """ops/prometheus-alerts.test.yml: an idle instance whose database is down pages within a
    minute or two (db_up comes from the background probe, not from requests)."""
    _promtool("test", "rules", "prometheus-alerts.test.yml")


@needs_promtool
def test_the_scrape_config_is_valid_and_names_the_rules_job():
    assert "1 rule files found" in _promtool("check", "config", "prometheus.yml")
    scrape = yaml.safe_load((OPS / "prometheus.yml").read_text())
    assert [job["job_name"] for job in scrape["scrape_configs"]] == ["clinic-api"]
    rules = (OPS / "prometheus-alerts.yml").read_text()
    assert rules.count('job="clinic-api"') >= 10


def test_the_database_alerts_use_the_probe():
    rules = yaml.safe_load((OPS / "prometheus-alerts.yml").read_text())
    exprs = {rule["alert"]: rule["expr"] for group in rules["groups"] for rule in group["rules"]}
    assert "db_up" in exprs["ClinicApiDatabaseDown"] and "db_replica_lag_seconds" in exprs["ClinicApiReplicaLagging"]
