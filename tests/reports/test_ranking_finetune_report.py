"""The ranking page (from a real ranking), the fine-tune page, and dispatch on the result kind."""

from __future__ import annotations

import copy
import json

import pytest

from service.contract import load_result
from service.errors import InvalidResult
from service.reports import render_finetune_report, render_ranking_report, render_report, result_kind

from .builders import finetune_result
from .conftest import EVIL_CLASS
from .htmltools import decode_png, facts, parse, table_rows


def test_ranking_table_has_every_backbone_in_rank_order(ranking, ranking_html):
    doc = parse(ranking_html)
    header, rows, nodes = table_rows(doc.find("table", id="ranking-table"))
    assert header == ["rank", "backbone", "mean rank", "top pick of", "dim", "weights", "time"]
    assert [node.attrs["data-backbone"] for node in nodes] == [b["id"] for b in ranking["backbones"]]
    n_estimators = len(ranking["estimators"])
    for row, backbone in zip(rows, ranking["backbones"], strict=True):
        assert row[0] == str(backbone["rank"])
        assert row[1] == backbone["id"]
        assert row[2] == f"{backbone['mean_rank']:.2f}"
        assert row[3] == f"{sum(r == 1.0 for r in backbone['ranks'].values())} / {n_estimators}"
        assert row[4] == f"{backbone['feature_dim']:,}"
        assert row[5] == backbone["weights_source"]
        seconds = sum(backbone["seconds"][k] for k in ("load", "extract", "score"))
        assert row[6] == (f"{seconds:.2f} s" if seconds < 10 else f"{seconds:.1f} s")


def test_scores_table_has_each_estimators_score_and_rank_for_every_backbone(ranking, ranking_html):
    header, rows, nodes = table_rows(parse(ranking_html).find("table", id="scores-table"))
    assert header == ["estimator", *(b["id"] for b in ranking["backbones"])]
    assert len(ranking["estimators"]) >= 10  # every default estimator applies to these two backbones
    assert [node.attrs["data-estimator"] for node in nodes] == [e["name"] for e in ranking["estimators"]]
    for row, node, info in zip(rows, nodes, ranking["estimators"], strict=True):
        assert row[0] == f"{info['name']} {'↑' if info['higher_is_better'] else '↓'}"
        cells = node.find_all("td")[1:]
        for text, cell, backbone in zip(row[1:], cells, ranking["backbones"], strict=True):
            value, rank = backbone["scores"][info["name"]], backbone["ranks"][info["name"]]
            assert text == f"{value:.4g} #{rank:g}"
            assert ("top" in cell.classes) is (rank == 1.0)


def test_ranking_dataset_summary_and_score_bars(ranking, ranking_html):
    doc = parse(ranking_html)
    pairs = facts(doc.find("dl", class_="facts"))
    assert pairs["dataset"] == ranking["dataset"]["ref"]["path"] and pairs["dataset"].endswith("labels.csv")
    assert pairs["images"] == "24" and pairs["classes"] == "3" and pairs["images per class"] == "8 – 8"
    assert pairs["skipped while listing"] == "none" and pairs["undecodable, skipped"] == "none"
    assert [li.text for li in doc.find("ul", class_="classes").find_all("li")] == ranking["dataset"]["classes"]
    (image,) = doc.find_all("img")
    png = decode_png(image.attrs["src"])
    assert png.size[0] >= 800 and png.size[1] >= 300  # 12 panels, 4 per row


def test_ranking_class_names_are_escaped(ranking_html):
    assert EVIL_CLASS in ranking_html.replace("&lt;", "<").replace("&gt;", ">").replace("&#34;", '"').replace(
        "&amp;", "&"
    )
    assert "<script>" not in ranking_html and parse(ranking_html).find_all("script") == []
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; co" in ranking_html


def test_ranking_with_null_scores_and_skipped_files(ranking):
    result = copy.deepcopy(ranking)
    keep = ("logme", "leep", "pactran_dirichlet")
    result["estimators"] = [e for e in result["estimators"] if e["name"] in keep]  # fewer panels to draw
    first = result["backbones"][0]
    first["scores"]["leep"] = None
    first["ranks"]["leep"] = None
    first["mean_rank"] = float("inf")
    result["dataset"]["skipped"] = {"corrupt": 2, "too_large": 1}
    result["failed_images"] = 3
    doc = parse(render_ranking_report(result))
    _, rows, _ = table_rows(doc.find("table", id="ranking-table"))
    assert rows[0][2] == "n/a" and rows[0][3] == f"{sum(first['ranks'][name] == 1.0 for name in keep)} / 3"
    _, scores, _ = table_rows(doc.find("table", id="scores-table"))
    assert [row[0] for row in scores] == ["leep ↑", "logme ↑", "pactran_dirichlet ↓"]  # the result's order
    assert scores[0][1] == "n/a n/a"
    assert len(doc.find_all("img")) == 1
    pairs = facts(doc.find("dl", class_="facts"))
    assert pairs["skipped while listing"] == "corrupt: 2, too_large: 1" and pairs["undecodable, skipped"] == "3"


def test_finetune_report_tables_and_confusion_matrix():
    result = finetune_result()
    doc = parse(render_report(result))
    assert doc.find("h1").text == "Fine-tune: zoo:latin-resnet10t on builtin:glyphs-greek"
    assert doc.find("div", id="test-accuracy").text == "71.2 ± 1.2"
    _, lr_rows, _ = table_rows(doc.find("table", id="lr-table"))
    assert lr_rows == [["0.003", "61.0", ""], ["0.01", "74.0", "chosen"], ["0.03", "70.0", ""]]
    _, classes, _ = table_rows(doc.find("table", id="per-class-table"))
    assert classes == [["alpha", "82.4", "17"], ["beta", "82.4", "17"], ["gamma", "82.4", "17"], ["delta", "n/a", "0"]]
    _, splits, _ = table_rows(doc.find("table", id="splits-table"))
    assert splits[1] == ["val", "40", "0", "carved from train"]
    (image,) = doc.find_all("img")
    png = decode_png(image.attrs["src"])
    assert 400 <= png.size[0] <= 1500 and png.size[1] >= 400


def test_finetune_report_escapes_class_names_and_survives_non_finite_numbers():
    result = finetune_result(classes=("a", EVIL_CLASS))
    result["test_accuracy"] = {"mean": float("nan"), "std": float("nan"), "per_seed": []}
    result["val_accuracy_by_lr"] = {}
    result["seconds"]["total"] = float("inf")
    html = render_finetune_report(result)
    doc = parse(html)
    assert doc.find_all("script") == [] and "<script>" not in html
    assert doc.find("div", id="test-accuracy").text == "n/a" and facts(doc.find("dl", class_="facts"))["time"] == "n/a"
    assert [row[0] for row in table_rows(doc.find("table", id="per-class-table"))[1]] == ["a", EVIL_CLASS]


def test_pages_read_the_typed_model_and_refuse_what_does_not_validate(ranking, ranking_html):
    # Each page takes its typed model or a document, which it validates as render_report does.
    assert render_ranking_report(load_result(copy.deepcopy(ranking))) == render_ranking_report(ranking) == ranking_html
    typed = load_result(finetune_result())
    assert render_finetune_report(typed) == render_report(typed) == render_finetune_report(finetune_result())
    result = finetune_result()
    result["test_accuracy"] = {"mean": None, "std": None, "per_seed": []}
    with pytest.raises(InvalidResult, match=r"^malformed finetune result \(2 problem\(s\)\): test_accuracy\.mean: "):
        render_finetune_report(result)
    with pytest.raises(InvalidResult, match="^not a ranking result: got a finetune result$"):
        render_ranking_report(typed)  # type: ignore[arg-type]
    with pytest.raises(InvalidResult, match="^a fine-tune result must be a JSON object, got list$"):
        render_finetune_report([1, 2])  # type: ignore[arg-type]


def test_dispatch_on_result_kind(ranking, ranking_html, benchmark_html):
    assert result_kind({"kind": "benchmark"}) == "benchmark"
    assert result_kind(json.loads(json.dumps(ranking))) == "ranking"  # as read back from `rank --json`
    assert result_kind(finetune_result()) == "finetune"
    assert parse(ranking_html).find("h1").text == f"Ranking: {ranking['dataset']['ref']['path']}"
    assert parse(benchmark_html).find("h1").text == "Benchmark: default"


@pytest.mark.parametrize("value", [{}, {"kind": "other", "backbones": []}, {"strategy": "full"}])
def test_unrecognised_results_are_a_value_error_with_a_clear_message(value):
    with pytest.raises(ValueError, match="not a backbone-rank result: expected a benchmark result") as info:
        render_report(value)
    assert isinstance(info.value, InvalidResult) and info.value.code == "invalid_result"


def test_non_objects_are_a_value_error():
    with pytest.raises(ValueError, match="must be a JSON object, got list"):
        render_report([1, 2])  # type: ignore[arg-type]


def test_concurrent_renders_match_a_serial_one():
    # The web process renders in a thread pool: figures must not share state (no pyplot, no global rcParams edits).
    from concurrent.futures import ThreadPoolExecutor

    result = finetune_result()
    serial = render_finetune_report(result)
    with ThreadPoolExecutor(max_workers=4) as pool:
        pages = list(pool.map(render_finetune_report, [result] * 4))
    assert all(page == serial for page in pages)
