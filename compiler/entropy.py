"""Entropy coding of quantized weights: a canonical Huffman coder and compression ratios.

Pure Python and numpy. `HuffmanCode.fit` builds a code from the symbol counts of an integer array
(every symbol, zeros included, gets a codeword), `encode` packs the codewords into bytes and
`decode` reads them back exactly. `compression_report` codes each weight layer of an IR graph
and compares the bits with storing the same weights as 32-bit floats, as the paper's
"compression ratio" does (7.13x for MobileNet).

The code is canonical: it is fully described by each symbol's codeword length, so a decoder
needs only ``(symbol, length)`` pairs; `HuffmanCode.table_bits` counts that table, and the
reported ratios include it.
"""

import heapq
from dataclasses import dataclass

import numpy as np

__all__ = ["HuffmanCode", "huffman_lengths", "LayerCompression", "compression_report"]

LENGTH_FIELD_BITS = 5        # a codeword length (1..32) in the table
COUNT_FIELD_BITS = 16        # the number of table entries
FLOAT_BITS = 32


def huffman_lengths(counts):
    """Codeword length per symbol from ``{symbol: count}`` (counts > 0).

    Ties break on the symbol order, so the result is deterministic. A single symbol gets
    length 1 (a decoder must still read something per symbol).
    """
    items = sorted((int(s), int(c)) for s, c in counts.items() if c > 0)
    if not items:
        return {}
    if len(items) == 1:
        return {items[0][0]: 1}
    # heap entries: (count, tie-break, symbols in the subtree)
    heap = [(c, i, [s]) for i, (s, c) in enumerate(items)]
    heapq.heapify(heap)
    lengths = {s: 0 for s, _ in items}
    order = len(items)
    while len(heap) > 1:
        c1, _, s1 = heapq.heappop(heap)
        c2, _, s2 = heapq.heappop(heap)
        for s in s1 + s2:
            lengths[s] += 1
        heapq.heappush(heap, (c1 + c2, order, s1 + s2))
        order += 1
    return lengths


@dataclass(frozen=True)
class HuffmanCode:
    """A canonical prefix code: ``lengths`` maps each symbol to its codeword length.

    Members
    -------
    codes : dict
        Symbol -> codeword as an integer of ``lengths[symbol]`` bits (most significant first).
    """
    lengths: dict

    @classmethod
    def fit(cls, values):
        """The Huffman code of the symbols of integer array ``values``."""
        v = np.asarray(values).reshape(-1)
        if v.size and not np.issubdtype(v.dtype, np.integer):
            raise ValueError(f"values must be integers, not {v.dtype}")
        symbols, counts = np.unique(v, return_counts=True)
        return cls(huffman_lengths(dict(zip(symbols.tolist(), counts.tolist()))))

    @property
    def codes(self):
        codes, code, prev = {}, 0, 0
        for s, n in sorted(self.lengths.items(), key=lambda kv: (kv[1], kv[0])):
            code <<= n - prev
            codes[s] = code
            code, prev = code + 1, n
        return codes

    def table_bits(self, symbol_bits):
        """Bits of the table a decoder needs: a count, then ``(symbol, length)`` per entry."""
        return COUNT_FIELD_BITS + len(self.lengths) * (symbol_bits + LENGTH_FIELD_BITS)

    def payload_bits(self, values):
        """Bits of the encoded ``values`` (without the table)."""
        v = np.asarray(values).reshape(-1)
        symbols, counts = np.unique(v, return_counts=True)
        return int(sum(self.lengths[int(s)] * int(c) for s, c in zip(symbols, counts)))

    def encode(self, values):
        """``(bytes, n_bits)``: the codewords of ``values`` in order, zero-padded to whole bytes."""
        v = np.asarray(values).reshape(-1)
        codes = self.codes
        missing = set(np.unique(v).tolist()) - set(codes)
        if missing:
            raise ValueError(f"symbols {sorted(missing)} are not in the code")
        max_len = max(self.lengths.values(), default=1)
        # one row of max_len bits per symbol, left-aligned; keep the first `length` bits of each
        syms = sorted(codes)
        lut_bits = np.zeros((len(syms), max_len), np.uint8)
        lut_len = np.zeros(len(syms), np.int64)
        for i, s in enumerate(syms):
            n = self.lengths[s]
            lut_len[i] = n
            lut_bits[i, :n] = [(codes[s] >> (n - 1 - b)) & 1 for b in range(n)]
        idx = np.searchsorted(np.array(syms), v)
        bits = lut_bits[idx]
        keep = np.arange(max_len)[None, :] < lut_len[idx][:, None]
        stream = bits[keep]
        return np.packbits(stream).tobytes(), int(stream.size)

    def decode(self, data, n_bits, count):
        """``count`` symbols from the first ``n_bits`` bits of ``data`` (an int64 array)."""
        bits = np.unpackbits(np.frombuffer(data, np.uint8))[:n_bits].tolist()
        # canonical decoding: per length, the first code and the symbols in code order
        by_length = {}
        for s, c in sorted(self.codes.items(), key=lambda kv: (self.lengths[kv[0]], kv[1])):
            by_length.setdefault(self.lengths[s], []).append((c, s))
        first = {n: entries[0][0] for n, entries in by_length.items()}
        symbols = {n: [s for _, s in entries] for n, entries in by_length.items()}
        longest = max(first, default=0)
        out = np.empty(count, np.int64)
        pos, code, length, k = 0, 0, 0, 0
        while k < count:
            if pos >= len(bits):
                raise ValueError(f"the bit stream ends after {k} of {count} symbols")
            code = (code << 1) | bits[pos]
            pos += 1
            length += 1
            if length in first and 0 <= code - first[length] < len(symbols[length]):
                out[k] = symbols[length][code - first[length]]
                k += 1
                code, length = 0, 0
            elif length >= longest:
                raise ValueError(f"invalid codeword at bit {pos}")
        return out

    def mean_length(self, values):
        v = np.asarray(values).reshape(-1)
        return self.payload_bits(v) / max(v.size, 1)


@dataclass(frozen=True)
class LayerCompression:
    """One layer's weights: ``count`` values, ``fixed_bits`` when stored at their bit width,
    ``huffman_bits`` Huffman-coded (payload plus table); ``entropy`` is bits per weight."""
    name: str
    count: int
    fixed_bits: int
    zeros: int
    entropy: float
    huffman_bits: int

    @property
    def sparsity(self):
        return self.zeros / max(self.count, 1)

    @property
    def ratio(self):
        return FLOAT_BITS * self.count / max(self.huffman_bits, 1)

    @property
    def fixed_ratio(self):
        """Against 32-bit floats when stored at the weight bit width without entropy coding."""
        return FLOAT_BITS * self.count / max(self.fixed_bits, 1)


def _entropy(values):
    _, counts = np.unique(values, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def compression_report(graph):
    """``(layers, total)``: `LayerCompression` per weighted node and for all of them together.

    Each layer is coded with its own Huffman code (its integer weight codes, all points); the
    total sums the layers' bits. Biases and scales are not counted (as in the paper).
    """
    layers = []
    for node in graph.nodes:
        if not hasattr(node, "w_type"):
            continue
        w = np.asarray(node.weights, np.int64).reshape(-1)
        code = HuffmanCode.fit(w)
        bits = code.payload_bits(w) + code.table_bits(node.w_type.bits)
        layers.append(LayerCompression(node.name, int(w.size), int(w.size) * int(node.w_type.bits), int((w == 0).sum()),
                                       _entropy(w), int(bits)))
    count = sum(layer.count for layer in layers)
    bits = sum(layer.huffman_bits for layer in layers)
    total = LayerCompression("total", count, sum(layer.fixed_bits for layer in layers),
                             sum(layer.zeros for layer in layers),
                             sum(layer.entropy * layer.count for layer in layers) / max(count, 1), bits)
    return layers, total
