"""What a sweep (`qfab.sweep`) leaves in its folder: ``sweep.csv`` and ``sweep.json`` (one row per
point), ``pareto.png`` (accuracy against inferences per second, marker size the share of the
board's resources, one colour and one Pareto front per board) and ``sweep.html`` (a page of
`qfab.page` with the plot and the table)."""

from __future__ import annotations

import csv
import io
import json
import pathlib
from collections.abc import Sequence

__all__ = ["COLUMNS", "write_all", "write_tables", "pareto_front", "pareto_figure", "sweep_page"]

# the CSV's columns, in order; sweep.json keeps every row whole
COLUMNS = ("model", "board", "bits", "target_ii", "status", "error", "ii", "latency", "luts", "ffs", "dsps",
           "bram_bits", "logic_cells", "budget_share", "fits", "accuracy", "agreement", "sim_accuracy", "bit_exact",
           "sim_interval", "clock_mhz", "inferences_per_s", "fmax_mhz", "inferences_per_s_fmax", "timing_met",
           "refolds", "seconds_quantize", "seconds_accuracy", "seconds_compile", "seconds_simulate",
           "seconds_bitstream", "cached", "key")
STEPS = ("quantize", "accuracy", "compile", "simulate", "bitstream")


def _flat(row):
    out = {k: v for k, v in row.items() if k != "seconds"}
    for step in STEPS:
        value = (row.get("seconds") or {}).get(step)
        out[f"seconds_{step}"] = round(value, 3) if value is not None else None
    return out


def write_tables(rows: Sequence[dict], out_dir) -> tuple[pathlib.Path, pathlib.Path]:
    """``sweep.csv`` (the `COLUMNS`) and ``sweep.json`` (``{"format", "version", "points"}``)."""
    from qfab import flow
    out = pathlib.Path(out_dir)
    text = io.StringIO()
    writer = csv.DictWriter(text, COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in _flat(row).items()})
    csv_path = flow.write_output(out / "sweep.csv", lambda f: f.write(text.getvalue().encode()))
    doc = {"format": "qfab-sweep", "version": 1, "columns": list(COLUMNS), "points": list(rows)}
    json_path = flow.write_output(out / "sweep.json", lambda f: f.write(json.dumps(doc, indent=1).encode()))
    return csv_path, json_path


def _quality(rows):
    """Which measure of accuracy the rows have: ``(key, axis label)`` or None."""
    for key, label in (("accuracy", "accuracy (%)"), ("agreement", "top-1 agreement with the float model (%)")):
        if any(r.get(key) is not None for r in rows if r["status"] == "ok"):
            return key, label
    return None


def _speed(row):
    return row.get("inferences_per_s_fmax") or row.get("inferences_per_s")


def pareto_front(rows: Sequence[dict], quality: str = "accuracy") -> list[dict]:
    """The rows no other row beats in both ``quality`` and inferences per second (ties kept),
    fastest first; failed rows and rows without the measure are left out."""
    good = [r for r in rows if r["status"] == "ok" and r.get(quality) is not None and _speed(r)]
    front = [r for r in good
             if not any(o[quality] >= r[quality] and _speed(o) >= _speed(r)
                        and (o[quality] > r[quality] or _speed(o) > _speed(r)) for o in good)]
    return sorted(front, key=_speed, reverse=True)


def pareto_figure(rows: Sequence[dict]):
    """A matplotlib ``Figure``, or None when no point has an accuracy (or agreement) to plot."""
    from matplotlib.figure import Figure
    quality = _quality(rows)
    if quality is None:
        return None
    key, label = quality
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.add_subplot()
    boards = list(dict.fromkeys(r["board"] for r in rows))
    for i, board in enumerate(boards):
        mine = [r for r in rows if r["board"] == board and r["status"] == "ok" and r.get(key) is not None]
        if not mine:
            continue
        colour = f"C{i}"
        sizes = [40 + 400 * min(r.get("budget_share") or 0.0, 1.5) for r in mine]
        ax.scatter([_speed(r) for r in mine], [100 * r[key] for r in mine], s=sizes, color=colour, alpha=0.55,
                   edgecolors=colour, label=board)
        for r in mine:
            ax.annotate(f"w{r['bits']} II {r['ii']}", (_speed(r), 100 * r[key]), textcoords="offset points",
                        xytext=(6, 4), fontsize=8)
        front = pareto_front(mine, key)
        ax.plot([_speed(r) for r in front], [100 * r[key] for r in front], color=colour, lw=1, drawstyle="steps-post")
    ax.set_xscale("log")
    ax.set_xlabel("inferences per second (at Fmax where a bitstream was built, else at the board's clock)")
    ax.set_ylabel(label)
    ax.set_title("accuracy against speed; marker area: share of the board's resources")
    ax.grid(True, which="both", alpha=0.3)
    fig.legend(title="board", loc="outside right upper")
    return fig


def sweep_page(rows: Sequence[dict], title: str, figure=None) -> str:
    """The sweep's page: the plot, the Pareto front, every point, the failures."""
    from qfab import page
    ok = [r for r in rows if r["status"] == "ok"]
    bad = [r for r in rows if r["status"] != "ok"]
    cached = sum(bool(r.get("cached")) for r in rows)
    sections = []
    quality = _quality(rows)
    key = quality[0] if quality else "accuracy"
    plot = page.figure(figure, "accuracy against inferences per second per board") if figure is not None else \
        page.missing("no plot: no point has an accuracy (give --labels) or matplotlib is not installed")
    boards = list(dict.fromkeys(r["board"] for r in rows))
    front = [r for board in boards for r in pareto_front([r for r in rows if r["board"] == board], key)]
    sections.append(page.Section("pareto", "Pareto front", plot + (page.paragraph(
        "The points no other point on the same board beats in both ", key, " and inferences per second:")
        + page.table(["board", "bits", "II", key, "inferences/s", "board used"],
                     [[r["board"], r["bits"], r["ii"], _percent(r.get(key)), round(_speed(r)),
                       page.bar(r.get("budget_share") or 0)] for r in front]) if front
        else page.missing("no point on a front"))))
    bitstreams = any(r.get("fmax_mhz") for r in rows)
    header = ["board", "bits", "target II", "status", "II", "LUTs", "FFs", "DSPs", "BRAM bits", "logic cells",
              "board used", key, "inferences/s", *(["Fmax (MHz)"] if bitstreams else []), "seconds"]
    body = [[r["board"], r["bits"], r["target_ii"] or "board",
             page.badge("cached" if r.get("cached") else "ok", "ok") if r["status"] == "ok"
             else page.badge(r["status"], "bad"),
             r.get("ii"), r.get("luts"), r.get("ffs"), r.get("dsps"), r.get("bram_bits"), r.get("logic_cells"),
             page.bar(r["budget_share"]) if r.get("budget_share") is not None else "",
             _percent(r.get(key)), round(_speed(r)) if _speed(r) else None,
             *([r.get("fmax_mhz")] if bitstreams else []), round(sum((r.get("seconds") or {}).values()), 1)]
            for r in rows]
    sections.append(page.Section("points", "Points", page.paragraph(
        "Estimates of each point's accelerator; board used: the largest share of any one resource of the "
        "board's budget (the device less its host link and board top).") + page.table(header, body)))
    sections.append(page.Section("failures", "Failed points", page.table(
        ["board", "bits", "target II", "status", "error"],
        [[r["board"], r["bits"], r["target_ii"] or "board", r["status"], r.get("error")] for r in bad])
        if bad else page.missing("no point failed")))
    subtitle = [f"{len(rows)} points: {len(ok)} done, {len(bad)} failed, {cached} taken from the cache",
                "the table in sweep.csv and sweep.json; each point's build in points/<key>/build"]
    return page.render_page(title, sections, subtitle=subtitle, footer="qfab sweep")


def _percent(value):
    return f"{100 * value:.2f}%" if value is not None else None


def write_all(rows: Sequence[dict], out_dir, *, title: str = "qfab sweep", log=print) -> list[str]:
    """Write the tables, the plot (when matplotlib is installed) and the page; return one line
    per file written, for the user."""
    from qfab import page
    out = pathlib.Path(out_dir)
    lines = []
    csv_path, json_path = write_tables(rows, out)
    lines.append(f"table: {csv_path} and {json_path}")
    try:
        fig = pareto_figure(rows)
    except ImportError:
        fig = None
        lines.append("no Pareto plot: matplotlib is not installed (pip install 'qfab[plot]')")
    if fig is not None:
        fig.savefig(out / "pareto.png", dpi=110)
        lines.append(f"Pareto plot: {out / 'pareto.png'}")
    elif _quality(rows) is None:
        lines.append("no Pareto plot: no point has an accuracy (give --labels Y.npy with the test inputs)")
    page.write_page(out / "sweep.html", sweep_page(rows, title, fig))
    lines.append(f"page: {out / 'sweep.html'}")
    return lines
