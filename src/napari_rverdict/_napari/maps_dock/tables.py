"""Show a :mod:`napari_rverdict.maps.compare` table in a read-only QTableWidget."""

from __future__ import annotations

import numpy as np
from qtpy.QtWidgets import QTableWidget, QTableWidgetItem


def _table_rows(table) -> list[dict]:
    rows = getattr(table, "rows", table)
    return [dict(r) for r in (rows or [])]


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, (float, np.floating)):
        if not np.isfinite(v):
            return "–"
        return f"{v:.4g}"
    return str(v)


def fill_table(widget: QTableWidget, table) -> None:
    """Show a compare table (``.rows`` dicts, ``.columns``) in a read-only QTableWidget; all-empty columns and
    provenance columns are left out."""
    rows = _table_rows(table)
    columns = list(getattr(table, "columns", ()) or dict.fromkeys(k for r in rows for k in r))
    columns = [c for c in columns if c not in ("range_source", "label") and any(r.get(c) is not None for r in rows)]
    widget.clear()
    widget.setColumnCount(len(columns))
    widget.setRowCount(len(rows))
    widget.setHorizontalHeaderLabels(columns)
    for i, r in enumerate(rows):
        for j, c in enumerate(columns):
            widget.setItem(i, j, QTableWidgetItem(_fmt(r.get(c, ""))))
    widget.resizeColumnsToContents()
