"""Models the verifier accepts but that no FPGA could hold are refused before any hardware is
built, with the numbers and the limit; manual folding files with bad values are one-line errors."""

import json
import time

import numpy as np
import pytest

from qfab.base.errors import QfabError
from qfab.compiler import compile as compile_mod
from qfab.compiler.compile import compile_graph, load_folding
from qfab.compiler.ir import Dense, MaxPool, Reshape, Tensor
from qfab.compiler.plan import Fold

from .graphs import dense_graph, graph, qtype, requant, weight_type


def _compile_refused(g, tmp_path, *phrases):
    t = time.perf_counter()
    with pytest.raises(QfabError) as info:
        compile_graph(g, tmp_path / "b", log=lambda *a: None)
    assert time.perf_counter() - t < 20
    assert not (tmp_path / "b").exists()
    message = str(info.value)
    for phrase in phrases:
        assert phrase in message, message
    return message


def test_huge_maxpool_is_refused_before_lowering(tmp_path):
    t = qtype(4, True, -2)       # 2^30 elements; the window of a 3x3 pool buffers 4 Mi elements
    x, y = Tensor("x", (1024, 1024, 1024), t), Tensor("y", (1022, 1022, 1024), t)
    g = graph(["x"], [MaxPool("pool", "x", "y", (3, 3), (1, 1), (0, 0, 0, 0))], [x, y])
    _compile_refused(g, tmp_path, "far beyond any FPGA", "buffered bits 16,777,216",
                     f"limit {compile_mod.MAX_BUFFERED_BITS:,}", "'pool_window' buffers 4,194,304 elements of 4 bits")


def test_dense_with_a_million_outputs_is_refused_before_planning(tmp_path):
    n, k = 1 << 20, 2
    x, y = Tensor("x", (k,), qtype(8, False)), Tensor("y", (n,), qtype(8, True))
    node = Dense("fc", "x", "y", weights=np.ones((1, n, k), np.int64), multipliers=np.ones((1, n), np.int64),
                 bias=np.zeros(n, np.int64), w_type=weight_type(n), requant=requant(n, y))
    _compile_refused(graph(["x"], [node], [x, y]), tmp_path, "weight bits 16,777,216",
                     f"limit {compile_mod.MAX_WEIGHT_BITS:,}", "'fc'")


def test_too_many_stages(tmp_path, monkeypatch):
    monkeypatch.setattr(compile_mod, "MAX_STAGES", 3)
    t = qtype(8, False)
    tensors = [Tensor(f"t{i}", (2, 2, 1), t) for i in range(5)]
    nodes = [MaxPool(f"p{i}", f"t{i}", f"t{i + 1}", (1, 1), (1, 1)) for i in range(4)]
    _compile_refused(graph(["t0"], nodes, tensors), tmp_path, "hardware stages 4 > limit 3")


def test_estimated_luts_beyond_the_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(compile_mod, "MAX_LUTS", 10)
    _compile_refused(dense_graph(), tmp_path, "estimated luts", "> limit 10", "'fc'")


def test_a_small_model_is_within_every_limit(tmp_path):
    g = graph(["x"], [Reshape("r", "x", "y"), ], [Tensor("x", (2, 2, 1), qtype()), Tensor("y", (4,), qtype())])
    compile_mod.check_graph_limits(g, [])
    build = compile_graph(dense_graph(), tmp_path / "ok", log=lambda *a: None)
    assert build.manifest.stages


# ---- folding files ----------------------------------------------------------------------------

@pytest.mark.parametrize("doc, phrases", [
    ({"fc": {"pe": 0}}, ["pe of 'fc'", "positive integer", "0"]),
    ({"fc": {"pe": -2}}, ["pe of 'fc'", "-2"]),
    ({"fc": {"simd": 2.5}}, ["simd of 'fc'", "2.5"]),
    ({"fc": {"simd": 2.0}}, ["simd of 'fc'", "2.0"]),
    ({"fc": {"pe": None}}, ["pe of 'fc'", "None"]),
    ({"fc": {"pe": True}}, ["pe of 'fc'", "True"]),
    ({"fc": {"simd": "4"}}, ["simd of 'fc'", "'4'"]),
    ({"fc": {"style": 3}}, ["style of 'fc'"]),
    ({"fc": [1, 2]}, ["folding of 'fc' must be an object"]),
    ({"fc": {"pe": 1, "lanes": 2}}, ["folding of 'fc'"]),
    ([{"fc": {"pe": 1}}], ["must be a JSON object", "list"]),
    ("fc", ["must be a JSON object", "str"]),
    (None, ["must be a JSON object", "NoneType"]),
    ({"folding": [1]}, ["must be a JSON object", "list"]),
])
def test_bad_folding_files(tmp_path, doc, phrases):
    path = tmp_path / "f.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(QfabError) as info:
        load_folding(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    for phrase in phrases:
        assert phrase in message, message


def test_good_folding_file(tmp_path):
    path = tmp_path / "f.json"
    path.write_text(json.dumps({"folding": {"fc": {"pe": 5, "simd": 4}, "conv": {"style": "bit_serial"}}}))
    assert load_folding(path) == {"fc": Fold(5, 4, "bit_parallel"), "conv": Fold(1, 1, "bit_serial")}
