"""A picture of a build before synthesis: how balanced the pipeline is and where the resources go."""

import pathlib

from qfab.base.extras import require

from .buildfolder import Manifest, ResourceCount

__all__ = ["build_plot", "build_figure", "plot_formats", "plot_format"]

BUDGET_IN_VIEW = 3.0    # draw a budget line when it is at most this many times the highest bar


def plot_formats() -> dict[str, str]:
    """The file suffixes (without the dot) matplotlib can write, and what each is."""
    require("matplotlib", "plot", "a plot (--plot)")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    return dict(FigureCanvasAgg.get_supported_filetypes())


def plot_format(path) -> str:
    """The format of the plot file ``path`` from its suffix (matplotlib would otherwise append
    ``.png`` to a name without one); raises ValueError for one it cannot write."""
    kind = pathlib.PurePath(path).suffix.lstrip(".").lower()
    if kind not in plot_formats():
        raise ValueError(f"plot {path}: unknown suffix; use one of " + ", ".join(sorted(plot_formats())))
    return kind


def build_plot(manifest: Manifest, path, budget=None) -> None:
    """Save `build_figure` of a build's `Manifest` at ``path`` (the format from its suffix)."""
    fmt = plot_format(path)
    build_figure(manifest, budget).savefig(path, dpi=110, format=fmt)


def build_figure(manifest: Manifest, budget=None):
    """A two-panel matplotlib ``Figure`` of a build's `Manifest`.

    Left: each stage's cycles per inference against the initiation interval (the slowest stage
    sets it; a balanced pipeline has every engine near the line). Right: estimated LUTs and FFs of
    each layer, of the streams between them (FIFOs, width converters, forks) and in total, with
    each layer's DSPs and block RAMs written above its bars.

    Parameters
    ----------
    budget : `qfab.compiler.compile.Budget` or None
        What the accelerator may use on a board (``qfab compile --board``): its LUTs and FFs (and
        iCE40 logic cells) are drawn as lines on the resource panel, or written in its title
        when they are far above the bars.
    """
    require("matplotlib", "plot", "a plot (--plot)")
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    ii = manifest.initiation_interval
    timed = [s for s in manifest.stages if s.cycles]
    est = manifest.estimates
    layers = list(est.per_layer.items())
    if est.streams:
        layers.append(("streams", ResourceCount(**{k: sum(getattr(v, k) for v in est.streams.values())
                                                   for k in ("luts", "ffs", "dsps", "bram_blocks")})))
    layers.append(("total", est.total))
    fig = Figure(figsize=(max(11, 1.0 * (len(timed) + len(layers)) + 4), 5.2), layout="constrained")
    ax_c, ax_r = fig.subplots(1, 2, width_ratios=[max(len(timed), 2), max(len(layers), 2)])
    rotate_c, rotate_r = (30 if n > 7 else 0 for n in (len(timed), len(layers)))

    x = range(len(timed))
    colors = ["tab:red" if s.cycles == ii else "tab:blue" for s in timed]
    ax_c.bar(list(x), [s.cycles for s in timed], color=colors)
    ax_c.axhline(ii, color="black", linestyle="--", linewidth=1)
    ax_c.set_xticks(list(x))
    ax_c.set_xticklabels([s.name if s.kind not in ("mvau", "vvau") else f"{s.name} ({s.pe or 1}x{s.simd or 1})" if rotate_c
                          else f"{s.name}\n{s.pe or 1}x{s.simd or 1}" for s in timed],
                         rotation=rotate_c, ha="right" if rotate_c else "center", fontsize=8)
    ax_c.set_ylabel("cycles per inference")
    ax_c.set_ylim(0, 1.3 * max([ii] + [s.cycles for s in timed]))
    ax_c.set_title(f"pipeline balance: interval {ii} cycles per inference\n"
                   "(PE x SIMD under each engine)", fontsize=10)
    ax_c.legend(handles=[Patch(color="tab:red", label="bottleneck (sets the interval)"),
                         Patch(color="tab:blue", label="other stages"),
                         ax_c.lines[0].__class__([], [], color="black", linestyle="--", linewidth=1,
                                                 label=f"initiation interval {ii}")],
                loc="upper center", bbox_to_anchor=(0.5, -0.14 if rotate_c == 0 else -0.22), ncols=3, fontsize=8,
                frameon=False)
    ax_c.grid(axis="y", alpha=0.3)

    x = range(len(layers))
    width = 0.38
    luts = [v.luts for _, v in layers]
    ffs = [v.ffs for _, v in layers]
    ax_r.bar([i - width / 2 for i in x], luts, width, label="LUTs", color="tab:blue")
    ax_r.bar([i + width / 2 for i in x], ffs, width, label="FFs", color="tab:orange")
    if est.total.logic_cells is not None:      # iCE40: the packed count the budget limits
        ax_r.bar([len(layers) - 1 + 1.5 * width], [est.total.logic_cells], width, label="logic cells",
                 color="tab:purple")
    top = max(luts + ffs + [est.total.logic_cells or 0, 1])
    for i, (_, v) in enumerate(layers):
        extra = [f"{n} {name}" for n, name in ((v.dsps, "DSP"), (v.bram_blocks, "BRAM")) if n]
        if extra:
            ax_r.text(i, max(v.luts, v.ffs) + 0.02 * top, "\n".join(extra), ha="center", va="bottom", fontsize=7)
    limits = _budget_lines(budget)
    shown = [(value, label, color) for value, label, color in limits if value <= BUDGET_IN_VIEW * top]
    for value, label, color in shown:
        ax_r.axhline(value, color=color, linestyle="--", linewidth=1.2, label=label)
    ax_r.set_xticks(list(x))
    ax_r.set_xticklabels([name for name, _ in layers], rotation=rotate_r, ha="right" if rotate_r else "center",
                         fontsize=8)
    ax_r.set_ylim(0, 1.3 * max([top] + [value for value, _, _ in shown]))
    ax_r.set_ylabel(f"estimated count ({est.family})")
    t = est.total
    cells = f", {t.logic_cells} logic cells" if t.logic_cells is not None else ""
    title = (f"estimated resources per layer ({est.family})\n"
             f"total {t.luts} LUTs, {t.ffs} FFs{cells}, {t.dsps} DSPs, {t.bram_blocks} BRAMs")
    far = [label.removeprefix("budget ") for value, label, _ in limits if value > BUDGET_IN_VIEW * top]
    if far:
        far = [", ".join(far) + " (off the scale)"]
    if budget is not None:
        far += [f"{budget.dsps} DSPs" if budget.dsps is not None else "",
                f"{budget.bram_bits // 1024} kbit block RAM (uses {t.bram_bits // 1024})"
                if budget.bram_bits is not None else ""]
        title += "\nboard budget: " + ", ".join(x for x in far if x)
    ax_r.set_title(title, fontsize=10)
    ax_r.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14 if rotate_r == 0 else -0.22), ncols=3, fontsize=8,
                frameon=False)
    ax_r.grid(axis="y", alpha=0.3)
    return fig


def _budget_lines(budget):
    """``[(value, label, color)]``: the budget's limits on LUTs, FFs and logic cells."""
    if budget is None:
        return []
    lines = []
    for key, label, color in (("luts", "LUTs", "tab:blue"), ("ffs", "FFs", "tab:orange"),
                              ("logic_cells", "logic cells", "tab:purple")):
        value = getattr(budget, key, None)
        if value is not None:
            lines.append((value, f"budget {value} {label}", color))
    return lines
