"""
The Markdown tables of the docs: a table whose rows do not all have the
header's number of cells is not a table to Markdown, and shows as a
paragraph of pipes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _cells(line: str) -> int:
    return len(line.strip().strip("|").split("|"))


def _tables(text: str) -> list[list[str]]:
    tables: list[list[str]] = []
    rows: list[str] = []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            rows.append(line)
        elif rows:
            tables.append(rows)
            rows = []
    return tables


@pytest.mark.parametrize("page", sorted(DOCS.glob("*.md")), ids=lambda p: p.name)
def test_every_row_has_the_headers_cells(page: Path) -> None:
    tables = _tables(page.read_text(encoding="utf-8"))
    assert tables, f"{page.name} has no table"
    for rows in tables:
        header = _cells(rows[0])
        assert set(rows[1].replace("|", "").split()) <= {"---", "--:", ":--", ":-:"}
        widths = {row: _cells(row) for row in rows}
        assert {row: n for row, n in widths.items() if n != header} == {}
