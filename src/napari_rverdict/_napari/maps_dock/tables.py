"""The Maps dock's tables, in the display units of the map layers (cellularity in 10⁻³ µm⁻³):

* ROI statistics: one row per region (and method), a column per map with its unit in the header, cells
  "mean ± sd" (median, and the mean voxel sd when there is one, in the cell's tooltip);
* network vs NLLS: one row per map with the Train dock's columns (RMSE, MAPE in % of the range).
"""

from __future__ import annotations

import numpy as np
from qtpy.QtWidgets import QHeaderView, QTableWidget, QTableWidgetItem

from napari_rverdict._napari._common import format_number
from napari_rverdict._napari.reader import display_factor, map_layer_name, map_spec_for

RMSE_TIP = "root mean squared difference between the network's and the NLLS maps, in the map's unit"
MAPE_TIP = "mean absolute difference as a percentage of the map's range (the training range for parameters)"


def map_header(name: str) -> str:
    """'f_ic [fraction]', 'R [µm]', 'cellularity [10⁻³ µm⁻³]', 'fit_nrmse [fraction of signal]'."""
    spec = map_spec_for(name)
    return map_layer_name(spec) if spec is not None else name


def roi_rows(tables: dict) -> tuple[list[str], list[list[tuple[str, str]]]]:
    """({method: RoiTable}) → (column headers, rows of (text, tooltip) cells), one row per region and method."""
    maps = list(dict.fromkeys(r["map"] for t in tables.values() for r in t.rows))
    with_method = len(tables) > 1
    columns = ["region"] + (["method"] if with_method else []) + ["n"] + [map_header(m) for m in maps]
    rows = []
    for method, table in tables.items():
        index = {(r["name"], r["map"]): r for r in table.rows}
        for region in dict.fromkeys(r["name"] for r in table.rows):
            first = index[(region, next(m for m in maps if (region, m) in index))]
            cells = [(region, "")] + ([(method, "")] if with_method else []) + [(str(first["n"]), "voxels")]
            for m in maps:
                r = index.get((region, m))
                if r is None:
                    cells.append(("–", ""))
                    continue
                f = display_factor(m)
                text = f"{format_number(r['mean'] * f)} ± {format_number(r['sd'] * f, '.2g')}"
                tip = f"mean ± sd over {r['n']} voxels; median {format_number(r['median'] * f)}"
                if r.get("mean_sd") is not None:
                    tip += f"; mean voxel sd (uncertainty) {format_number(r['mean_sd'] * f)}"
                cells.append((text, tip))
            rows.append(cells)
    return columns, rows


def comparison_rows(table) -> tuple[list[str], list[list[tuple[str, str]]]]:
    """A network-vs-NLLS ComparisonTable → the Train dock's columns, over the whole mask, one row per map."""
    columns = ["map [unit]", "RMSE", "MAPE (% of range)"]
    rows = []
    for r in table.rows:
        if r["region"] != "all":
            continue
        f = display_factor(r["map"])
        rmse = np.sqrt(r["mse"]) * f if r["mse"] is not None else None
        others = [x for x in table.rows if x["map"] == r["map"] and x["region"] != "all"]
        tip = "; ".join(f"{x['region']}: MAPE {format_number(100 * x['mape'], '.1f')} %" for x in others)
        rows.append([(map_header(r["map"]), f"{r['n']} voxels"), (format_number(rmse), tip),
                     (format_number(100 * r["mape"], ".1f"), tip)])
    return columns, rows


def fill(widget: QTableWidget, columns: list[str], rows: list, header_tips: dict | None = None) -> None:
    """Show (text, tooltip) cells in a read-only table tall enough for every row (the dock scrolls, not it)."""
    widget.clear()
    widget.setColumnCount(len(columns))
    widget.setRowCount(len(rows))
    widget.setHorizontalHeaderLabels(columns)
    for j, c in enumerate(columns):
        tip = (header_tips or {}).get(c)
        if tip:
            widget.horizontalHeaderItem(j).setToolTip(tip)
    for i, cells in enumerate(rows):
        for j, (text, tip) in enumerate(cells):
            item = QTableWidgetItem(text)
            item.setToolTip(tip)
            widget.setItem(i, j, item)
    widget.resizeColumnsToContents()
    widget.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
    height = widget.horizontalHeader().sizeHint().height() + widget.verticalHeader().length() + 6
    if widget.horizontalScrollBar().maximum() > 0 or widget.columnCount() > 4:
        height += widget.horizontalScrollBar().sizeHint().height()
    widget.setFixedHeight(max(height, 40))


def show_roi_statistics(dock, run: dict) -> str | None:
    """Fill the ROI table when a labels layer was chosen; returns a note when the statistics failed."""
    from napari_rverdict.maps import compare

    labels_layer = run["labels_layer"]
    if run["labels"] is None:
        fill(dock.roi_table_widget, [], [])
        dock.roi_caption.setText("Choose a lesion labels layer for ROI statistics.")
        return None
    names = (labels_layer.metadata or {}).get("label_names")
    try:
        for method, maps in dock.results.items():
            dock.roi_tables[method] = compare.roi_statistics(maps, run["labels"].astype(np.int64),
                                                             label_names=names, mask=run["mask"])
    except (ValueError, KeyError) as exc:
        return f"ROI statistics unavailable: {exc}"
    dock.roi_table = next(iter(dock.roi_tables.values()), None)  # the first method's (CSV export)
    fill(dock.roi_table_widget, *roi_rows(dock.roi_tables))
    dock.roi_caption.setText(f"Mean ± sd in each region of '{labels_layer.name}' (hover a cell for the median"
                             + (" and the mean voxel sd" if run["uncertainty"] else "") + ").")
    dock.roi_section.expand(animate=False)
    return None


def show_comparison(dock, run: dict) -> str | None:
    """Fill the network-vs-NLLS table when NLLS ran; returns a note when the comparison failed."""
    from napari_rverdict.maps import compare

    maps, nlls = dock.maps, dock.nlls_maps
    if nlls is None:
        return None
    bundle, labels_layer = run["bundle"], run["labels_layer"]
    try:
        mask = run["mask"]
        if mask is None:  # the voxels the network estimated (finite)
            mask = np.isfinite(np.asarray(maps[bundle.map_names[0]]))
        dock.comparison = compare.compare_maps(
            {k: v for k, v in maps.items() if not k.endswith("_sd")}, nlls, mask=mask,
            labels=run["labels"], model=bundle.model.name,
            label_names=(labels_layer.metadata or {}).get("label_names") if labels_layer is not None else None)
        fill(dock.cmp_table_widget, *comparison_rows(dock.comparison),
             header_tips={"RMSE": RMSE_TIP, "MAPE (% of range)": MAPE_TIP})
        dock.cmp_caption.setText("The network against the NLLS fit over the mask (hover for each region).")
        dock.cmp_section.expand(animate=False)
    except (ValueError, KeyError) as exc:
        return f"NLLS comparison unavailable: {exc}"
    return None
