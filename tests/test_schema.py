"""docs/schema.md against the schema definitions it documents: every table of
trace.duckdb (cannoli_db/schema.py), of the Parquet store (cannoli_db/store)
and every view has its section, and the section names each of its columns."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cannoli_db import schema, store

DOC = (Path(__file__).parents[1] / "docs" / "schema.md").read_text()


def sections() -> dict[str, str]:
    """{table name: its section's text} from the `### \\`name\\`...` headings."""
    parts = re.split(r"^### `(\w+)`.*$", DOC, flags=re.M)
    return {parts[k]: parts[k + 1] for k in range(1, len(parts), 2)}


TABLES = {t.name: [c.name for c in t.columns] for t in schema.metadata.sorted_tables}
TABLES.update({name: s.names for name, s in store.SCHEMAS.items()})


@pytest.mark.parametrize("table", sorted(TABLES))
def test_every_table_and_column_is_documented(table):
    text = sections().get(table)
    assert text is not None, f"docs/schema.md has no section for {table}"
    missing = [c for c in TABLES[table] if f"`{c}`" not in text]
    assert not missing, f"docs/schema.md's {table} section does not name {missing}"


@pytest.mark.parametrize("view", sorted(schema.VIEWS))
def test_every_view_is_documented(view):
    assert view in sections(), f"docs/schema.md has no section for the view {view}"


def test_the_documented_schema_version_is_the_code_s():
    assert re.search(rf"schema version {schema.SCHEMA_VERSION}\b", DOC.splitlines()[0])
    assert f"`schema.SCHEMA_VERSION` = {schema.SCHEMA_VERSION}" in DOC
