"""The alerting rules (dashboards/colo-alerts.yml): valid, tested by promtool, and naming
only what the code exports.

promtool comes with Debian's prometheus package, which scripts/bootstrap installs; without
it the promtool checks skip, except under COLO_REQUIRE_SYSTEM=1 (CI), where they fail.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from colo_orch.daemon.metrics_doc import catalogue
from tests.support.paths import REPO as ROOT
from tests.unit.dashboards.test_dashboards import load_build, problems

RULES = ROOT / "dashboards" / "colo-alerts.yml"
CASES = ROOT / "dashboards" / "colo-alerts.test.yml"
# Prometheus's own metrics, which no colo component exports.
PROMETHEUS_OWN = ("up",)


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("COLO_REQUIRE_SYSTEM"):
            pytest.fail("promtool is missing: run scripts/bootstrap (Debian's prometheus)")
        pytest.skip("promtool not installed (scripts/bootstrap installs it)")
    return path


def rules() -> list[dict[str, Any]]:
    """The rules, parsed by promtool itself (no YAML library in the project)."""
    out = subprocess.run([promtool(), "check", "rules", "--lint=all", str(RULES)],
                         capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    # `promtool check rules` validates; the expressions are read back from the file's
    # `expr:` entries (one-line or `|` blocks), which is all these tests need.
    found: list[dict[str, Any]] = []
    lines = RULES.read_text().splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"\s*- alert: (\w+)$", line)
        if m:
            found.append({"alert": m.group(1), "expr": ""})
            continue
        m = re.match(r"(\s*)expr: (.*)$", line)
        if m and found:
            if m.group(2).strip() == "|":
                block = []
                for nxt in lines[i + 1:]:
                    if len(nxt) - len(nxt.lstrip()) <= len(m.group(1)):
                        break
                    block.append(nxt.strip())
                found[-1]["expr"] = " ".join(block)
            else:
                found[-1]["expr"] = m.group(2)
    return found


def test_promtool_unit_tests_pass() -> None:
    out = subprocess.run([promtool(), "test", "rules", str(CASES)], capture_output=True,
                         text=True, timeout=60, check=False, cwd=CASES.parent)
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_rule_names_exported_metrics_and_labels() -> None:
    build = load_build()
    cat = catalogue()
    found = rules()
    assert len(found) == 10 and all(r["expr"] for r in found), found
    bad = {}
    for r in found:
        issues = [p for p in problems(r["expr"], cat, build.SERIES_LABELS)
                  if p not in {f"unknown metric {m}" for m in PROMETHEUS_OWN}]
        if issues:
            bad[r["alert"]] = issues
    assert bad == {}


def test_every_rule_is_tested_firing_and_documented() -> None:
    names = [r["alert"] for r in rules()]
    cases = CASES.read_text()
    # A rule counts as tested when some case expects it to fire (exp_labels after its
    # alertname), not only to stay quiet.
    fired = set(re.findall(r"alertname: (\w+)\n\s*exp_alerts:\n\s*- exp_labels", cases))
    assert sorted(set(names) - fired) == []
    doc = (ROOT / "docs" / "ALERTS.md").read_text()
    assert sorted(n for n in names if f"### {n}" not in doc) == []


def test_the_scrape_example_loads_the_rules() -> None:
    text = (ROOT / "dashboards" / "prometheus.yml").read_text()
    assert re.search(r"^rule_files:\s*\n\s*- colo-alerts.yml", text, re.M), text


def test_a_broken_rule_fails_the_promtool_tests(tmp_path: Path) -> None:
    # The cases must be able to fail: a threshold raised tenfold no longer fires.
    broken = RULES.read_text().replace("> 30\n", "> 300\n")
    assert broken != RULES.read_text()
    (tmp_path / "colo-alerts.yml").write_text(broken)
    (tmp_path / "cases.yml").write_text(CASES.read_text())
    out = subprocess.run([promtool(), "test", "rules", "cases.yml"], capture_output=True,
                         text=True, timeout=60, check=False, cwd=tmp_path)
    assert out.returncode != 0 and "ColoCheckpointStale" in out.stdout + out.stderr, (
        json.dumps([out.stdout, out.stderr]))
