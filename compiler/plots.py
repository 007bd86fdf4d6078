"""A picture of a build before synthesis: how balanced the pipeline is and where the resources go."""

import pathlib

from qfab.base.extras import require

from .buildfolder import Manifest, ResourceCount

__all__ = ["build_plot", "plot_formats", "plot_format"]


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


def build_plot(manifest: Manifest, path) -> None:
    """Save a two-panel PNG of a build's `Manifest` at ``path``.

    Left: each stage's cycles per inference against the initiation interval (the slowest stage
    sets it; a balanced pipeline has every engine near the line). Right: estimated LUTs and FFs of
    each layer and of the streams between them (FIFOs, width converters, forks), with each layer's
    DSPs and block RAMs written above its bars.
    """
    matplotlib = require("matplotlib", "plot", "a plot (--plot)")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ii = manifest.initiation_interval
    timed = [s for s in manifest.stages if s.cycles]
    est = manifest.estimates
    layers = list(est.per_layer.items())
    if est.streams:
        layers.append(("streams", ResourceCount(**{k: sum(getattr(v, k) for v in est.streams.values())
                                                   for k in ("luts", "ffs", "dsps", "bram_blocks")})))
    fig, (ax_c, ax_r) = plt.subplots(1, 2, figsize=(max(10, 1.1 * (len(timed) + len(layers)) + 3), 4.4))
    x = range(len(timed))
    colors = ["tab:red" if s.cycles == ii else "tab:blue" for s in timed]
    ax_c.bar(list(x), [s.cycles for s in timed], color=colors)
    ax_c.axhline(ii, color="black", linestyle="--", linewidth=1, label=f"initiation interval {ii}")
    ax_c.set_xticks(list(x))
    ax_c.set_xticklabels([f"{s.name}\n{s.pe or 1}x{s.simd or 1}" for s in timed], rotation=30,
                         ha="right", fontsize=8)
    ax_c.set_ylabel("cycles per inference")
    ax_c.set_title("pipeline balance (PE x SIMD under each stage; red: the bottleneck)", fontsize=10)
    ax_c.legend(fontsize=8)
    ax_c.grid(axis="y", alpha=0.3)

    x = range(len(layers))
    width = 0.38
    luts = [v.luts for _, v in layers]
    ffs = [v.ffs for _, v in layers]
    ax_r.bar([i - width / 2 for i in x], luts, width, label="LUTs")
    ax_r.bar([i + width / 2 for i in x], ffs, width, label="FFs")
    top = max(luts + ffs + [1])
    for i, (_, v) in enumerate(layers):
        extra = [f"{n} {name}" for n, name in ((v.dsps, "DSP"), (v.bram_blocks, "BRAM")) if n]
        if extra:
            ax_r.text(i, max(v.luts, v.ffs) + 0.02 * top, "\n".join(extra), ha="center",
                      va="bottom", fontsize=7)
    ax_r.set_xticks(list(x))
    ax_r.set_xticklabels([name for name, _ in layers], rotation=30, ha="right", fontsize=8)
    ax_r.set_ylim(0, 1.2 * top)
    t = est.total
    cells = f", {t.logic_cells} logic cells" if t.logic_cells is not None else ""
    ax_r.set_title(f"estimated resources ({est.family}): {t.luts} LUTs, {t.ffs} FFs{cells}, "
                   f"{t.dsps} DSPs, {t.bram_blocks} BRAMs", fontsize=10)
    ax_r.legend(fontsize=8)
    ax_r.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format=plot_format(path))
    plt.close(fig)
