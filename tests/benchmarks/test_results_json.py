"""benchmarks/results.json mirrors RESULTS.md: every figure carries its value, unit, same-run baseline, command,
machine and date."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks"
KEYS = {"name", "value", "unit", "baseline", "baseline_value", "command", "machine", "date"}


def test_every_figure_has_the_required_fields():
    entries = json.loads((RESULTS / "results.json").read_text(encoding="utf-8"))
    assert isinstance(entries, list) and entries
    names = [e["name"] for e in entries]
    assert len(names) == len(set(names)), "duplicate figure names"
    for e in entries:
        assert set(e) == KEYS, e["name"]
        assert isinstance(e["value"], (int, float)) and math.isfinite(e["value"]), e["name"]
        assert e["baseline_value"] is None or isinstance(e["baseline_value"], (int, float)), e["name"]
        for key in ("unit", "baseline", "command", "machine"):
            assert isinstance(e[key], str) and e[key].strip(), (e["name"], key)
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", e["date"]), e["name"]


def test_results_md_states_machine_and_date():
    text = (RESULTS / "RESULTS.md").read_text(encoding="utf-8")
    assert "H100" in text and "2-core" in text and re.search(r"\d{4}-\d{2}-\d{2}", text)
