# amaranth: UnusedElaboratable=no
"""Pruned weights make the hardware smaller: with constant (``LOGIC``) weights, zeros cost no logic.

Simulation: MVAUs with lanes that are zero at every fold step, lanes with one constant weight and
ROM lanes stay bit-exact against the numpy Dense model, in every style. Synthesis (``board``,
Yosys ``synth_ice40``, about 20 s): a 16-input, 8-output w4a4 layer with 75% zero weights against
the same layer dense, fully unrolled and folded, and a MAC array whose zero lane builds nothing.
"""

import numpy as np
import pytest

from qfab.boards import synth
from qfab.hw.mac import Encoding, MacArray, MacStyle
from qfab.hw.mvau import MVAU
from qfab.hw.weights import MemoryKind

from .streams import stream_through
from .test_mvau import dense_model, make_layer, run_mvau


def prune(weights, sparsity, seed):
    """``weights`` with the ``round(sparsity * size)`` smallest magnitudes set to zero (ties
    broken at random), as qfab's magnitude pruning leaves them."""
    rng = np.random.default_rng(seed)
    w = np.array(weights)
    flat = w.reshape(-1)
    order = np.lexsort((rng.random(flat.size), np.abs(flat)))
    flat[order[:int(round(sparsity * flat.size))]] = 0
    return w


def lane_view(weights, pe, simd):
    """``[P][N][K]`` weights as ``[P, N/pe, pe, K/simd, simd]``: lane ``(p, s)`` of the MAC
    array is ``[:, :, p, :, s]``."""
    points, n, k = weights.shape
    return weights.reshape(points, n // pe, pe, k // simd, simd)


# -- simulation ------------------------------------------------------------------------------

@pytest.mark.parametrize("style,use_dsp", [(MacStyle.BIT_PARALLEL, False),
                                           (MacStyle.BIT_PARALLEL, True),
                                           (MacStyle.BIT_SERIAL, False)])
@pytest.mark.parametrize("pe,simd,nf,sf,points,w_bits,a_bits", [
    (4, 6, 1, 1, 1, 4, 4),      # fully unrolled: every lane a constant
    (2, 3, 2, 2, 1, 4, 4),      # folded: zero, constant and ROM lanes
    (3, 2, 2, 3, 2, 2, 2),      # two points
    (2, 4, 1, 2, 1, 8, 3),      # 8-bit weights: constant lanes in two 4-bit tiles
])
def test_sim_sparse_mvau(style, use_dsp, pe, simd, nf, sf, points, w_bits, a_bits):
    rng = np.random.default_rng(pe * 100 + simd * 10 + w_bits)
    n, k = pe * nf, simd * sf
    layer = make_layer(rng, points, n, k, w_bits, Encoding.SIGNED, a_bits, Encoding.UNSIGNED,
                       points > 1, 8, False)
    w = prune(layer["weights"], 0.75, seed=1)
    lanes = lane_view(w, pe, simd)
    lanes[:, :, 0, :, 0] = 0                            # lane (0, 0): zero at every step
    lanes[:, :, pe - 1, :, simd - 1] = -(1 << (w_bits - 1))  # the last lane: one constant
    layer["weights"] = w
    dut = MVAU(pe, simd, w_bits=w_bits, w_encoding=Encoding.SIGNED, a_bits=a_bits,
               a_encoding=Encoding.UNSIGNED, out_bits=8, out_signed=False, m_bits=16,
               style=style, use_dsp=use_dsp, weight_memory=MemoryKind.LOGIC, **layer)
    x = rng.integers(0, 1 << a_bits, (3, k))
    beats = [x[v, s * simd:(s + 1) * simd].tolist() for v in range(3) for s in range(sf)]
    got = run_mvau(dut, beats, 3 * nf, gap_prob=0.3, stall_prob=0.3)
    expected = dense_model(x, layer["in_zero_point"], w, layer["point_multipliers"],
                           layer["bias"], layer["m0"], layer["shift"], layer["out_zero_point"],
                           layer["lo"], layer["hi"])
    assert np.array(got).reshape(3, n).tolist() == expected.tolist()


@pytest.mark.parametrize("w_bits,w_enc,a_bits,a_enc", [
    (4, Encoding.SIGNED, 4, Encoding.UNSIGNED), (3, Encoding.UNSIGNED, 5, Encoding.SIGNED),
    (1, Encoding.BIPOLAR, 1, Encoding.BIPOLAR), (1, Encoding.BIPOLAR, 2, Encoding.UNSIGNED),
])
def test_sim_mac_constant_lanes(w_bits, w_enc, a_bits, a_enc):
    """`MacArray` ``weights=``: constant lanes ignore ``w``, the others use it."""
    rng = np.random.default_rng(w_bits + a_bits)
    pe, simd, beats, depth = 2, 5, 2, 3
    if w_enc is Encoding.BIPOLAR:
        codes = rng.integers(0, 2, (depth, pe, simd))
        values = 2 * codes - 1
    else:
        lo = -(1 << (w_bits - 1)) if w_enc is Encoding.SIGNED else 0
        codes = rng.integers(lo, lo + (1 << w_bits), (depth, pe, simd))
        codes[:, 0, :2] = 0                         # two zero lanes
        values = codes
    codes[:, 1, 1] = codes[0, 1, 1]                 # a constant lane
    values = 2 * codes - 1 if w_enc is Encoding.BIPOLAR else codes
    dut = MacArray(pe, simd, w_bits=w_bits, w_encoding=w_enc, a_bits=a_bits, a_encoding=a_enc,
                   beats=beats, weights=codes.tolist())
    assert dut.weights == codes.tolist()
    vectors = 4
    order = rng.integers(0, depth, (vectors, beats))
    if a_enc is Encoding.BIPOLAR:
        a = rng.integers(0, 2, (vectors, beats, simd))
        a_vals = 2 * a - 1
    else:
        a_lo = -(1 << (a_bits - 1)) if a_enc is Encoding.SIGNED else 0
        a = a_vals = rng.integers(a_lo, a_lo + (1 << a_bits), (vectors, beats, simd))
    payloads = [{"w": codes[order[v, b]].tolist(), "a": a[v, b].tolist()}
                for v in range(vectors) for b in range(beats)]
    expected = np.einsum("vbps,vbs->vp", values[order], a_vals).tolist()
    got = stream_through(dut, payloads, vectors, gap_prob=0.3, stall_prob=0.3)
    assert got == expected


def test_init_wrong_weights():
    kwargs = dict(w_bits=2, w_encoding=Encoding.SIGNED, a_bits=2, a_encoding=Encoding.UNSIGNED,
                  beats=1)
    with pytest.raises(ValueError, match=r"^weights must be a non-empty list of words of 1 rows "
                                         r"of 2 codes$"):
        MacArray(1, 2, weights=[[[1]]], **kwargs)
    with pytest.raises(ValueError, match=r"^weights must be a non-empty list"):
        MacArray(1, 2, weights=[], **kwargs)
    with pytest.raises(ValueError, match=r"^weight code 2 is outside \[-2, 1\]$"):
        MacArray(1, 2, weights=[[[0, 2]]], **kwargs)


# -- synthesis -------------------------------------------------------------------------------

def synthesize(component):
    """iCE40 cell counts (`qfab.boards.toolchain.Cells`) of ``component`` after Yosys."""
    return synth.synthesize(component, "ice40", log=None).total


def layer_mvau(weights, pe, simd):
    """A 4-bit Dense layer (unsigned inputs, signed weights) with ``LOGIC`` weights."""
    n = weights.shape[1]
    return MVAU(pe, simd, weights=weights, w_bits=4, w_encoding=Encoding.SIGNED, a_bits=4,
                a_encoding=Encoding.UNSIGNED, bias=[3] * n, m0=[1 << 10] * n, shift=[12] * n,
                out_zero_point=0, lo=0, hi=15, out_bits=4, out_signed=False, m_bits=16,
                weight_memory=MemoryKind.LOGIC)


def dense_weights(n, k, seed):
    rng = np.random.default_rng(seed)
    w = rng.integers(-8, 8, (1, n, k))
    w[w == 0] = 1                       # truly dense: no zero at all
    return w


@pytest.mark.board
@pytest.mark.slow
@pytest.mark.parametrize("pe,simd", [(8, 16), (4, 8)])
def test_synth_pruned_layer_is_smaller(pe, simd):
    """16 inputs x 8 outputs, w4a4, 75% zeros against dense.

    The logic that depends on the weights is measured against a floor: the same unit with one
    weight per output channel (control, input store and requantization stay, the MAC array
    nearly goes). Fully unrolled, that part must shrink at least to (1 - sparsity) + 0.15 of
    dense (every zero is free; measured 0.33); folded (4 steps), to the fraction of lanes that
    keep a nonzero weight in some step (a zero lane is free, the others shrink with their
    ROMs; measured 0.49 against 0.66). In all: 736 / 1458 LUTs fully unrolled (the part that
    does not depend on the weights, about 380, is half the sparse layer: the whole layer shrinks to
    about half, the bound below, 0.55, leaves room for the control's few LUTs moving; it had been
    0.5, met by half a LUT).
    """
    sparsity = 0.75
    dense = dense_weights(8, 16, seed=1)
    sparse = prune(dense, sparsity, seed=2)
    floor = np.zeros_like(dense)
    floor[0, :, 0] = dense[0, :, 0]
    luts = {}
    for name, w in (("dense", dense), ("sparse", sparse), ("floor", floor)):
        luts[name] = synthesize(layer_mvau(w, pe, simd)).luts
    net = (luts["sparse"] - luts["floor"]) / (luts["dense"] - luts["floor"])
    live = np.any(lane_view(sparse, pe, simd) != 0, axis=(0, 1, 3)).mean()
    if pe * simd == 8 * 16:
        assert live == 1 - sparsity
        assert luts["sparse"] < 0.55 * luts["dense"], luts
        assert net < (1 - sparsity) + 0.15, (net, luts)
    else:
        assert net < live, (net, live, luts)
        assert luts["sparse"] < 0.7 * luts["dense"], luts


@pytest.mark.board
def test_synth_zero_lane_has_no_multiplier():
    """A folded MAC array (2 PEs x 4 lanes, 8 weight words) whose lane 3 is zero in every word
    costs what the 3-lane array of the other weights costs, and clearly less than the same
    array with a run-time product in lane 3 of PE 0 (more than four weights over the words)."""
    rng = np.random.default_rng(3)
    words = rng.integers(-8, 8, (8, 2, 4))
    words[words == 0] = 1
    assert len(set(words[:, 0, 3])) > 4
    zero = words.copy()
    zero[:, :, 3] = 0
    one = zero.copy()
    one[:, 0, 3] = words[:, 0, 3]

    def mac(w):
        return MacArray(2, w.shape[2], w_bits=4, w_encoding=Encoding.SIGNED, a_bits=4,
                        a_encoding=Encoding.UNSIGNED, beats=2, weights=w.tolist())

    luts = {}
    for name, w in (("zero", zero), ("three", words[:, :, :3]), ("one", one)):
        luts[name] = synthesize(mac(w)).luts
    assert abs(luts["zero"] - luts["three"]) <= 3, luts
    # a 4x4 run-time product (four 2x2 tiles) and its adder-tree inputs: about 30 LUTs
    assert luts["zero"] <= luts["one"] - 15, luts
