"""The benchmark page: tables, figures, honest reading, nulls and escaping, read back with html.parser."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
from scipy.stats import rankdata

from service.contract import load_result
from service.errors import InvalidResult
from service.reports import honest_reading, render_benchmark_report, render_report
from service.reports._format import fmt_number

from .builders import BACKBONES, ESTIMATORS, TARGETS, benchmark_result, edge_benchmark_result
from .htmltools import decode_png, facts, parse, table_rows

METHODS = (*ESTIMATORS, "source_accuracy", "feature_dim", "random")


def _by_tau(benchmark: dict[str, Any]) -> list[str]:
    summary = benchmark["summary"]
    return sorted(METHODS, key=lambda m: -(summary[m]["weighted_tau"]["mean"]))


def test_summary_table_lists_every_method_sorted_by_mean_weighted_tau(benchmark, benchmark_html):
    doc = parse(benchmark_html)
    header, rows, nodes = table_rows(doc.find("table", id="summary-table"))
    assert header == ["method", "kind", "τw", "Kendall τ", "Pearson r", "top-1 regret (pp)", "targets"]
    assert [node.attrs["data-method"] for node in nodes] == _by_tau(benchmark)
    for row, node in zip(rows, nodes, strict=True):
        name = node.attrs["data-method"]
        stats = benchmark["summary"][name]
        is_baseline = name in ("source_accuracy", "feature_dim", "random")
        assert ("baseline" in node.classes) is is_baseline
        assert row[1] == ("baseline" if is_baseline else "estimator")
        tau = stats["weighted_tau"]
        assert row[2] == f"{tau['mean']:.3f} [{tau['ci_low']:.3f}, {tau['ci_high']:.3f}]"
        assert row[3].startswith(f"{stats['kendall_tau']['mean']:.3f}")
        assert row[4].startswith(f"{stats['pearson']['mean']:.3f}")
        regret = stats["top1_regret"]
        assert row[5] == f"{100 * regret['mean']:.1f} [{100 * regret['ci_low']:.1f}, {100 * regret['ci_high']:.1f}]"
        assert row[6] == "3"


def test_figures_are_embedded_pngs_one_summary_and_one_scatter_per_target(benchmark_html):
    images = parse(benchmark_html).find_all("img")
    assert len(images) == 1 + 3
    assert images[0].attrs["alt"] == "τw per method with 95% CI across targets"
    assert [img.attrs["alt"] for img in images[1:]] == [
        "glyphs-greek: score vs actual accuracy",
        "textures-fine: score vs actual accuracy",
        "digits: score vs actual accuracy",
    ]
    for img in images:
        png = decode_png(img.attrs["src"])
        # 1.5x the CSS size (sharp on screens and in print), within sane bounds.
        css = np.array([int(img.attrs["width"]), int(img.attrs["height"])])
        assert np.all(np.abs(np.array(png.size) - 1.5 * css) <= 1)
        assert 500 <= png.size[0] <= 2000 and 250 <= png.size[1] <= 2500
        pixels = np.asarray(png.convert("L"), dtype=float)
        assert pixels.std() > 10  # not a blank canvas
    # 7 methods -> 2 rows of 4 panels in each scatter figure: taller than the one-axes summary figure is wide/high.
    scatter = decode_png(images[1].attrs["src"])
    assert scatter.size[1] > 400


def test_target_section_ranks_backbones_by_actual_accuracy_with_every_estimator(benchmark, benchmark_html):
    tables = parse(benchmark_html).find_all("table", class_="ranking")
    assert [t.attrs["data-target"] for t in tables] == ["glyphs-greek", "textures-fine", "digits"]
    for table, target in zip(tables, benchmark["targets"], strict=True):
        header, rows, nodes = table_rows(table)
        assert header == [
            "#",
            "backbone",
            "accuracy (%)",
            *(f"{e} ↑" for e in ESTIMATORS),
            "linear probe (%)",
            "source acc. (%)",
            "dim",
        ]
        by_accuracy = sorted(target["backbones"], key=lambda b: -b["accuracy"]["mean"])
        assert [node.attrs["data-backbone"] for node in nodes] == [b["id"] for b in by_accuracy]
        assert [row[0] for row in rows] == ["1", "2", "3", "4", "5"]
        for row, backbone in zip(rows, by_accuracy, strict=True):
            acc = backbone["accuracy"]
            assert row[2] == f"{100 * acc['mean']:.1f} ± {100 * acc['std']:.1f}"
            probe = backbone["linear_probe_accuracy"]
            assert row[-3] == ("n/a" if probe is None else f"{100 * probe:.1f}")
            source = backbone["source_accuracy"]
            assert row[-2] == ("n/a" if source is None else f"{100 * source:.1f}")
            assert row[-1] == f"{backbone['feature_dim']:,}"
        for column, name in enumerate(ESTIMATORS, start=3):
            scores = [b["scores"][name] for b in by_accuracy]
            present = [s for s in scores if s is not None]
            expected_ranks = iter(rankdata([-s for s in present]))
            for row, value in zip(rows, scores, strict=True):
                if value is None:
                    assert row[column] == "n/a"
                else:
                    assert row[column] == f"{value:.4g} ({next(expected_ranks):g})"
    # The untrained control has no LEEP/NCE and no source accuracy: n/a, never a crash or a blank.
    control = next(n for n in tables[0].find_all("tr") if n.attrs.get("data-backbone") == "random:resnet10t")
    cells = [c.text for c in control.find_all("td")]
    assert cells[4] == "n/a" and cells[5] == "n/a" and cells[-2] == "n/a"


def test_cost_section_and_environment(benchmark, benchmark_html):
    doc = parse(benchmark_html)
    header, rows, _ = table_rows(doc.find("table", class_="cost"))
    assert header == ["backbone", "ranking", "fine-tuning", "ratio"]
    assert [row[0] for row in rows] == [b[0] for b in BACKBONES]
    cost = benchmark["cost"]
    ratio = f"{cost['ratio']:,.0f}×"
    cards = {
        card.find("div", class_="label").text: card.find("div", class_="value").text
        for card in doc.find_all("div", class_="card")
    }
    assert cards["fine-tuning / ranking"] == ratio and cards["fine-tuning / ranking time"] == ratio
    assert cards["ranking, all backbones"] == f"{cost['ranking_seconds']:.1f} s"  # 24.0 s
    assert cards["targets"] == "3" and cards["backbones"] == "5" and cards["estimators / baselines"] == "4 / 3"
    pairs = facts(doc.find_all("dl", class_="facts")[-1])
    assert pairs["fingerprint"] == benchmark["environment"]["fingerprint"]
    assert pairs["git_commit"] == "n/a"


def _reading(html: str) -> list[str]:
    return [p.text for p in parse(html).find("div", id="honest-reading").find_all("p")]


def test_the_page_carries_the_honest_reading(benchmark, benchmark_html):
    assert _reading(benchmark_html) == honest_reading(benchmark)
    assert len(_reading(benchmark_html)) >= 4


def test_honest_reading_states_who_beats_the_best_baseline_and_who_is_below_zero(benchmark):
    result = copy.deepcopy(benchmark)
    summary = result["summary"]
    summary["nce"]["weighted_tau"].update(mean=-0.12, ci_low=-0.3, ci_high=0.05)
    summary["feature_dim"]["weighted_tau"].update(mean=0.5, ci_low=0.4, ci_high=0.6)
    summary["source_accuracy"]["weighted_tau"].update(mean=0.1, ci_low=0.0, ci_high=0.2)
    summary["random"]["weighted_tau"].update(mean=0.0, ci_low=-0.2, ci_high=0.2)
    above = [m for m in ESTIMATORS if summary[m]["weighted_tau"]["mean"] > 0.5]
    above.sort(key=lambda m: -summary[m]["weighted_tau"]["mean"])
    sentences = honest_reading(result)
    assert "The best baseline by mean τw is feature_dim (0.500)." in sentences
    listed = ", ".join(f"{m} ({summary[m]['weighted_tau']['mean']:.3f})" for m in above)
    assert f"{len(above)} of 4 estimator(s) have a higher mean τw: {listed}." in sentences
    assert "Mean τw below zero (ranks worse than chance on average): nce (-0.120)." in sentences
    clear = [m for m in above if summary[m]["weighted_tau"]["ci_low"] > 0.5]
    if clear:
        assert any(s.endswith(f"for: {', '.join(clear)}.") for s in sentences)


def test_honest_reading_when_no_estimator_beats_a_baseline(benchmark):
    result = copy.deepcopy(benchmark)
    result["summary"]["random"]["weighted_tau"].update(mean=0.99)
    sentences = honest_reading(result)
    assert "No estimator has a higher mean τw than random." in sentences
    assert "No estimator has a mean τw below zero." in sentences


def test_degenerate_targets_and_nulls_render_as_na():
    result = edge_benchmark_result()
    html = render_report(result)
    doc = parse(html)
    single = doc.find("table", class_="ranking")
    _, rows, _ = table_rows(single)
    assert len(rows) == 1 and rows[0][0] == "1"
    assert "Fewer than two backbones: rank correlations are undefined (n/a)." in html
    # constant logme scores on the second target: every backbone shares rank 3, τw n/a
    _, rows, _ = table_rows(doc.find_all("table", class_="ranking")[1])
    assert {row[3] for row in rows} == {"0.5 (3)"}
    _, summary_rows, nodes = table_rows(doc.find("table", id="summary-table"))
    assert len(nodes) == 2 + 3
    logme = summary_rows[[n.attrs["data-method"] for n in nodes].index("logme")]
    assert logme[2:5] == ["n/a", "n/a", "n/a"] and logme[-1] == "0"
    assert nodes[-1].attrs["data-method"] == "logme"  # n/a sorts last
    assert "No mean τw (n/a) for: logme." in _reading(html)
    assert "zoo:missing: [weights_unavailable] not found" in doc.find("ul", id="skipped-list").text
    assert len(doc.find_all("img")) == 3


def test_published_ground_truth_without_finetuning_shows_na_for_what_was_not_measured():
    result = benchmark_result(targets=TARGETS[:1], estimators=("logme",))
    result["suite"]["ground_truth"] = "published"
    for row in result["targets"][0]["backbones"]:
        row["accuracy"] = {"mean": row["accuracy"]["mean"], "std": None, "per_seed": [row["accuracy"]["mean"]]}
        row.update(linear_probe_accuracy=None, finetune=None)
        row["seconds"]["finetune"] = None
    result["cost"].update(finetune_seconds=None, ratio=None)
    for entry in result["cost"]["per_backbone"]:
        entry["finetune_seconds"] = 0.0  # what benchmark.summarize accumulates when nothing was fine-tuned
    doc = parse(render_benchmark_report(result))
    assert "ground truth: published accuracies" in doc.find("p", class_="subtitle").text
    _, rows, _ = table_rows(doc.find("table", class_="ranking"))
    top = max(result["targets"][0]["backbones"], key=lambda b: b["accuracy"]["mean"])
    assert rows[0][2] == f"{100 * top['accuracy']['mean']:.1f}" and {row[-3] for row in rows} == {"n/a"}
    _, cost_rows, _ = table_rows(doc.find("table", class_="cost"))
    assert {(row[2], row[3]) for row in cost_rows} == {("n/a", "n/a")}
    labels = [card.find("div", class_="label").text for card in doc.find_all("div", class_="card")]
    assert "fine-tuning / ranking time" not in labels  # no ratio card without a fine-tuning cost


def test_lower_is_better_estimators_rank_small_scores_first():
    result = benchmark_result(targets=TARGETS[:1], estimators=("logme", "nce"))
    result["estimators"][1]["higher_is_better"] = False
    table = parse(render_benchmark_report(result)).find("table", class_="ranking")
    header, rows, _ = table_rows(table)
    assert header[3:5] == ["logme ↑", "nce ↓"]
    scores = [row[4] for row in rows if row[4] != "n/a"]
    values = [float(cell.split()[0]) for cell in scores]
    ranks = [float(cell.split()[1].strip("()")) for cell in scores]
    assert sorted(values) == [values[ranks.index(r)] for r in sorted(ranks)]  # rank 1 = smallest score


def test_a_partial_benchmark_is_refused_by_the_page_as_by_render_report():
    # the page reads the typed model, so a document missing what the model requires is refused before any view
    partial = {
        "kind": "benchmark",
        "summary": {"x": {"weighted_tau": {"mean": None}}},
        "targets": [{"name": "t", "backbones": [{"id": "b", "scores": {"x": float("nan")}, "accuracy": None}]}],
    }
    with pytest.raises(InvalidResult) as page:
        render_benchmark_report(partial)
    with pytest.raises(InvalidResult) as dispatched:
        render_report(partial)
    assert str(page.value) == str(dispatched.value)
    assert str(page.value).startswith("malformed benchmark result (16 problem(s)): suite: Field required")


def test_loose_backbone_rows_with_nulls_and_nan_render_as_na():
    # Target rows are the model's loose part (dict[str, Any]): what is null, NaN or missing there shows as n/a.
    result = benchmark_result(targets=TARGETS[:1], backbones=BACKBONES[:2], estimators=("logme",))
    rows = result["targets"][0]["backbones"]
    rows[1].update(scores={"logme": float("nan")}, accuracy=None, linear_probe_accuracy=None, source_accuracy=None)
    del rows[1]["feature_dim"]
    _, table, _ = table_rows(parse(render_benchmark_report(result)).find("table", class_="ranking"))
    assert table[-1] == ["n/a", BACKBONES[1][0], "n/a", "n/a", "n/a", "n/a", "n/a"]


def test_user_text_is_escaped():
    result = benchmark_result(targets=TARGETS[:2], backbones=BACKBONES[:3], estimators=("logme",))
    evil = "<script>alert(1)</script>"
    result["suite"]["name"] = evil
    result["suite"]["description"] = f"<img src=x onerror=alert(2)> {evil}"
    result["targets"][1]["name"] = f"<b>bold</b>{evil}"
    result["targets"][1]["backbones"][0]["id"] = f"zoo:{evil}"
    result["environment"]["platform"] = evil
    html = render_report(result)
    doc = parse(html)
    assert doc.find_all("script") == [] and "<script>" not in html and "<b>bold" not in html
    assert doc.find_all("img", src="x") == []
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert doc.find("h1").text == f"Benchmark: {evil}"
    assert any(row.attrs.get("data-backbone") == f"zoo:{evil}" for row in doc.find_all("tr"))


@pytest.mark.parametrize(
    "result",
    [{"kind": "benchmark", "targets": "not a list", "summary": []}, {"kind": "benchmark", "targets": [3, None]}],
)
def test_structurally_odd_benchmarks_are_an_invalid_result(result):
    for render in (render_benchmark_report, render_report, honest_reading):
        with pytest.raises(InvalidResult, match=r"^malformed benchmark result \(\d+ problem\(s\)\): "):
            render(result)


def test_wrong_types_are_an_invalid_result(ranking):
    with pytest.raises(InvalidResult, match="must be a JSON object"):
        render_benchmark_report(["kind", "benchmark"])  # type: ignore[arg-type]
    with pytest.raises(InvalidResult, match="^not a benchmark result: got a ranking result$"):
        render_benchmark_report(ranking)


def test_the_page_of_the_typed_model_is_the_page_of_its_document(benchmark, benchmark_html):
    typed = load_result(copy.deepcopy(benchmark))
    assert render_benchmark_report(typed) == render_report(typed) == benchmark_html
    assert render_benchmark_report(benchmark) == benchmark_html
    assert honest_reading(typed) == honest_reading(benchmark)


def _with_products() -> dict[str, Any]:
    """The builder's result re-summarised with the product's orders (a hand-made calibration of logme and sfda) and
    a random-init control that probes best but fine-tunes worst on the first target."""
    from service.pipeline.benchmark.default_order import resummarize
    from service.pipeline.calibration.model import AccuracyModel, Calibration, Fusion

    calibration = Calibration(
        accuracy={"finetune": [AccuracyModel(("logme",), (0.0, 0.5), (-0.2, 0.2), n_train=10)], "linear_probe": None},
        fusion=Fusion(("logme", "sfda"), (1.0, 1.0), "rank", {"logme": True, "sfda": True}),
        source={"results": [{"suite": "default", "created": "2026-11-23T12:00:00Z"}]},  # fitted on this result
        created="2026-12-01T00:00:00Z",
        path="/calibrations/hand.json",
    )
    result = copy.deepcopy(benchmark_result())
    rows = result["targets"][0]["backbones"]
    control = next(r for r in rows if r["id"] == "random:resnet10t")
    control["linear_probe_accuracy"] = max(r["linear_probe_accuracy"] or 0.0 for r in rows) + 0.05
    return resummarize(result, calibration, n_bootstrap=0)


def test_the_products_orders_come_first_in_the_summary_and_in_every_target():
    result = _with_products()
    doc = parse(render_benchmark_report(result))
    _, rows, nodes = table_rows(doc.find("table", id="summary-table"))
    assert [n.attrs["data-method"] for n in nodes[:2]] == ["default", "predicted_accuracy"]
    assert [row[1] for row in rows[:2]] == ["default", "product"] and "product" in nodes[0].classes
    stats = result["summary"]["default"]["weighted_tau"]
    tau, ci = stats["mean"], f"[{stats['ci_low']:.3f}, {stats['ci_high']:.3f}]"
    assert rows[0][2] == f"{tau:.3f} {ci}"
    labels = [card.find("div", class_="label").text for card in doc.find_all("div", class_="card")]
    assert labels[0] == "default order τw (what rank returns)"
    line = doc.find("p", id="default-calibration").text
    assert line.startswith("The default order applied the calibration /calibrations/hand.json (created 2026-12-01")
    assert "a rank fusion of logme, sfda." in line and "fitted on this result, so the product's numbers" in line
    reading = _reading(render_benchmark_report(result))
    regret = result["summary"]["default"]["top1_regret"]["mean"]
    assert reading[0] == (
        f"The default order (what `rank` returns with default settings) has a mean τw of {tau:.3f} (95 % CI {ci}) "
        f"and a mean top-1 regret of {100 * regret:.1f} accuracy points, over 3 target(s)."
    )
    assert reading[1].startswith("The order by predicted accuracy has a mean τw of")
    assert reading[2].startswith("The highest mean τw among the estimators is")  # products are not estimators
    header, target_rows, _ = table_rows(doc.find("table", class_="ranking"))
    assert header[3:5] == ["default ↑", "predicted_accuracy ↑"]
    by_id = {row[1]: row for row in target_rows}
    for backbone in result["targets"][0]["backbones"]:
        assert by_id[backbone["id"]][3].split(" (")[0] == fmt_number(backbone["default"])
    _, metric_rows, _ = table_rows(doc.find("table", class_="target-metrics"))
    assert [row[0] for row in metric_rows[:2]] == ["default default", "predicted_accuracy product"]


def test_ground_truth_disagreements_are_a_warning_in_words():
    result = _with_products()
    messages = [flag["message"] for flag in result["ground_truth_flags"]]
    assert any(
        m.startswith("random:resnet10t on glyphs-greek (best by linear probe): best by linear probe") for m in messages
    )
    doc = parse(render_benchmark_report(result))
    warning = doc.find("div", id="ground-truth-flags")
    assert "warning" in warning.classes
    assert [li.text for li in warning.find_all("li")] == messages
    assert "which backbone is best depends on how you transfer" in warning.text


def test_a_result_recorded_without_the_products_orders_renders_as_before(benchmark, benchmark_html):
    assert "default_order" not in benchmark and all(not s.get("is_product") for s in benchmark["summary"].values())
    doc = parse(benchmark_html)
    _, _, nodes = table_rows(doc.find("table", id="summary-table"))
    assert not any("product" in node.classes for node in nodes)
    labels = [card.find("div", class_="label").text for card in doc.find_all("div", class_="card")]
    assert labels[0] == "targets"
    assert "default-calibration" not in benchmark_html and "p-best-reading" not in benchmark_html
    assert "which backbone is best depends on how you transfer" not in benchmark_html
    assert not honest_reading(benchmark)[0].startswith("The default order")
