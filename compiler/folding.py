"""Folding: how many PE (output) and SIMD (input) lanes each stage gets, and what that costs in cycles.

A matrix-vector stage with ``N`` outputs, ``K`` inputs and ``P`` weight points, run ``V`` times per
inference (``V = HO * WO`` for a convolution), takes ``V * P * (N / PE) * (K / SIMD)`` cycles per
inference (times the activation bits in the bit-serial style). A window/pool stage moves ``SIMD``
channels per cycle. The pipeline's initiation interval is its slowest stage's cycle count; folding
balances the stages so that none is much faster than it needs to be.

Pure arithmetic on the IR: no Amaranth here. Costs come from `qfab.compiler.estimate`.
"""

from dataclasses import replace

from qfab.base.errors import QfabError

from .ops import op_for
from .plan import Fold, Stage

__all__ = ["MacStyleName", "Stage", "Fold", "stages_of", "fold_for_ii", "choose_folding", "divisors"]

MacStyleName = str  # "bit_parallel" | "bit_serial"
SPEED_CANDIDATES = 8    # slower intervals a timing-aware folding compares (each costs a design estimate)


def divisors(n):
    return [d for d in range(1, n + 1) if n % d == 0]


def stages_of(graph):
    """The stages of ``graph`` that cost cycles (a Reshape is free: it only renames a stream),
    each operator's `Op.stage`."""
    stages = []
    for node in graph.nodes:
        work = op_for(node).stage(graph, node)
        if work is not None:
            stages.append(work)
    return stages


def fold_for_ii(stage, target_ii, cost, style="bit_parallel"):
    """The cheapest fold of ``stage`` whose cycles per inference are at most ``target_ii``, or None."""
    fits = [f for f in stage.folds(style) if stage.cycles(f) <= target_ii]
    if not fits:
        return None
    return min(fits, key=lambda f: (cost(stage, f), -f.simd, f.pe))


def choose_folding(stages, *, target_ii=None, budget=None, cost, total_cost=None, style="bit_parallel",
                   manual=None, speed=None, refine=None):
    """Pick a `Fold` per stage.

    ``target_ii``: the cheapest folds that reach it; if a stage cannot, `QfabError` names the stage and
    its fastest possible cycle count. ``budget``: a callable ``fits(folds) -> (ok, why)``; the
    smallest initiation interval whose folding fits is chosen, or with ``speed`` (a callable
    ``speed(folds)``: inferences per unit of time at the design's estimated Fmax) the fitting one
    of the most speed among it and the intervals up to twice it (timing-aware folding: a full
    device clocks lower, so a slightly slower fold can be faster in inferences per second). ``manual``: folds by stage name that
    override the choice (checked for legality). With neither target nor budget, every stage is fully
    folded (PE = SIMD = 1), the smallest design. ``refine``: with a budget, a callable
    ``refine(folds) -> folds`` applied to each candidate folding before it is checked (``--board``
    spends unused DSPs on requantization there: `qfab.compiler.compile.spend_dsps`).
    """
    manual = dict(manual or {})
    for name, fold in manual.items():
        stage = next((s for s in stages if s.name == name), None)
        if stage is None:
            raise QfabError(f"folding names layer {name!r}, which has no hardware stage "
                            f"(stages: {[s.name for s in stages]})")
        if fold.requant is not None and stage.kind not in ("mvau", "vvau"):
            raise QfabError(f"layer {name!r}: requant={fold.requant!r} is for matrix layers (a "
                            f"{stage.kind} stage requantizes as its operator chooses)")
        if replace(fold, requant=None) in stage.folds(fold.style):
            continue
        limit = stage.simd_of if stage.kind == "mvau" else stage.n
        if fold.pixels != 1:
            where = (f"PE={stage.n}, SIMD={stage.k} and pixels dividing the output row's {stage.row_pixels}"
                     if stage.row_pixels else "a convolution")
            raise QfabError(f"layer {name!r}: pixels={fold.pixels} needs {where}")
        wide = f" (or SIMD={stage.k}, whole windows)" if stage.row_pixels and stage.k != limit else ""
        raise QfabError(f"layer {name!r}: PE={fold.pe} must divide {stage.n if stage.kind == 'mvau' else 1} "
                        f"and SIMD={fold.simd} must divide {limit}{wide}")

    def at(ii):
        folds = {}
        for s in stages:
            if s.name in manual:
                folds[s.name] = manual[s.name]
                continue
            f = fold_for_ii(s, ii, cost, style if s.kind == "mvau" else "bit_parallel")
            if f is None:
                return None
            folds[s.name] = f
        return folds if refine is None or budget is None else refine(folds)

    if target_ii is None and budget is None:
        return {s.name: manual.get(s.name, Fold(1, 1, style if s.kind == "mvau" else "bit_parallel"))
                for s in stages}
    if target_ii is not None:
        if not isinstance(target_ii, int) or target_ii < 1:
            raise QfabError(f"target initiation interval must be a positive integer, not {target_ii!r}")
        folds = at(target_ii)
        if folds is None:
            worst = max((s for s in stages if s.name not in manual),
                        key=lambda s: min(s.cycles(f) for f in s.folds(style if s.kind == "mvau" else "bit_parallel")))
            best = min(worst.cycles(f) for f in worst.folds(style if worst.kind == "mvau" else "bit_parallel"))
            raise QfabError(f"target initiation interval {target_ii} cycles cannot be met: layer {worst.name!r} "
                            f"needs at least {best} cycles per inference even fully unfolded")
        return folds
    # budget: the smallest achievable II whose folding fits
    candidates = sorted({s.cycles(f) for s in stages
                         for f in s.folds(style if s.kind == "mvau" else "bit_parallel")})
    lo, hi = 0, len(candidates) - 1
    best = None
    best_at = None
    why_last = ""
    while lo <= hi:
        mid = (lo + hi) // 2
        folds = at(candidates[mid])
        ok, why = (False, "unreachable") if folds is None else budget(folds)
        if ok:
            best, best_at, hi = folds, mid, mid - 1
        else:
            why_last, lo = why, mid + 1
    if best is not None and speed is not None:
        options = [best]
        slower = [ii for ii in candidates[best_at + 1:] if ii <= 2 * candidates[best_at]]
        for ii in slower[::max(1, -(-len(slower) // SPEED_CANDIDATES))]:     # at most SPEED_CANDIDATES
            folds = at(ii)
            if folds is not None and folds not in options and budget(folds)[0]:
                options.append(folds)
        best = max(options, key=speed)       # the first (smallest interval) on a tie
    if best is None:
        dsps = " (requantization multiplies of wider accumulators take more DSPs)" if "dsps" in why_last else ""
        raise QfabError(f"the design does not fit the resource budget even fully folded: {why_last}; "
                        f"use fewer bits (qfab --wbits/--abits, e.g. --wbits 4 --abits 4){dsps} or a larger device")
    return best
