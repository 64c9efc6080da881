"""The Grafana dashboard of the maskfocus_* series (that Ray exports the names it queries: tests/test_driver.py)."""

from __future__ import annotations

import json
from pathlib import Path

from ray.util.metrics import Counter, Gauge, Histogram

from maskfocus.actors.grafana import dashboard, dashboard_json, main
from maskfocus.actors.metrics import METRICS

SHIPPED = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "maskfocus.json"


def test_the_shipped_dashboard_is_the_generated_one():
    assert SHIPPED.read_text() == dashboard_json(), "regenerate: python -m maskfocus.actors.grafana " + str(SHIPPED)


def test_one_chart_per_metric_with_queries_by_kind_filtered_by_run():
    panels = {panel["description"].split(":")[0]: panel for panel in dashboard()["panels"]}
    assert panels.keys() == METRICS.keys()
    for name, spec in METRICS.items():
        exprs = [target["expr"] for target in panels[name]["targets"]]
        assert all('run=~"$run"' in expr for expr in exprs), name
        if spec.kind is Gauge:
            assert exprs == [f'ray_{name}{{run=~"$run"}}']
        elif spec.kind is Counter:
            assert exprs == [f'sum by (run) (ray_{name}_total{{run=~"$run"}})']
        else:
            assert spec.kind is Histogram
            assert [e.split(",")[0] for e in exprs[:2]] == ["histogram_quantile(0.5", "histogram_quantile(0.9"], name
            assert all(f'rate(ray_{name}_bucket{{run=~"$run"}}[5m])' in e for e in exprs[:2]), name
            # the mean: exact where a quantile interpolates inside a bucket (staleness 0 read as 0.25)
            assert exprs[2].startswith("sum by (run") and f"rate(ray_{name}_sum" in exprs[2], name
            assert exprs[2].endswith(f'(rate(ray_{name}_count{{run=~"$run"}}[5m]))'), name
    sync = panels["maskfocus_weight_sync_seconds"]
    assert "stage" in sync["targets"][0]["expr"] and "{{stage}}" in sync["targets"][0]["legendFormat"]
    assert sync["fieldConfig"]["defaults"]["unit"] == "s"


def test_charts_tile_the_grid_without_overlap_and_ids_are_unique():
    panels = dashboard()["panels"]
    cells = [(p["gridPos"]["x"], p["gridPos"]["y"]) for p in panels]
    assert len(set(cells)) == len(cells) and all(p["gridPos"]["x"] + p["gridPos"]["w"] <= 24 for p in panels)
    assert sorted(p["id"] for p in panels) == list(range(1, len(panels) + 1))
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert variables["run"]["includeAll"] and variables["datasource"]["query"] == "prometheus"


def test_the_command_writes_the_dashboard_and_refuses_a_wrong_call(tmp_path, capsys):
    out = tmp_path / "dashboards" / "maskfocus.json"
    assert main([str(out)]) == 0
    assert json.loads(out.read_text()) == dashboard()
    assert main([]) == 2 and "usage" in capsys.readouterr().err
    assert main(["--help"]) == 0 and "usage" in capsys.readouterr().out  # it wrote a dashboard named --help
    for wrong in (["-o", str(out)], [str(tmp_path / "dashboard.yaml")], [str(out), str(out)]):
        assert main(wrong) == 2 and "usage" in capsys.readouterr().err
    assert not (tmp_path / "dashboard.yaml").exists()
