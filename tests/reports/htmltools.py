"""A small DOM built with ``html.parser``: enough to find tables, cells, images and text in a report page."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field
from html.parser import HTMLParser

from PIL import Image

_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    children: list[Node | str] = field(default_factory=list)
    parent: Node | None = None

    @property
    def text(self) -> str:
        """Text content with whitespace collapsed."""
        parts: list[str] = []

        def walk(node: Node) -> None:
            for child in node.children:
                if isinstance(child, str):
                    parts.append(child)
                else:
                    walk(child)

        walk(self)
        return " ".join("".join(parts).split())

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    def find_all(self, tag: str, **attrs: str) -> list[Node]:
        """Descendants with this tag; ``class_="x"`` matches one class, other keywords match attributes exactly."""
        found: list[Node] = []
        for child in self.children:
            if isinstance(child, str):
                continue
            if child.tag == tag and all(
                (key == "class_" and value in child.classes) or child.attrs.get(key) == value
                for key, value in attrs.items()
            ):
                found.append(child)
            found.extend(child.find_all(tag, **attrs))
        return found

    def find(self, tag: str, **attrs: str) -> Node:
        matches = self.find_all(tag, **attrs)
        assert matches, f"no <{tag}> with {attrs}"
        return matches[0]


class _Builder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.current = self.root

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs}, parent=self.current)
        self.current.children.append(node)
        if tag not in _VOID:
            self.current = node

    def handle_endtag(self, tag: str) -> None:
        node: Node | None = self.current
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.current = node.parent

    def handle_data(self, data: str) -> None:
        self.current.children.append(data)


def parse(html: str) -> Node:
    builder = _Builder()
    builder.feed(html)
    builder.close()
    return builder.root


def table_rows(table: Node) -> tuple[list[str], list[list[str]], list[Node]]:
    """(header texts of the last header row, body rows as cell texts, body <tr> nodes)."""
    header_rows = table.find("thead").find_all("tr")
    header = [cell.text for cell in header_rows[-1].find_all("th")]
    body = table.find("tbody").find_all("tr")
    return header, [[cell.text for cell in row.find_all("td")] for row in body], body


def decode_png(src: str) -> Image.Image:
    """Decode a ``data:image/png;base64,`` URI (fails on anything else)."""
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix), src[:40]
    image = Image.open(io.BytesIO(base64.b64decode(src[len(prefix) :], validate=True)))
    assert image.format == "PNG"
    image.load()
    return image


def facts(dl: Node) -> dict[str, str]:
    """A ``<dl class="facts">`` as {term: definition}."""
    return dict(zip((dt.text for dt in dl.find_all("dt")), (dd.text for dd in dl.find_all("dd")), strict=True))
