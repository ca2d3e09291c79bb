"""The report's first screen: what was imaged, with what, when, how many frames and how
well (where ground truth is known), and the run's configuration as a collapsible table of
formatted values."""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from instruments.session_file.decision_record import DECIDED_ROUTES, accuracy
from instruments.session_file.decision_row import DecisionRow
from workflows.report.format import MISSING, duration, number, percent, rows, value, when

# provenance shown elsewhere in the report, or bookkeeping of the file itself
NOT_CONFIGURATION = ("session_id", "status", "reason", "started", "ended", "frames",
                     "outcome", "event_runs", "resumed", "instrument", "model")


def _instrument(provenance: Mapping[str, Any]) -> str:
    instrument = provenance.get("instrument")
    if isinstance(instrument, Mapping):
        uri, ident = instrument.get("uri"), instrument.get("id")
        if uri == "twin":
            return "digital twin (embedded)"
        return " ".join(str(p) for p in (uri, f"({ident})" if ident and ident != uri else "")
                        if p) or MISSING
    return str(instrument) if instrument else MISSING


def _sample(provenance: Mapping[str, Any]) -> str:
    """The sample as stored; for a twin its specimen seed; for a replay its source file."""
    if provenance.get("sample"):
        return str(provenance["sample"])
    config = provenance.get("run_config") if isinstance(provenance.get("run_config"),
                                                         Mapping) else {}
    instrument = str(config.get("instrument") or "")
    if instrument == "twin":
        return f"twin specimen, seed {config.get('seed', MISSING)}"
    if instrument.startswith("replay://"):
        return f"frames of {Path(instrument.removeprefix('replay://')).name}"
    return "not recorded"


def _model(provenance: Mapping[str, Any]) -> str:
    model = provenance.get("model")
    if not isinstance(model, Mapping):
        return str(model) if model else MISSING
    name = Path(str(model.get("path") or "")).name or "model"
    sha = str(model.get("sha256") or "")[:12]
    classes = model.get("class_names") or []
    return f"{name}" + (f" (sha256 {sha}…)" if sha else "") + (
        f", {len(classes)} classes" if classes else "")


def _when(provenance: Mapping[str, Any]) -> str:
    started, ended = provenance.get("started"), provenance.get("ended")
    if not started:
        return MISSING
    text = when(started)
    try:
        seconds = (datetime.fromisoformat(str(ended)) - datetime.fromisoformat(str(started))
                   ).total_seconds() if ended else None
    except ValueError:
        seconds = None
    return text + (f", for {duration(seconds)}" if seconds is not None else "")


def facts(provenance: Mapping[str, Any], facts_rows: list[DecisionRow]) -> list[tuple[str, str]]:
    """(name, formatted value) for the header."""
    routes = Counter(r.route or "no route" for r in facts_rows)
    status = str(provenance.get("status") or MISSING)
    reason = str(provenance.get("reason") or "")
    out = [("Instrument", _instrument(provenance)), ("Sample", _sample(provenance)),
           ("Model", _model(provenance)), ("When", _when(provenance)),
           ("Frames", f"{len(facts_rows)} recorded; session {status}"
                      + (f" ({reason})" if reason else "")),
           ("Routes", ", ".join(f"{name} {n}" for name, n in routes.most_common()) or "none")]
    truths = [r.truth for r in facts_rows]
    final, scored = accuracy([r.label for r in facts_rows], truths)
    if scored:
        alone, _ = accuracy([r.predicted for r in facts_rows], truths)
        out.append(("Accuracy", f"{percent(final)} of {scored} frames with ground truth "
                                f"(classifier alone {percent(alone)})"))
    decided = sum(r.route in {d.value for d in DECIDED_ROUTES} for r in facts_rows)
    if facts_rows:
        out.append(("Coverage", f"{percent(decided / len(facts_rows))} decided on the "
                                f"evidence ({decided} of {len(facts_rows)} frames)"))
    return out


def header_html(provenance: Mapping[str, Any], facts_rows: list[DecisionRow]) -> str:
    items = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>"
                    for k, v in facts(provenance, facts_rows))
    return f'<dl class="facts">{items}</dl>'


def _budgets(provenance: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Each budget as `used of limit`."""
    outcome = provenance.get("outcome") if isinstance(provenance.get("outcome"), Mapping) else {}
    limits = outcome.get("budgets") or provenance.get("budgets") or {}
    used = outcome.get("used") or {}
    out = []
    for key, limit in limits.items():
        spent = used.get(key)
        unit = " s" if key.endswith("_s") else ""
        out.append((key.removesuffix("_s").replace("_", " "),
                    (f"{number(float(spent), 3)}{unit} of " if spent is not None else "")
                    + f"{number(float(limit), 3)}{unit}"))
    return out


def _table_html(title: str, table: list[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{html.escape(name)}</th><td>{html.escape(text)}</td></tr>"
                   for name, text in table)
    return f'<h3>{html.escape(title)}</h3><table class="config">{body}</table>'


def configuration_html(provenance: Mapping[str, Any]) -> str:
    """The run configuration and the rest of the provenance inside a collapsed <details>:
    the single values in one table, then one table per group of settings."""
    single, groups = [], []
    for key, item in provenance.items():
        if key in NOT_CONFIGURATION:
            continue
        title = key.replace("_", " ")
        if key == "budgets":
            groups.append(_table_html("budgets used", _budgets(provenance)))
        elif isinstance(item, Mapping):
            groups.append(_table_html(title, list(rows(item))))
        else:
            single.append((title, value(key, item)))
    return ("<details><summary>Run configuration</summary>"
            + (_table_html("session", single) if single else "") + "".join(groups)
            + "</details>")
