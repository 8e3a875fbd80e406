"""The dashboards and docs/metrics.md agree with the metrics the code exports.

The PromQL check is rough on purpose: it finds the metric names, label matchers and
grouping labels of each query, which is where a renamed metric or label would break a
panel silently (Grafana shows "No data", not an error).
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from types import ModuleType

import pytest

from colo_orch.daemon.metrics_doc import Family, catalogue, markdown
from tests.support.paths import REPO as ROOT

KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
            "unless", "bool", "offset", "inf", "nan"}
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
SELECTOR = re.compile(r"([A-Za-z_:][\w:]*)?\s*\{([^}]*)\}")
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')
IDENT = re.compile(r"(?<![\w.])([A-Za-z_:][\w:]*)\b(?!\s*\()")


def load_build() -> ModuleType:
    spec = importlib.util.spec_from_file_location("colo_dashboards_build",
                                                  ROOT / "dashboards" / "build.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def problems(expr: str, cat: dict[str, Family], target_labels: tuple[str, ...]) -> list[str]:
    """What in `expr` names a metric or label that the code does not export."""
    by_sample = {s: f for f in cat.values() for s in f.samples}
    out: list[str] = []
    used: list[Family] = []
    grouping = [lab.strip() for m in GROUPING.finditer(expr) for lab in m.group(2).split(",")]
    rest = GROUPING.sub(" ", expr)
    for m in SELECTOR.finditer(rest):
        name = m.group(1)
        fam = by_sample.get(name) if name else None
        if name and fam is None:
            out.append(f"unknown metric {name}")
        if fam is not None:
            used.append(fam)
        for label, op, value in MATCHER.findall(m.group(2)):
            if label in target_labels or fam is None:
                continue
            if label not in fam.labels:
                out.append(f"{name} has no label {label}")
            elif op == "=" and value not in fam.values.get(label, set()):
                out.append(f"{name}{{{label}}} has no value {value!r}")
    rest = SELECTOR.sub(lambda m: " ", rest)
    rest = re.sub(r"\[[^\]]*\]", " ", rest)
    for name in IDENT.findall(rest):
        if name in KEYWORDS:
            continue
        if name not in by_sample:
            out.append(f"unknown metric {name}")
        else:
            used.append(by_sample[name])
    known = set(target_labels).union(*(f.labels for f in used)) if used else set(target_labels)
    out += [f"grouping by unknown label {lab}" for lab in grouping if lab and lab not in known]
    return out


@pytest.fixture(scope="module")
def build() -> ModuleType:
    return load_build()


def test_every_panel_query_uses_exported_metrics_and_labels(build: ModuleType) -> None:
    cat = catalogue()
    found = {(uid, title, e): problems(e, cat, build.SERIES_LABELS)
             for uid, title, e in build.queries()}
    assert len(found) > 30
    assert {k: v for k, v in found.items() if v} == {}


def test_the_check_finds_wrong_names(build: ModuleType) -> None:
    cat = catalogue()

    def check(e: str) -> list[str]:
        return problems(e, cat, build.SERIES_LABELS)

    assert check('sum by (reason) (rate(colo_checkpoint_total{pair=~"$pair"}[1m]))') == [
        "unknown metric colo_checkpoint_total", "grouping by unknown label reason"]
    assert check('colo_checkpoints_total{reasn="payload"}') == [
        "colo_checkpoints_total has no label reasn"]
    assert check('colo_orch_state{colo_orch_state="PROTECTD"} == 1') == [
        "colo_orch_state{colo_orch_state} has no value 'PROTECTD'"]
    assert check("sum by (flow) (colo_proxy_held_packets)") == [
        "grouping by unknown label flow"]
    assert check("time() - max(colo_last_checkpoint_timestamp > 0)") == [
        "unknown metric colo_last_checkpoint_timestamp"]
    assert check('histogram_quantile(0.9, sum by (le, pair) '
                 '(rate(colo_proxy_hold_seconds_bucket{host="a"}[5m])))') == []


def test_committed_dashboards_are_current(build: ModuleType) -> None:
    assert build.main(["--check"]) == 0, "run: python dashboards/build.py"


def test_docs_metrics_md_is_current() -> None:
    text = (ROOT / "docs" / "metrics.md").read_text()
    assert text == markdown(), "run: python -m colo_orch.daemon.metrics_doc > docs/metrics.md"


def test_metric_names_follow_the_naming_guide() -> None:
    for name, f in catalogue().items():
        assert name.startswith("colo_"), name
        if f.type == "counter":
            assert name.endswith("_total"), name
        assert not re.search(r"_(ms|milliseconds|age|ago)$", name), name
        assert not f.labels & {"ip", "port", "flow", "src", "dst", "sport", "dport"}, name


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_scrape_config_example_is_valid_and_needs_no_labels(build: ModuleType) -> None:
    path = ROOT / "dashboards" / "prometheus.yml"
    out = subprocess.run(["promtool", "check", "config", str(path)], capture_output=True,
                         text=True, timeout=30, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    text = path.read_text()
    # The exporters label their series (issue 17); the example adds none, and keeps theirs
    # if an operator's copy adds some (no exported_pair).
    assert not re.search(r"^\s*labels:|relabel", text, re.M), text
    assert text.count("honor_labels: true") == text.count("- job_name:") == 2
    for uid in build.DASHBOARDS:
        assert (ROOT / "dashboards" / f"{uid}.json").exists()
    assert "/var/lib/grafana/dashboards/colo" in (
        ROOT / "dashboards" / "provisioning" / "dashboards" / "colo.yml").read_text()


def test_counters_are_shown_over_the_range_not_since_process_start(
        build: ModuleType) -> None:
    # A bare counter shows how much since the exporter started: meaningless after a
    # restart, and not what an on-call person asks of the selected range.
    bare = [(uid, title, e) for uid, title, e in build.queries()
            if re.search(r"\b(colo_\w+_total)\b(?![^(]*\[)", e)
            and not re.search(r"(rate|increase|changes)\(colo_\w+_total", e)]
    assert bare == []


def test_states_show_as_names_and_checkpoint_age_as_colours(build: ModuleType) -> None:
    from colo_orch.core.state import State

    pair = json.loads((ROOT / "dashboards" / "colo-pair.json").read_text())
    panels = {p["title"]: p for p in pair["panels"]}
    (mapping,) = panels["State"]["fieldConfig"]["defaults"]["mappings"]
    assert mapping["options"][str(int(State.PROTECTED))] == {
        "text": "PROTECTED", "color": "green", "index": list(State).index(State.PROTECTED)}
    assert {o["text"] for o in mapping["options"].values()} == {s.name for s in State}
    steps = panels["Since last checkpoint"]["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [s["value"] for s in steps] == [None, 10.0, 30.0]
    names = {a["name"] for a in pair["annotations"]["list"]}
    assert names == {"Failovers", "Checkpoint failures"}
    assert {link["url"] for link in pair["links"]} == {"/d/colo-datapath", "/d/colo-fleet"}


def test_the_dashboards_identity_labels_are_the_exporters(build: ModuleType) -> None:
    from colo_proxy.service.metrics import IDENTITY_LABELS

    assert build.IDENTITY_LABELS == IDENTITY_LABELS
