"""The Requantize operator (added through the operator registry: one module in compiler/ops plus a
registry entry; its engine is the average-pool engine over one element) is bit-exact in Verilator
on every output element, as a graph's middle layer and as its last, at several foldings."""

import numpy as np
import pytest

from qfab.compiler import reference
from qfab.compiler.buildfolder import Build
from qfab.compiler.compile import compile_graph
from qfab.compiler.folding import Fold
from qfab.compiler.ir import Dense, Requantize, Tensor
from qfab.sim.accelerator import simulate
from tests.compiler.graphs import graph, qtype, requant, requantize_graph, weight_type

pytestmark = pytest.mark.verilator


def _dense_then_requantize(rng):
    x = Tensor("x", (12,), qtype(4, False, 3, 0.1))
    h = Tensor("h", (8,), qtype(8, True, -5, 0.05))
    y = Tensor("y", (8,), qtype(3, False, 2, 0.2))
    w = rng.integers(-8, 8, (1, 8, 12))
    dense = Dense("fc", "x", "h", weights=w, multipliers=np.ones((1, 8), np.int64),
                  bias=rng.integers(-200, 200, 8), w_type=weight_type(8, 4), requant=requant(8, h, m0=1 << 20, shift=24))
    rq = Requantize("rq", "h", "y", requant(1, y, m0=13421773, shift=26))
    return graph(["x"], [dense, rq], [x, h, y])


@pytest.mark.parametrize("case, folding", [
    ("map", {"rq": Fold(1, 1)}), pytest.param("map", {"rq": Fold(1, 4)}, marks=pytest.mark.slow),
    pytest.param("vector", {"fc": Fold(2, 3), "rq": Fold(1, 1)}, marks=pytest.mark.slow),
    pytest.param("vector", {"fc": Fold(8, 12), "rq": Fold(1, 8)}, marks=pytest.mark.slow),
])
def test_requantize_simulates_bit_exact(tmp_path, case, folding):
    rng = np.random.default_rng(7)
    g = requantize_graph(shape=(3, 3, 4)) if case == "map" else _dense_then_requantize(rng)
    tin = g.tensors[g.inputs[0]]
    codes = rng.integers(tin.qtype.qmin, tin.qtype.qmax + 1, (40, *tin.shape))
    want = reference.run(g, codes)[g.outputs[0]]
    assert len(np.unique(want)) >= 4                    # the comparison can fail
    compile_graph(g, tmp_path / "build", folding=folding, log=lambda *a: None)
    res = simulate(Build.load(tmp_path / "build"), codes, stall=0.2, seed=3, log=lambda *a: None)
    got = res.outputs.reshape(want.shape)
    assert np.array_equal(got, want), f"{(got != want).sum()} of {want.size} elements differ"
