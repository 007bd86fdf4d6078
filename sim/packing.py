"""Packing integer codes into stream beats and back, exactly as ``data.ArrayLayout`` lays them
out (element 0 in the least significant bits, two's complement for signed elements).

`tests/sim/test_packing.py` checks these against Amaranth's own layout objects, so the numpy
side, the harness files and the hardware share one bit layout.
"""

import numpy as np

__all__ = ["pack_beats", "unpack_beats", "to_hex_lines", "from_hex_lines"]


def pack_beats(values, bits):
    """``values`` of shape ``(beats, n)`` -> one Python int per beat (``n * bits`` bits wide)."""
    values = np.asarray(values, dtype=np.int64)
    if values.ndim != 2:
        raise ValueError(f"values must be (beats, elements), not {values.shape}")
    mask = (1 << bits) - 1
    fields = (values & mask).astype(np.uint64)
    if values.shape[1] * bits <= 64:
        shifts = (np.arange(values.shape[1], dtype=np.uint64) * np.uint64(bits))
        return [int(w) for w in np.bitwise_or.reduce(fields << shifts, axis=1)]
    words = [0] * values.shape[0]
    for k in range(values.shape[1]):
        shift = k * bits
        for i, f in enumerate(fields[:, k].tolist()):
            words[i] |= f << shift
    return words


def unpack_beats(words, n, bits, signed):
    """Python ints (one per beat) -> ``(beats, n)`` int64 codes."""
    mask = (1 << bits) - 1
    out = np.empty((len(words), n), dtype=np.int64)
    for k in range(n):
        shift = k * bits
        out[:, k] = [(w >> shift) & mask for w in words]
    if signed:
        out = np.where(out >= 1 << (bits - 1), out - (1 << bits), out)
    return out


def to_hex_lines(words, width):
    digits = max(1, (width + 3) // 4)
    return "\n".join(f"{w:0{digits}x}" for w in words) + "\n"


def from_hex_lines(text):
    """Parse a ``$writememh`` file (skips ``//`` comments and ``@`` addresses; ``x`` reads as 0)."""
    words = []
    for line in text.splitlines():
        line = line.split("//")[0].strip()
        if not line or line.startswith("@"):
            continue
        for token in line.split():
            words.append(int(token.replace("x", "0").replace("X", "0").replace("z", "0"), 16))
    return words
