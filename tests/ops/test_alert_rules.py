"""deploy/prometheus/alerts.yml: valid for promtool, unit-tested rule by rule
(alerts_test.yml, one case where each rule fires and one where it stays quiet), and every
rule has a severity and a runbook paragraph that exists in docs/operations.md."""

from __future__ import annotations

import re
import subprocess
from typing import Any

import yaml
from promtools import OPERATIONS, RULE_TESTS, RULES, binary

SEVERITIES = {"warning", "critical"}


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def seconds(duration: str) -> int:
    """A Prometheus duration such as ``1h30m`` or ``45s``, in seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    parts = re.findall(r"(\d+)([smhd])", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(int(n) * units[u] for n, u in parts)


def promtool(*args: str) -> str:
    done = subprocess.run(
        [binary("promtool"), *args],
        cwd=RULES.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_promtool_check_rules() -> None:
    out = promtool("check", "rules", RULES.name)
    assert f"SUCCESS: {len(rules())} rules found" in out


def test_promtool_unit_tests_pass() -> None:
    out = promtool("test", "rules", RULE_TESTS.name)
    assert "SUCCESS" in out


def test_every_rule_has_a_firing_and_a_quiet_case() -> None:
    cases: dict[str, dict[str, list[int]]] = {}
    for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for case in test.get("alert_rule_test", []):
            kind = "fires" if case["exp_alerts"] else "quiet"
            at = seconds(case["eval_time"])
            cases.setdefault(case["alertname"], {"fires": [], "quiet": []})[kind].append(at)
    names = [r["alert"] for r in rules()]
    assert sorted(cases) == sorted(names)
    for rule in rules():
        seen = cases[rule["alert"]]
        assert seen["fires"], f"{rule['alert']}: no case where it fires"
        assert seen["quiet"], f"{rule['alert']}: no case where it stays quiet"
        # a quiet case evaluated before `for:` has run out would be quiet whatever the data
        hold = seconds(rule.get("for", "0s"))
        assert max(seen["quiet"]) > hold, f"{rule['alert']}: quiet case within its for:"


def test_every_rule_has_a_severity_and_a_runbook_in_the_docs() -> None:
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in OPERATIONS.read_text().splitlines()
        if line.startswith("#")
    }
    names = [r["alert"] for r in rules()]
    assert len(set(names)) == len(names)
    for rule in rules():
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        runbook = rule["annotations"]["runbook"]
        page, _, anchor = runbook.partition("#")
        assert page == "docs/operations.md", runbook
        assert anchor == rule["alert"].lower(), runbook
        assert anchor in anchors, f"{rule['alert']}: no paragraph {runbook}"
        assert rule["annotations"]["summary"], rule["alert"]
