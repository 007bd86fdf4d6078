"""Pictures of a simulation: where the pipeline's cycles go, stage by stage."""

from qfab.base.extras import require
from qfab.compiler.plots import plot_format

__all__ = ["utilization_plot", "stage_shares"]


def stage_shares(res, manifest):
    """Per stage of ``manifest`` (a build's `Manifest`): (name, compute share, input blocked share, output blocked share) of all cycles.

    The compute share is the stage's analytical cycles per inference times the inferences run,
    over the cycles simulated: 1.0 for the bottleneck of a balanced pipeline running at its bound.
    """
    rows = []
    c = max(res.cycles, 1)
    n = len(res.times)
    for s in manifest.stages:
        ins = [v for k, v in res.stages.items() if k.split(".")[0] == s.name and k.split(".")[1] != "o"]
        out = res.stages.get(f"{s.name}.o", {"fire": 0, "wait": 0})
        wait_in = sum(v["wait"] for v in ins) / max(len(ins), 1)
        rows.append((s.name, (s.cycles or 0) * n / c, wait_in / c, out["wait"] / c))
    return rows


def utilization_plot(res, manifest, path):
    matplotlib = require("matplotlib", "plot", "a plot (--plot)")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = stage_shares(res, manifest)
    names = [r[0] for r in rows]
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(rows) + 2), 4))
    x = range(len(rows))
    width = 0.27
    ax.bar([i - width for i in x], [100 * r[1] for r in rows], width, label="compute (analytical cycles)")
    ax.bar(list(x), [100 * r[2] for r in rows], width, label="input blocked (stage busy)")
    ax.bar([i + width for i in x], [100 * r[3] for r in rows], width, label="output blocked (next stage busy)")
    ax.set_xticks(list(x))
    ax.set_xticklabels(names, rotation=30, ha="right")
    ax.set_ylabel("% of simulated cycles")
    ax.set_title(f"pipeline utilization: {res.interval:g} cycles/inference, bound {res.bound}")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format=plot_format(path))
    plt.close(fig)
