"""Mixed-precision assignment: per-layer weight bits chosen automatically under a budget.

1. Sensitivity: for each layer and each candidate width ``b``, quantize that layer alone to ``b``
   bits (every other layer at the widest candidate) and measure how far the network's output moves
   from the float network's on calibration data (mean squared difference of the outputs, relative
   to their variance).
2. Cost: each layer's weight memory at ``b`` bits (or a caller's cost function: LUTs, cycles).
3. Assignment: the multiple-choice knapsack ``min sum sensitivity  s.t.  sum cost <= budget``,
   solved exactly by dynamic programming over the cost (bucketed to at most ~20000 steps), or
   greedily (lower the layer whose next step loses least sensitivity per bit saved).
"""

from dataclasses import dataclass, replace

import numpy as np

from qfab.base.errors import QfabError

from .fgraph import forward
from .ops import op_for
from .ptq import LayerConfig, QuantConfig, quantize
from .reference import run

__all__ = ["Sensitivity", "sensitivities", "weight_memory_cost", "assign", "parse_budget", "mixed_quantize"]

CANDIDATES = (2, 3, 4, 5, 6, 8)


@dataclass(frozen=True)
class Sensitivity:
    layer: str
    bits: int
    error: float        # output MSE relative to the float output's variance
    cost: float


def weight_memory_cost(fg):
    """``cost(layer, bits)``: weight bits stored for that layer."""
    sizes = {n.name: int(n.weight.size) for n in fg.nodes if op_for(n.kind).weighted}
    return lambda layer, bits: sizes[layer] * bits


def _output_error(fg, graph, x, float_out):
    codes = graph.tensors[graph.inputs[0]].qtype
    from . import intops
    q = intops.quantize_float(x, codes.scale, codes.zero_point, codes.qmin, codes.qmax)
    y = run(graph, q)[graph.outputs[0]]
    oq = graph.tensors[graph.outputs[0]].qtype
    yf = (y - oq.zero_point) * oq.scale
    return float(((yf.reshape(float_out.shape) - float_out) ** 2).mean() / max(float_out.var(), 1e-12))


def sensitivities(fg, calib, base=QuantConfig(), candidates=CANDIDATES, cost=None, samples=512):
    """Sensitivity of every weighted layer at every candidate width (``calib`` channels-last)."""
    calib = np.asarray(calib, np.float64)
    x = calib[:samples]
    float_out = forward(fg, x)[fg.outputs[0]]
    cost = cost or weight_memory_cost(fg)
    layers = [n.name for n in fg.nodes if op_for(n.kind).weighted]
    top = max(candidates)
    result = []
    for layer in layers:
        for b in candidates:
            config = replace(base, w_bits=top, layers={layer: LayerConfig(w_bits=b)})
            graph = quantize(fg, calib, config)
            result.append(Sensitivity(layer, b, _output_error(fg, graph, x, float_out), cost(layer, b)))
    return result


def assign(sens, budget, method="exact"):
    """Bits per layer minimising the summed sensitivity with total cost at most ``budget``."""
    layers = list(dict.fromkeys(s.layer for s in sens))
    options = {layer: sorted((s for s in sens if s.layer == layer), key=lambda s: s.bits) for layer in layers}
    cheapest = sum(opts[0].cost for opts in options.values())
    if cheapest > budget:
        raise QfabError(f"budget {budget:g} is below the cheapest assignment ({cheapest:g}, every layer at "
                        f"{min(s.bits for s in sens)} bits)")
    if method == "greedy":
        choice = {layer: len(opts) - 1 for layer, opts in options.items()}

        def total():
            return sum(options[layer][i].cost for layer, i in choice.items())
        while total() > budget:
            def price(layer):
                i = choice[layer]
                if i == 0:
                    return np.inf
                a, b = options[layer][i], options[layer][i - 1]
                return (b.error - a.error) / max(a.cost - b.cost, 1e-12)
            layer = min(choice, key=price)
            choice[layer] -= 1
        return {layer: options[layer][i].bits for layer, i in choice.items()}
    if method != "exact":
        raise QfabError(f"assignment method must be 'exact' or 'greedy', not {method!r}")
    unit = max(budget / 20000.0, 1e-9)
    # dp over layers: best[bucket] = (error, exact cost, choices), bucket = floor(cost / unit)
    best = {0: (0.0, 0.0, ())}
    for layer in layers:
        nxt = {}
        for err, cost, picks in best.values():
            for opt in options[layer]:
                c2 = cost + opt.cost
                if c2 > budget * (1 + 1e-12):
                    continue
                key, e2 = int(c2 / unit), err + opt.error
                if key not in nxt or e2 < nxt[key][0]:
                    nxt[key] = (e2, c2, picks + (opt.bits,))
        # keep the Pareto front only (lower cost and lower error)
        front, best_err = {}, np.inf
        for key in sorted(nxt):
            if nxt[key][0] < best_err:
                front[key] = nxt[key]
                best_err = nxt[key][0]
        best = front
    if not best:
        raise QfabError(f"no assignment fits the budget {budget:g}")
    _, _, picks = min(best.values(), key=lambda v: v[0])
    return dict(zip(layers, picks))


def parse_budget(text, full_cost):
    """``"40%"`` of the all-8-bit cost, ``"3000B"``/``"3kB"`` bytes, or a plain number of bits."""
    t = str(text).strip()
    try:
        if t.endswith("%"):
            return float(t[:-1]) / 100.0 * full_cost
        if t.lower().endswith("kb"):
            return float(t[:-2]) * 8192.0
        if t.lower().endswith("b") and not t.lower().endswith("kb"):
            return float(t[:-1]) * 8.0
        return float(t)
    except ValueError:
        raise QfabError(f"budget {text!r} must be a percentage ('40%'), bytes ('3000B', '3kB') or bits") from None


def mixed_quantize(fg, calib, budget, base=QuantConfig(), candidates=CANDIDATES, method="exact"):
    """PTQ with per-layer weight bits chosen under a weight-memory ``budget`` (see `parse_budget`).

    Returns ``(graph, bits_by_layer, sensitivities)``.
    """
    cost = weight_memory_cost(fg)
    full = sum(cost(n.name, 8) for n in fg.nodes if op_for(n.kind).weighted)
    bits_budget = parse_budget(budget, full)
    sens = sensitivities(fg, calib, base, candidates, cost)
    bits = assign(sens, bits_budget, method)
    layers = dict(base.layers)
    for layer, b in bits.items():
        layers[layer] = LayerConfig(w_bits=b, a_bits=layers.get(layer, LayerConfig()).a_bits)
    graph = quantize(fg, calib, replace(base, layers=layers),
                     metadata={"mixed_budget_bits": bits_budget, "mixed_bits": bits})
    return graph, bits, sens
