#!/usr/bin/env python3
"""Checks the observability pack against the code.

* deploy/grafana/leadsync.json is a well-formed Grafana dashboard: unique panel ids, every
  panel inside the 24-column grid with a query, every $variable it uses defined.
* Every metric named in a dashboard query or in deploy/prometheus/leadsync-rules.yml exists:
  `leadsync_*` names in the code (the names src/metrics.rs declares, and literals in
  metric macros under src/ and connectors/; a histogram's _bucket/_sum/_count series count
  as its name), `process_*` names in the
  metrics-process crate the build uses (Cargo.lock's version, in the cargo registry), and
  Prometheus's own `up`.

Usage: python3 deploy/check-observability.py (from anywhere; exits 1 on a problem).
"""
import json
import os
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy/grafana/leadsync.json"
RULES = ROOT / "deploy/prometheus/leadsync-rules.yml"
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
                "unless", "offset", "bool", "le"}
problems = []


def code_metrics():
    names = set()
    for folder in ("src", "connectors"):
        for path in (ROOT / folder).rglob("*.rs"):
            text = path.read_text(encoding="utf-8")
            # A literal in a metrics macro, anywhere.
            names.update(re.findall(r'(?:counter|gauge|histogram)!\(\s*"(leadsync_[a-z_]+)"', text))
    # The names src/metrics.rs declares (`pub const X: &str = "leadsync_…"`).
    text = (ROOT / "src/metrics.rs").read_text(encoding="utf-8")
    names.update(re.findall(r'const [A-Z_]+: &str = "(leadsync_[a-z_]+)"', text))
    return names


def process_metrics():
    lock = (ROOT / "Cargo.lock").read_text(encoding="utf-8")
    m = re.search(r'name = "metrics-process"\nversion = "([^"]+)"', lock)
    if not m:
        return set()
    home = pathlib.Path(os.environ.get("CARGO_HOME", pathlib.Path.home() / ".cargo"))
    names = set()
    for src in home.glob(f"registry/src/*/metrics-process-{m.group(1)}/src"):
        for path in src.rglob("*.rs"):
            names.update(re.findall(r"\{prefix\}(process_[a-z_]+)", path.read_text(encoding="utf-8")))
    if not names:
        problems.append(f"metrics-process {m.group(1)} is not in {home}/registry/src (run a cargo build first)")
    return names


def named_metrics(expr):
    """Metric names in a PromQL expression: identifiers that are not functions, keywords,
    label names (inside {} or by/on (...)), label values (strings) or durations ([5m])."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)          # label values
    expr = re.sub(r"\{[^}]*\}", "{}", expr)                  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "[]", expr)                 # ranges
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        word = m.group(0)
        rest = expr[m.end():].lstrip()
        if rest.startswith("("):     # a function
            continue
        if word in PROMQL_WORDS or word.startswith("$"):
            continue
        names.add(word)
    return names


def known(name, leadsync, process):
    if name == "up" or name in process:
        return True
    if name in leadsync:
        return True
    return any(name.endswith(s) and name[: -len(s)] in leadsync for s in HISTOGRAM_SUFFIXES)


def check_dashboard(leadsync, process):
    try:
        dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        problems.append(f"{DASHBOARD}: not JSON: {e}")
        return set()
    for key in ("title", "uid", "panels", "templating", "schemaVersion"):
        if key not in dash:
            problems.append(f"{DASHBOARD.name}: no {key!r}")
    variables = {v["name"] for v in dash.get("templating", {}).get("list", [])}
    used = set()
    ids = set()
    count = 0
    for p in dash.get("panels", []):
        title = p.get("title", "?")
        if p.get("id") in ids:
            problems.append(f"{DASHBOARD.name}: panel id {p.get('id')} repeats ({title})")
        ids.add(p.get("id"))
        g = p.get("gridPos", {})
        if not all(k in g for k in "hwxy") or g["x"] + g["w"] > 24:
            problems.append(f"{DASHBOARD.name}: panel {title!r} has a bad gridPos {g}")
        text = json.dumps(p)
        for var in re.findall(r"\$\{?([A-Za-z_]+)", text):
            if not var.startswith("__") and var not in variables:
                problems.append(f"{DASHBOARD.name}: panel {title!r} uses ${var}, which is not defined")
        if p.get("type") == "row":
            continue
        count += 1
        targets = p.get("targets", [])
        if not targets or not all(t.get("expr", "").strip() for t in targets):
            problems.append(f"{DASHBOARD.name}: panel {title!r} has no query")
        for t in targets:
            for name in named_metrics(t.get("expr", "")):
                used.add(name)
                if not known(name, leadsync, process):
                    problems.append(f"{DASHBOARD.name}: panel {title!r} queries {name}, which leadsync does not export")
    for v in dash.get("templating", {}).get("list", []):
        q = v.get("query")
        q = q.get("query", "") if isinstance(q, dict) else ""
        m = re.match(r"label_values\(([^,{)]+)", q)
        if m and not known(m.group(1).strip(), leadsync, process):
            problems.append(f"{DASHBOARD.name}: variable {v['name']} reads {m.group(1)}, which leadsync does not export")
    print(f"{DASHBOARD.relative_to(ROOT)}: {count} panels, {len(used)} metric names")
    return used


def check_rules(leadsync, process):
    text = RULES.read_text(encoding="utf-8")
    exprs = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"(\s*)expr:\s*(.*)$", line)
        if not m:
            continue
        value = m.group(2)
        if value in (">-", ">", "|", "|-"):
            block = []
            for nxt in lines[i + 1:]:
                if nxt.strip() and len(nxt) - len(nxt.lstrip()) <= len(m.group(1)):
                    break
                block.append(nxt.strip())
            value = " ".join(block)
        exprs.append(value)
    used = set()
    for e in exprs:
        for name in named_metrics(e):
            used.add(name)
            if not known(name, leadsync, process):
                problems.append(f"{RULES.name}: {name} is not exported by leadsync (in: {e})")
    print(f"{RULES.relative_to(ROOT)}: {len(exprs)} rules, {len(used)} metric names")
    return used


def main():
    leadsync = code_metrics()
    process = process_metrics()
    print(f"the code exports {len(leadsync)} leadsync_* names; metrics-process {len(process)} process_* names")
    used = check_dashboard(leadsync, process) | check_rules(leadsync, process)
    unused = sorted(n for n in leadsync if n not in used and not any(u.startswith(n) for u in used))
    if unused:
        print("not on the dashboard or in an alert (fine, noted):", ", ".join(unused))
    for p in problems:
        print("FAILED:", p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
