"""Huffman coding of quantized weights: real codes that decode back, optimal lengths, and the
compression report of an IR graph."""

import heapq
import math
from collections import Counter

import numpy as np
import pytest

from qfab.compiler import entropy
from qfab.compiler.datasets import digits
from qfab.compiler.entropy import HuffmanCode, compression_report, huffman_lengths
from qfab.compiler.frontends.onnx_import import import_onnx
from qfab.compiler.ptq import QuantConfig, quantize


def _bundled(name):
    from importlib.resources import files
    return str(files("qfab.compiler") / "data" / name)


def _optimal_code_bits(counts):
    """Total bits of an optimal prefix code for symbols seen ``counts`` times: the sum of the
    weights Huffman's procedure merges (a lone symbol still takes one bit each)."""
    heap = list(counts)
    if len(heap) == 1:
        return heap[0]
    heapq.heapify(heap)
    total = 0
    while len(heap) > 1:
        merged = heapq.heappop(heap) + heapq.heappop(heap)
        total += merged
        heapq.heappush(heap, merged)
    return total


def _roundtrip(values):
    code = HuffmanCode.fit(values)
    data, n_bits = code.encode(values)
    assert n_bits == code.payload_bits(values)
    assert len(data) == -(-n_bits // 8)
    decoded = code.decode(data, n_bits, len(values))
    np.testing.assert_array_equal(decoded, values)
    return code


RNG = np.random.default_rng(0)
CASES = {
    "uniform4": RNG.integers(-8, 8, 4000),
    "sparse": np.where(RNG.random(3000) < 0.8, 0, RNG.integers(-7, 8, 3000)),
    "geometric": RNG.geometric(0.4, 2000) - 3,
    "two": np.array([0, 5, 5, 0, 5]),
    "one_symbol": np.zeros(17, np.int64),
    "single": np.array([-3]),
    "empty": np.array([], np.int64),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_encode_decode_roundtrip(name):
    _roundtrip(CASES[name])


@pytest.mark.parametrize("name", ["uniform4", "sparse", "geometric", "two"])
def test_code_is_prefix_free_complete_and_optimal(name):
    v = CASES[name]
    code = _roundtrip(v)
    words = [format(c, f"0{code.lengths[s]}b") for s, c in code.codes.items()]
    assert not any(a != b and b.startswith(a) for a in words for b in words), "not a prefix code"
    assert math.isclose(sum(2.0 ** -n for n in code.lengths.values()), 1.0), "Kraft sum is not 1"
    _, counts = np.unique(v, return_counts=True)
    p = counts / counts.sum()
    entropy = float(-(p * np.log2(p)).sum())
    assert entropy <= code.mean_length(v) < entropy + 1


def test_known_lengths():
    assert huffman_lengths({10: 1, 11: 1, 12: 2, 13: 4}) == {10: 3, 11: 3, 12: 2, 13: 1}
    assert huffman_lengths({7: 9}) == {7: 1}
    assert huffman_lengths({}) == {}


def test_sparse_weights_code_below_fixed_width():
    code = _roundtrip(CASES["sparse"])
    assert code.lengths[0] == 1
    assert code.mean_length(CASES["sparse"]) < 2.0       # 4-bit codes, 80% zeros


def test_decode_errors():
    code = HuffmanCode.fit(CASES["geometric"])
    data, n_bits = code.encode(CASES["geometric"])
    with pytest.raises(ValueError, match="ends after"):
        code.decode(data, n_bits - 5, len(CASES["geometric"]))
    with pytest.raises(ValueError, match="not in the code"):
        code.encode(np.array([1000]))
    with pytest.raises(ValueError, match="integers"):
        HuffmanCode.fit(np.array([0.5]))


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_compression_report_of_a_quantized_graph(bits):
    fg = import_onnx(_bundled("digits_mlp.onnx"))
    x_train = digits("flat")[0]
    graph = quantize(fg, x_train[:300], QuantConfig(w_bits=bits, a_bits=bits))
    layers, total = compression_report(graph)
    weighted = [n for n in graph.nodes if hasattr(n, "w_type")]
    assert [layer.name for layer in layers] == [n.name for n in weighted]
    for layer, node in zip(layers, weighted):
        w = node.weights.reshape(-1)
        _roundtrip(w)
        assert layer.count == w.size and layer.zeros == int((w == 0).sum())
        # payload: the optimal prefix code's length, by Huffman's merging (not the module's code);
        # table: a count, then (symbol, length) per symbol
        counts = Counter(w.tolist())
        table = entropy.COUNT_FIELD_BITS + len(counts) * (bits + entropy.LENGTH_FIELD_BITS)
        assert layer.huffman_bits == _optimal_code_bits(counts.values()) + table
        assert layer.ratio == pytest.approx(32 * w.size / layer.huffman_bits)
        assert layer.fixed_ratio == pytest.approx(32 / bits)
        assert layer.entropy == pytest.approx(-sum(c / w.size * math.log2(c / w.size) for c in counts.values()))
        assert layer.entropy <= bits
    assert total.count == sum(layer.count for layer in layers)
    assert total.huffman_bits == sum(layer.huffman_bits for layer in layers)
    print(f"w{bits}: total {total.ratio:.2f}x (fixed width {total.fixed_ratio:.2f}x)")
    assert total.ratio > 0.9 * total.fixed_ratio
