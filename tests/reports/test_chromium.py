"""The report pages in a real headless Chromium: the browser parses them, paints the tables and the figures."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from . import chromium
from .chromium import dump_dom, screenshot
from .conftest import EVIL_CLASS
from .htmltools import parse

#: The estimator bar colour of the τw figure (figures.ESTIMATOR_COLOR, #3b6ea8).
ESTIMATOR_RGB = np.array([0x3B, 0x6E, 0xA8])


def test_benchmark_report_renders_in_headless_chromium(tmp_path, benchmark_html):
    page = tmp_path / "benchmark.html"
    page.write_text(benchmark_html, encoding="utf-8")
    url = page.as_uri()

    png = screenshot(url, tmp_path / "benchmark.png", window_size=(1280, 2000))
    image = Image.open(png)
    assert image.format == "PNG" and image.size == (1280, 2000)
    pixels = np.asarray(image.convert("RGB"), dtype=float)
    assert pixels.std() > 20  # text, tables and figures, not a blank page
    assert (pixels.min(axis=2) < 200).mean() > 0.02  # a fair share of the window is ink, not background
    # The embedded τw figure was decoded and painted: its estimator bars' blue covers a visible area.
    bar_blue = (np.abs(pixels - ESTIMATOR_RGB).max(axis=2) < 12).sum()
    assert bar_blue > 3000

    doc = parse(dump_dom(url))
    assert doc.find("table", id="summary-table").find("tbody").find_all("tr")
    assert len(doc.find_all("table", class_="ranking")) == 3
    images = doc.find_all("img")
    assert len(images) == 4 and all(img.attrs["src"].startswith("data:image/png;base64,") for img in images)
    assert doc.find_all("script") == []


def test_ranking_report_in_chromium_shows_class_names_as_text(tmp_path, ranking_html):
    page = tmp_path / "ranking.html"
    page.write_text(ranking_html, encoding="utf-8")
    doc = parse(dump_dom(page.as_uri()))
    assert doc.find_all("script") == []  # the class name stayed text: no element was created from it
    assert EVIL_CLASS in [li.text for li in doc.find("ul", class_="classes").find_all("li")]
    assert len(doc.find("table", id="ranking-table").find("tbody").find_all("tr")) == 2
    assert len(doc.find_all("img")) == 1


def test_a_missing_chromium_fails_the_test_instead_of_skipping_it(monkeypatch, tmp_path):
    monkeypatch.delenv("CHROMIUM", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(chromium, "DEFAULT_PATH", str(tmp_path / "no-chromium"))
    with pytest.raises(pytest.fail.Exception, match="make chromium"):
        chromium.chromium_path()
