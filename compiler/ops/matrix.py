"""What Dense and Conv2d share: weights, multipoint accumulation, requantization, the MVAU engine."""

import numpy as np

from qfab.base.errors import QfabError

from .. import estimate, intops
from ..ir import WeightType
from .base import Op
from .common import (
    BIAS_BITS,
    MULTIPLIER_BITS,
    check_int_array,
    check_requant,
    check_rounding,
    fail,
    requant_of,
    requant_ratio,
    with_rounding,
    x_max,
)

__all__ = ["MatrixOp", "BIAS_LIMIT", "requant_timing", "mac_engine_latency"]

BIAS_LIMIT = (1 << 31) - 1


class MatrixOp(Op):
    """A node ``y = requant(b + sum_p m_p * W_p (x - zx))`` computed by an MVAU."""
    weighted = True
    weight_ndim = None          # 3 (Dense) or 5 (Conv2d)

    # ---- IR -----------------------------------------------------------------------------------
    def verify(self, graph, node, inp, out):
        w, wt = node.weights, node.w_type
        if not isinstance(w, np.ndarray) or w.ndim != self.weight_ndim:
            fail(node, f"weights must be a {self.weight_ndim}-D array")
        if w.shape[0] < 1:
            fail(node, "weights need at least one point")
        if not isinstance(wt.bits, (int, np.integer)) or not 1 <= wt.bits <= 8:
            fail(node, f"weight bits must be 1 to 8, not {wt.bits}")
        if wt.bipolar and wt.bits != 1:
            fail(node, f"bipolar weights have 1 bit, not {wt.bits}")
        check_int_array(node, "weights", w, None, wt.qmin, wt.qmax)
        if wt.bipolar and np.any(w == 0):
            fail(node, "bipolar weights must be -1 or +1, found 0")
        p, c = w.shape[0], w.shape[1]
        mlim = 1 << (MULTIPLIER_BITS - 1)
        check_int_array(node, "point multipliers", node.multipliers, (p, c), -mlim, mlim - 1)
        check_int_array(node, "bias", node.bias, (c,), -(1 << (BIAS_BITS - 1)), (1 << (BIAS_BITS - 1)) - 1)
        scales = np.asarray(wt.scales, dtype=np.float64)
        if scales.shape != (c,) or not np.all(np.isfinite(scales)) or not np.all(scales > 0):
            fail(node, f"weight scales must be {c} positive finite floats")
        bound = intops.acc_bound(node.fan_in, wt.max_abs, x_max(inp),
                                 int(np.abs(node.bias).max(initial=0)), p,
                                 int(np.abs(node.multipliers).max(initial=0)))
        check_requant(graph, node, node.requant, c, bound, out)
        check_rounding(node)

    def with_rounding(self, node, rounding):
        """``node`` with the requantization's rule for exact ties ``rounding`` (a model imported
        from onnxruntime's formats rounds half to even; docs/semantics.md)."""
        return with_rounding(node, rounding)

    @staticmethod
    def accumulate(node, dots):
        """``bias + sum_p m[p] * dots[p]`` with ``dots`` of shape ``(P, ..., C)``."""
        acc = np.broadcast_to(node.bias, dots.shape[1:]).astype(np.int64)
        for p in range(node.points):
            acc = acc + node.multipliers[p] * dots[p]
        return acc

    # ---- quantization -------------------------------------------------------------------------
    def node_fields(self, fnode):
        """The node type's own fields beyond the weighted ones (stride, padding, groups)."""
        return {}

    def from_float(self, fnode, tensors, fixed, m_bits):
        if fixed is None:
            raise QfabError(f"node {fnode.name!r} ({fnode.kind}) has no quantized weights")
        tin, tout = tensors[fnode.inputs[0]], tensors[fnode.output]
        s_in, s_out = tin.qtype.scale, tout.qtype.scale
        ratios = [requant_ratio(s_in, s_w, divide_by=s_out) for s_w in fixed.scales]
        if fixed.multipliers is None:
            w = fixed.w_int.astype(np.int64)[None]
            multipliers = np.ones((1, w.shape[1]), np.int64)
        else:
            w = fixed.w_int.astype(np.int64)
            multipliers = np.asarray(fixed.multipliers, np.int64)
        bipolar = fixed.bits == 1 and bool(np.all(np.abs(w[multipliers != 0]) == 1))
        wt = WeightType(bits=fixed.bits, signed=fixed.signed or bipolar,
                        scales=np.asarray(fixed.scales, np.float64), bipolar=bipolar)
        return self.node_type(name=fnode.name, input=fnode.inputs[0], output=fnode.output, weights=w,
                              multipliers=multipliers, bias=self._bias(fnode, fixed, s_in), w_type=wt,
                              requant=requant_of(fnode, ratios, tout.qtype, m_bits), **self.node_fields(fnode))

    @staticmethod
    def _bias(fnode, fixed, s_in):
        if fixed.b_int is not None:
            return fixed.b_int.astype(np.int64)
        b = np.rint(fnode.bias / (s_in * fixed.scales))
        if np.any(np.abs(b) > BIAS_LIMIT):
            raise QfabError(f"node {fnode.name!r}: bias does not fit 32 bits at scale s_in * s_w; "
                            "the input or weight scale is too small for this bias")
        return b.astype(np.int64)

    # ---- info ---------------------------------------------------------------------------------
    def params(self, graph, node):
        c = node.out_channels
        bits = int(node.weights.size * node.w_type.bits + c * 32 + c * (graph.m_bits + 6))
        if node.points > 1:
            bits += int(node.multipliers.size * 16)
        text = node.w_type.describe() + (f" x{node.points}pt" if node.points > 1 else "")
        return int(node.weights.size + node.bias.size), bits, text

    # ---- hardware -----------------------------------------------------------------------------
    @staticmethod
    def requant_choice(graph, node, work, fold, family):
        """How the node's MVAU requantizes at ``fold`` on ``family`` (`estimate.choose_requant`):
        the same choice for the estimate and the lowering."""
        rq = node.requant
        return estimate.choose_requant(work, fold, family, levels=int(rq.hi) - int(rq.lo),
                                       m0_bits=max(1, int(rq.m0.max(initial=0)).bit_length()), m_bits=graph.m_bits)

    def engine_estimate(self, graph, node, work, fold, m):
        shifts = [int(v) for v in node.requant.shift]
        family = m.get("target_family", "ice40")
        choice = self.requant_choice(graph, node, work, fold, family)
        res = estimate.resources(estimate.stage_terms(work, fold, m, m_bits=graph.m_bits, shifts=shifts,
                                                      requant=choice), m)
        if wants_fetch_register(family, node, work, fold):
            res = res + estimate.fetch_register_resources(work, fold)
        if family == "ecp5":    # measured there: on the iCE40 the fitted model holds (they share cells)
            tiles, vary = self._tree_shape(node, work, fold)
            res = res + estimate.tree_register_resources(work, fold, tree_registers(family, fold.simd, vary, tiles),
                                                         tiles, vary)
        if choice.mode == "multiply" and "dsp_width" in multiply_options(family):
            res = res + estimate.dsp_piece_resources(work, fold, m_bits=graph.m_bits, m=m,
                                                     cells="dsp_cell" in multiply_options(family))
        queue = mac_queue(family, choice)
        if queue == "skid":
            res = res + estimate.skid_resources(work, fold, choice)
        elif queue == "reserve":
            params = dict(self.clock_params(family, node, work, fold), style=fold.style, a_bits=work.a_bits)
            res = res + estimate.reserve_resources(work, fold, reserve_depth(params, work.k // fold.simd))
            if choice.mode == "multiply":
                out_bits = max(abs(int(node.requant.lo)), abs(int(node.requant.hi))).bit_length() + 1
                depth = requant_queue_depth(dict(reserve=True, **multiply_options(family)))
                res = res + estimate.requant_queue_resources(fold, out_bits, depth)
        return res

    def estimate(self, graph, node, work, fold, m):
        return self.engine_estimate(graph, node, work, fold, m)

    @staticmethod
    def _tree_shape(node, work, fold):
        """``(tiles, weights_vary)`` of the MVAU's adder trees: LUT tiles a lane (`product_tiles`;
        4 bit-serially, where a lane adds its weight per bit plane) and whether its weights are
        read per fold step (`varying_weights`)."""
        tiles = product_tiles(node.w_type.bits, work.a_bits) if fold.style == "bit_parallel" else 4
        return tiles, varying_weights(node, work, fold)

    def clock_params(self, family, node, work, fold):
        """The MVAU's register options for the family's clock: ``fetch_register``,
        ``tree_registers``."""
        params = {}
        if wants_fetch_register(family, node, work, fold):
            params["fetch_register"] = True
        tiles, vary = self._tree_shape(node, work, fold)
        registers = tree_registers(family, fold.simd, vary, tiles)
        if registers != 1:
            params["tree_registers"] = registers
        return params

    def engine_params(self, lw, node, fold, work, weights):
        """The constructor parameters the MVAU and the VVAU share: folding, weights (``weights``, in
        the engine's layout) and where they live, types, bias and requantization."""
        graph = lw.graph
        tin, tout = graph.tensors[node.input], graph.tensors[node.output]
        wt = node.w_type
        in_logic = lw.weights_in_logic(work, fold)
        return dict(
            pe=fold.pe, simd=fold.simd, weights=weights, w_bits=wt.bits,
            w_encoding="bipolar" if wt.bipolar else "signed",
            a_bits=tin.qtype.bits, a_encoding="signed" if tin.qtype.signed else "unsigned",
            bias=node.bias.tolist(), m0=node.requant.m0.tolist(), shift=node.requant.shift.tolist(),
            out_zero_point=tout.qtype.zero_point, lo=node.requant.lo, hi=node.requant.hi,
            out_bits=tout.qtype.bits, out_signed=tout.qtype.signed, in_zero_point=tin.qtype.zero_point,
            m_bits=graph.m_bits, weight_memory={None: "auto", True: "logic", False: "block"}[in_logic],
            style=fold.style, **({"rounding": node.rounding} if node.rounding != "half_up" else {}))

    def mvau(self, lw, node, fold, work, name_suffix=""):
        """Add the node's MVAU stage to the plan; its input port is ``<stage>.i``."""
        graph = lw.graph
        params = self.engine_params(lw, node, fold, work, node.weight_rows().tolist())
        params["point_multipliers"] = node.multipliers.tolist()
        if fold.pixels > 1:
            params["pixels"] = fold.pixels
        params.update(self.clock_params(lw.policy.family, node, work, fold))
        choice = self.requant_choice(graph, node, work, fold, lw.policy.family)
        queue = mac_queue(lw.policy.family, choice)
        if queue is not None:
            params[queue] = True
        if choice.mode == "multiply":
            params.update(multiply_options(lw.policy.family))
        if choice.mode != "multiply":          # the engine's default
            params["requant"] = choice.mode
            if choice.mode == "shift_add":
                params["requant_digit_bits"] = choice.digit_bits
        return lw.stage(node, name_suffix, kind="mvau", engine="MVAU", params=params,
                        in_per_beat=fold.simd * fold.pixels, out_per_beat=fold.pe * fold.pixels,
                        cycles=work.cycles(fold), fold=fold, buffered=(node.fan_in + 2 * fold.pe) * fold.pixels)

    # ---- latency (qfab.compiler.latency) --------------------------------------------------------
    def latency(self, graph, node, stage):
        """The MVAU's, from the issue of an output beat's last MAC beat to the beat on ``o``
        (`mac_engine_latency`, with the requantization's `requant_timing` and 2 more with point
        multipliers other than a single 1)."""
        return mac_engine_latency(stage.params, requant_timing(stage.params)[0],
                                  combine=_combines(stage.params.get("point_multipliers")))

    def output_interval(self, graph, node, stage):
        """The MVAU's `requant_interval`: cycles per output beat its requantization needs."""
        return requant_timing(stage.params)[1]

    # ---- export -------------------------------------------------------------------------------
    def qdq_float(self, writer, node, x, w, b):
        """The ONNX float operator of the node, given its dequantized weights and bias."""
        raise NotImplementedError

    def qdq(self, writer, node, x):
        w, b = writer.weights(node)
        y = self.qdq_float(writer, node, x, w, b)
        return writer.clamp(node.output, node.requant.lo, node.requant.hi, y)


# ---- latency of the MAC engines (MVAU, VVAU), from their documented pipelines ---------------------
def requant_timing(params):
    """``(latency, interval)`` of an engine's requantization from its plan parameters
    (`estimate.RequantChoice.latency` and ``.interval``, as `qfab.hw.requant.Requant` and
    `qfab.hw.threshold.ThresholdRequant` document them)."""
    mode = params.get("requant", "multiply")
    if mode not in estimate.REQUANT_MODES:
        raise QfabError(f"unknown requantization mode {mode!r}")
    choice = estimate.RequantChoice(
        mode, levels=int(params["hi"]) - int(params["lo"]) if mode == "search" else 255,
        m0_bits=max(int(v) for v in params["m0"]).bit_length() if mode == "shift_add" else 24,
        digit_bits=int(params.get("requant_digit_bits", 1)))
    extra = 0
    if mode == "multiply":      # DSP pieces: operand and product registers; split: the halves
        extra = 2 if params.get("dsp_width") else 1 if params.get("split_multiply") else 0
    return choice.latency + extra, choice.interval


def requant_queue_depth(params):
    """Entries of an engine's requantization queue from its plan parameters
    (`qfab.hw.requant.Requant.queue_depth`: with the MVAU's ``reserve``, a multiply's latency and
    one more; 0 otherwise)."""
    if not params.get("reserve") or params.get("requant", "multiply") != "multiply":
        return 0
    return requant_timing(params)[0] + 1


def _combines(multipliers):
    """Whether an MVAU sums weighted points (anything but one point of multiplier 1)."""
    return multipliers is not None and not (len(multipliers) == 1 and all(int(v) == 1 for v in multipliers[0]))


MAC_LATENCY = 4          # the fetch register (weights and activations meet), then the MacArray's 3 cycles


def multiply_options(family):
    """The `qfab.hw.requant.Requant` options of a ``multiply`` requantization on ``family``.

    Every path through a DSP is registered at both ends and times: on the iCE40 the product in
    SB_MAC16-sized pieces with the DSPs' own input and output registers (``dsp_width``): Yosys otherwise chains the pieces through the DSPs' adders
    unregistered, paths nextpnr-ice40 does not time. On the ECP5 the product in 18-bit pieces
    (``dsp_width``, two more cycles), each a MULT18X18D cell with its own input registers
    (``dsp_cell``; Yosys packs no register into one), whatever the accumulator: a fabric register,
    the DSP and a fabric register in one cycle had limited the MLP w8a8 to 83.5 MHz, and with
    the halves of ``split_multiply`` (one more cycle, accumulators of up to 17 bits) the MLP
    w4a4 to 94.8 MHz (a half's 3.9 ns in the DSP and 6.1 ns of routing to and from it). Before
    the cells the pieces everywhere had taken the MLP w4a4 from 102.3 to 93.4 MHz (their digit
    registers merged and far from the DSPs): the cells hold those registers now."""
    if family == "ecp5":
        return {"dsp_width": estimate.structure(family)["dsp_width"], "dsp_cell": "MULT18X18D"}
    if family == "ice40":
        return {"dsp_width": estimate.structure(family)["dsp_width"]}    # the SB_MAC16's 16 bits
    return {}


def varying_weights(node, work, fold):
    """Whether an MVAU reads its weights per fold step (more than one weight word); a single
    word is constants."""
    return node.points * (work.n // fold.pe) * (work.k // fold.simd) > 1


# On the iCE40 the fetch register and the skid queue were tried and taken back: the UP5K digits
# MLP w4a4 went 33.6 -> 32.3 -> 34.4 MHz with them (within nextpnr's run-to-run spread), the CNN
# w4a4 from 36.1 MHz (met at 36, 4,199 cells) to 32.5 MHz (4,377 cells): their flip-flops cost
# logic cells on a device whose routing, not its logic depth, limits it.

def wants_fetch_register(family, node, work, fold):
    """Whether an MVAU registers its weight word and activations once more before the MAC array
    (`qfab.hw.mvau.MVAU`'s ``fetch_register``): on the ECP5, whenever the weights are read per fold
    step (a DP16KD's 5.6 ns clock-to-output, or a ROM's mux in LUTs)."""
    return family == "ecp5" and varying_weights(node, work, fold)


def mac_queue(family, choice=None):
    """The queue an MVAU gets after its MAC array: ``"reserve"`` (`qfab.hw.mvau.MVAU`'s
    ``reserve``: a MAC array that never stalls, its last beats issued only with room reserved in a
    queue after it), ``"skid"`` (``skid``: a queue before the requantization) or ``None``.

    On the ECP5 always, reserved: first the skid, where the stall chain from the next stage's FIFO,
    through the requantization and the MAC array's enable, into the vector store limited the
    digits CNN at II 64 to 87.7 MHz once its adder trees had two registers; with the skid the chain
    still ran from the queue's level through the enable (which loads every register of the adder
    trees) into the store's ``full`` flags, five LUT levels and 7.9 ns of routing: the digits MLP
    w4a4 at II 8, 92.2 MHz. The reserved queue costs ``queue_depth`` entries of ``pe``
    accumulators in distributed RAM (`reserve_depth`, `estimate.reserve_resources`).

    On the iCE40 (no distributed RAM: the reserved queue would be flip-flops) the skid, before a
    requantization of several cycles a beat (``choice``, a `estimate.RequantChoice`: shift and
    add, or the threshold search, whose ready hangs on its step counter): there the queue is one
    register of ``pe`` accumulators (`estimate.skid_resources`), and that chain, through the MAC
    array's enable into the vector store's counters, was the digits MLP w4a4's slowest path
    (`gemm_7`, SIMD 8, eight LUT levels, 35.0 MHz with 36 asked), and with one lane the digits
    CNN w8a8's (`gemm_24`, shift and add, the requantization's ``o.valid`` through six LUT levels
    into the vector store's enable, 35.6 MHz; 38.2 with the skid, the MLPs 39.3 and 40.5, 2 %
    more logic cells; it had first been kept to MVAUs of 8 or more lanes, when the CNN w8a8 with
    it did not fit by the estimate). The two-beat queue on every MVAU had been tried on the iCE40
    and taken back (below)."""
    if family == "ecp5":
        return "reserve"
    if choice is not None and choice.interval > 1:
        return "skid"
    return None


def reserve_depth(params, sf):
    """Entries of an MVAU's reserved queue (`qfab.hw.mvau.MVAU.queue_depth`, which
    tests/compiler/test_latency.py checks this against): the dot products between their last
    beat's issue and their leaving the queue at full rate, one per ``sf`` beats (``K / simd``;
    times ``a_bits`` bit-serially)."""
    serial = int(params["a_bits"]) if params.get("style", "bit_parallel") == "bit_serial" else 0
    mac = int(params.get("tree_registers", 1)) + (3 if serial else 2)
    round_trip = (2 if params.get("fetch_register") else 1) + mac + 2 + max(serial - 1, 0)
    return -(-round_trip // (sf * max(serial, 1)))


def product_tiles(w_bits, a_bits):
    """LUT tiles of one run-time product (`qfab.hw._arith.tile_addends`: 2 x 2 blocks of its
    bit grid): 4 at w4a4, 16 at w8a8."""
    return -(-int(w_bits) // 2) * -(-int(a_bits) // 2)


def tree_registers(family, simd, weights_vary=False, tiles=4):
    """Register levels in an MVAU's adder trees (`qfab.hw.mac.MacArray`'s ``tree_registers``).
    One, half way, is enough for up to 16 lanes on the ECP5 and 32 on the iCE40 (its clock goal is
    36 MHz); there a tree of SIMD 72 (digits CNN fully unfolded) had six carry chains before its
    register at 100 MHz asked (15.5 ns), and with two registers (a third and two thirds of the
    way) its middle part was still the slowest path (90.5 MHz): one more level per four times the
    lanes keeps each segment to about two chains. Weights read per fold step (``weights_vary``)
    multiply in full tiles rather than by constants: such a lane counts its ``tiles``
    (`product_tiles`), at least four (the digits CNN's `gemm_24`, SIMD 16 of 4-bit weights from a
    ROM, was then the slowest path at 91.8 MHz). An 8-bit product is 16 tiles, summed smallest
    first into a chain of seven carry chains: the digits MLP w8a8's slowest path on both families
    (UP5K 28.6 MHz with 36 asked, ECP5 60.0 MHz with 100, both in `gemm_7`, SIMD 2), so on the
    iCE40 too a tree of such products gets a second register from two lanes up (one product
    alone, the digits CNN w8a8's SIMD 1, was not its slowest path, and the UP5K at 89 % full
    could not place the extra flip-flops in 8 minutes), as does a tree of more than 32 lanes so
    counted (the digits MLP w4a4's `gemm_3`, SIMD 16 of 4-bit weights: 64, its slowest path at
    32.7 MHz once its weight ROM was faster): the ECP5's rule at twice the lanes."""
    registers = 1
    lanes = simd * max(4, tiles) if weights_vary else simd
    per_level = 16 if family == "ecp5" else 32
    while lanes > per_level * 4 ** (registers - 1):
        registers += 1
    if family != "ecp5" and weights_vary and tiles > 4 and simd > 1:
        registers = max(registers, 2)
    return registers


def mac_engine_latency(params, requant_latency, combine=False):
    """Cycles from the issue of an output beat's last MAC beat to the beat on the output of an
    MVAU or VVAU (`qfab.hw.mvau.MVAU.latency`, the VVAU's docstring): 4 (the fetch register, then
    the `MacArray`'s 3, one of them a register level inside its adder trees), the MVAU's clock
    options (`tree_registers - 1` more with deeper trees, one more each with ``fetch_register`` and
    ``skid`` or ``reserve``; the VVAU has none of them), 2 more for the point sum, the requantization's, and
    ``a_bits`` more in the bit-serial style (one cycle per bit plane). The compiler does not import
    the hardware: tests/compiler/test_latency.py checks these numbers against the engines in the
    Amaranth simulator."""
    serial = int(params["a_bits"]) if params.get("style", "bit_parallel") == "bit_serial" else 0
    options = (int(params.get("tree_registers", 1)) - 1 + bool(params.get("fetch_register"))
               + bool(params.get("skid") or params.get("reserve")))
    return MAC_LATENCY + options + (2 if combine else 0) + requant_latency + serial
