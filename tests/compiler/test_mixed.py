"""Mixed-precision assignment: sensitivities, exact and greedy knapsack, budgets."""

import numpy as np
import pytest

from qfab.base.errors import QfabError
from qfab.cli import main
from qfab.compiler.datasets import digits
from qfab.compiler.frontends.onnx_import import import_onnx
from qfab.compiler.mixed import Sensitivity, assign, mixed_quantize, parse_budget, weight_memory_cost
from qfab.compiler.ptq import QuantConfig


def _bundled(name):
    from importlib.resources import files
    return str(files("qfab.compiler") / "data" / name)


def _brute_force(sens, budget):
    import itertools
    layers = list(dict.fromkeys(s.layer for s in sens))
    opts = [[s for s in sens if s.layer == layer] for layer in layers]
    best = None
    for combo in itertools.product(*opts):
        if sum(s.cost for s in combo) <= budget:
            err = sum(s.error for s in combo)
            if best is None or err < best[0]:
                best = (err, {s.layer: s.bits for s in combo})
    return best


@pytest.mark.parametrize("seed", range(8))
def test_exact_assignment_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    sens = []
    for layer in "abcd":
        size = int(rng.integers(10, 500))
        errs = np.sort(rng.random(5))[::-1]
        for b, e in zip((2, 3, 4, 6, 8), errs):
            sens.append(Sensitivity(layer, b, float(e), size * b))
    full = sum(s.cost for s in sens if s.bits == 8)
    budget = float(rng.uniform(0.3, 0.9) * full)
    want = _brute_force(sens, budget)
    got = assign(sens, budget)
    got_err = sum(s.error for s in sens if got[s.layer] == s.bits)
    assert sum(s.cost for s in sens if got[s.layer] == s.bits) <= budget
    assert got_err == pytest.approx(want[0])
    greedy = assign(sens, budget, "greedy")
    assert sum(s.cost for s in sens if greedy[s.layer] == s.bits) <= budget


def test_budget_parsing_and_errors():
    assert parse_budget("50%", 1000) == 500
    assert parse_budget("3kB", 0) == 3 * 8192
    assert parse_budget("100B", 0) == 800
    assert parse_budget("1234", 0) == 1234
    with pytest.raises(QfabError, match="must be a percentage"):
        parse_budget("lots", 1)
    sens = [Sensitivity("a", 2, 1.0, 20), Sensitivity("a", 8, 0.0, 80)]
    with pytest.raises(QfabError, match="below the cheapest assignment"):
        assign(sens, 10)


def test_mixed_precision_on_digits_respects_budget_and_beats_uniform_floor():
    fg = import_onnx(_bundled("digits_mlp.onnx"))
    x_train, _, x_test, y_test = digits("flat")
    cost = weight_memory_cost(fg)
    full = sum(cost(n.name, 8) for n in fg.nodes if n.kind == "Dense")
    graph, bits, sens = mixed_quantize(fg, x_train, "45%", QuantConfig(calib_method="mse"))
    used = sum(cost(layer, b) for layer, b in bits.items())
    assert used <= 0.45 * full
    assert len(set(bits.values())) > 1, "45% of 8 bits cannot be uniform; expected a real mix"
    by_name = {n.name: n for n in graph.nodes}
    assert all(by_name[layer].w_type.bits == b for layer, b in bits.items())
    # sensitivities fall with more bits for every layer
    for layer in bits:
        errs = [s.error for s in sorted((s for s in sens if s.layer == layer), key=lambda s: s.bits)]
        assert errs[0] > errs[-1]


def test_cli_mixed_budget(tmp_path, capsys):
    x_train, *_ = digits("flat")
    np.save(tmp_path / "c.npy", x_train)
    assert main(["quantize", _bundled("digits_mlp.onnx"), "--calib", str(tmp_path / "c.npy"),
                 "--mixed-budget", "50%", "-o", str(tmp_path / "m.qfab")]) == 0
    assert "weight bits per layer" in capsys.readouterr().out
