"""A Grafana dashboard of a run's maskfocus_* series (actors/metrics.py), one chart per metric.

    python -m maskfocus.actors.grafana deploy/grafana/maskfocus.json

The shipped deploy/grafana/maskfocus.json is this module's output (tests/actors/test_grafana.py keeps the two
equal). Grafana started with Ray's config (`grafana-server --config /tmp/ray/session_latest/metrics/grafana/
grafana.ini web`) loads every dashboard in /tmp/ray/session_latest/metrics/grafana/dashboards/: copy the file
there, or import it in any Grafana (Dashboards > New > Import). It asks for a Prometheus data source and offers
every run seen (the `run` tag: the run folder's name).

Charts, by metric kind: a gauge as it is; a counter as its running total; a histogram as its median and 90th
percentile over the dashboard's rate interval. Ray exports the names with the prefix `ray_`, counters with the
suffix `_total` and histograms as `_bucket` series.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from ray.util.metrics import Counter, Gauge

from maskfocus.actors.metrics import METRICS, MetricSpec

RUN_FILTER = 'run=~"$run"'
QUANTILES = (0.5, 0.9)
RATE_WINDOW = "5m"
"""A histogram gets one observation per iteration, which may take minutes on a large model: Grafana's
$__rate_interval (about 1 min) then holds none, and the chart breaks up."""
PANEL_WIDTH, PANEL_HEIGHT = 12, 8
"""Two charts per row, on Grafana's 24-column grid."""


def metric_queries(name: str, spec: MetricSpec) -> list[tuple[str, str]]:
    """(PromQL expression, legend) for each line of `name`'s chart."""
    extra_tags = [tag for tag in spec.tag_keys if tag != "run"]
    legend = " ".join("{{" + tag + "}}" for tag in ("run", *extra_tags))
    if spec.kind is Gauge:
        return [(f"ray_{name}{{{RUN_FILTER}}}", legend)]
    if spec.kind is Counter:
        return [(f"sum by (run) (ray_{name}_total{{{RUN_FILTER}}})", "{{run}}")]
    by = ", ".join(("le", "run", *extra_tags))
    buckets = f"sum by ({by}) (rate(ray_{name}_bucket{{{RUN_FILTER}}}[{RATE_WINDOW}]))"
    quantiles = [(f"histogram_quantile({q}, {buckets})", f"{legend} p{round(q * 100)}") for q in QUANTILES]
    # the mean, exact where quantiles interpolate inside a bucket (staleness 0 would read 0.25 in [0, 0.5])
    group = ", ".join(("run", *extra_tags))
    totals = [f"sum by ({group}) (rate(ray_{name}_{part}{{{RUN_FILTER}}}[{RATE_WINDOW}]))" for part in ("sum", "count")]
    return [*quantiles, (f"{totals[0]} / {totals[1]}", f"{legend} mean")]


def panel(index: int, name: str, spec: MetricSpec) -> dict[str, Any]:
    targets = [
        {"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend}
        for i, (expr, legend) in enumerate(metric_queries(name, spec))
    ]
    return {
        "id": index + 1,
        "type": "timeseries",
        "title": name.removeprefix("maskfocus_").replace("_", " "),
        "description": f"{name}: {spec.description}",
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {
            "x": (index % 2) * PANEL_WIDTH,
            "y": (index // 2) * PANEL_HEIGHT,
            "w": PANEL_WIDTH,
            "h": PANEL_HEIGHT,
        },
        "targets": targets,
        "fieldConfig": {"defaults": {"unit": "s" if name.endswith("_seconds") else "short"}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
    }


def template_variables() -> list[dict[str, Any]]:
    """A Prometheus data source to pick, and the runs it has seen (all by default)."""
    datasource = {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus"}
    runs_query = "label_values(ray_maskfocus_policy_version, run)"
    run = {
        "name": "run",
        "label": "Run",
        "type": "query",
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "query": {"query": runs_query, "refId": "runs"},
        "definition": runs_query,
        "refresh": 2,
        "multi": True,
        "includeAll": True,
        "allValue": ".*",
        "current": {"text": "All", "value": "$__all"},
    }
    return [datasource, run]


def dashboard(metrics: dict[str, MetricSpec] = METRICS) -> dict[str, Any]:
    return {
        "uid": "maskfocus",
        "title": "maskfocus runs",
        "tags": ["maskfocus", "ray"],
        "schemaVersion": 39,
        "editable": True,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": template_variables()},
        "panels": [panel(i, name, spec) for i, (name, spec) in enumerate(metrics.items())],
    }


def dashboard_json() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


USAGE = "usage: python -m maskfocus.actors.grafana OUT.json  (writes the maskfocus Grafana dashboard there)"


def main(argv: list[str]) -> int:
    if argv in (["-h"], ["--help"]):
        print(USAGE)
        return 0
    if len(argv) != 1 or argv[0].startswith("-") or not argv[0].endswith(".json"):
        print(f"{USAGE}; got {' '.join(argv) or 'no argument'}", file=sys.stderr)
        return 2
    out = Path(argv[0])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(dashboard_json())
    print(f"wrote {out} ({len(METRICS)} charts)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
