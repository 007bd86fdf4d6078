"""First-result latency of a planned accelerator: the cycles from its first input beat to the last
output beat of its first result, as the simulation measures it (`qfab.sim.accelerator.SimResult.latency`).

The model follows the beats of one inference through the plan, without stalls at either end (the
harness offers an input beat every cycle and takes every output beat). A stream is the array of the
cycles its beats move in; each part of the plan maps the streams into it to the stream out of it:

- the input: beat ``j`` at cycle ``j``;
- a fork: no delay; a width converter: an output beat one cycle after the input beat that completes
  it; a FIFO: two cycles (hw/plumbing.py); each moves at most one beat per cycle;
- an engine (`qfab.hw`): its schedule here (which input beats an output beat needs, how fast it
  takes them in and issues its work, its buffers), and its pipeline latency and output interval from
  its operator (`Op.latency`, `Op.output_interval` in `qfab.compiler.ops`).

Every stream obeys ``t[j] = max(ready[j], t[j - 1] + step)`` (a beat moves when it is ready and
the previous one has moved), computed in closed form with numpy. A stage's input beats are taken
when they arrive and its own buffers have room (an MVAU's vector banks, a sliding window's line
buffer); back-pressure that a slow stage puts on the stages before it is left out, as it delays
beats that stage could not take earlier anyway (the FIFOs between stages keep the next beats
ready). docs/hardware.md, "Latency", explains the model and how close it is.
"""

import math
from dataclasses import dataclass

import numpy as np

from qfab.base.errors import QfabError

from .ops import op_for

__all__ = ["FIFO_LATENCY", "CONVERTER_LATENCY", "StageTiming", "LatencyEstimate", "estimate_latency",
           "first_result_latency", "chain"]

FIFO_LATENCY = 2         # StreamFIFO (SyncFIFOBuffered): a beat written in cycle t leaves in t + 2 at the earliest
CONVERTER_LATENCY = 1    # WidthConverter: an input beat that completes an output beat is on o the next cycle
NEVER = np.iinfo(np.int64).min // 4


@dataclass(frozen=True)
class StageTiming:
    """Cycles (from the first input beat) at which a stage takes its first input beat and emits
    its first and last output beat of the first inference."""
    first_in: int
    first_out: int
    last_out: int


@dataclass(frozen=True)
class LatencyEstimate:
    """``cycles``: first input beat to the last output beat of the first result; ``stages``: the
    `StageTiming` of every stage by name, in plan order."""
    cycles: int
    stages: dict


def chain(ready, step=1, after=NEVER):
    """``t[j] = max(ready[j], t[j - 1] + step)`` with ``t[-1] = after``: the cycles at which beats
    ready at ``ready`` move through a port that moves one beat per ``step`` cycles."""
    ready = np.asarray(ready, dtype=np.int64)
    if ready.size == 0:
        return ready
    offset = step * np.arange(ready.size, dtype=np.int64)
    first = max(int(ready[0]), after + step) if after != NEVER else int(ready[0])
    ready = ready.copy()
    ready[0] = first
    return np.maximum.accumulate(ready - offset) + offset


def first_result_latency(graph, plan):
    """Estimated first-result latency of ``plan`` (lowered from ``graph``) in cycles."""
    return estimate_latency(graph, plan).cycles


def estimate_latency(graph, plan):
    """The `LatencyEstimate` of ``plan``, lowered from ``graph`` (`qfab.compiler.lowering.plan_graph`)."""
    nodes = {node.name: node for node in graph.nodes}
    inbound = {e.dst: e for e in plan.edges}
    outbound = {}
    for e in plan.edges:
        outbound.setdefault(e.src, []).append(e)
    produced = {"i": _fork(np.arange(plan.input.elements // plan.input.per_beat, dtype=np.int64), outbound["i"])}
    timings = {}
    for stage in plan.stages:
        node = nodes[stage.node]
        op = op_for(node)
        arrivals = {port: _through_edge(inbound[f"{stage.name}.{port}"], produced) for port in stage.inputs}
        schedule = ENGINES.get(stage.engine)
        if schedule is None:
            raise QfabError(f"stage {stage.name!r}: no latency model for engine {stage.engine!r}")
        taken, out = schedule(stage.params, arrivals, op.latency(graph, node, stage),
                              op.output_interval(graph, node, stage))
        source = f"{stage.name}.{stage.outputs[0]}"
        produced[source] = _fork(out, outbound[source])
        timings[stage.name] = StageTiming(int(min(int(t[0]) for t in taken.values())), int(out[0]), int(out[-1]))
    final = _through_edge(inbound["o"], produced)
    return LatencyEstimate(int(final[-1]), timings)


def _fork(t, edges):
    """The cycles at which a source's beats ``t`` leave through ``edges``: with several edges, a
    fork passes a beat when every edge takes it, and an edge whose width converter narrows the
    stream (``n_in > n_out`` elements per beat) takes an input beat only when the converter's
    small buffer has room, while its output leaves one beat per cycle: such a branch slows the
    fork, and so every other branch, to one input beat per ``n_in / n_out`` cycles. (Branches
    are otherwise taken to have room: the lowering sizes a residual block's skip FIFO for it.)"""
    narrowing = [e for e in edges if len(edges) > 1 and e.converter is not None and e.per_beat_src > e.per_beat_dst]
    if not narrowing:
        return t
    t = [int(v) for v in t]
    converters = []
    for e in narrowing:
        g = math.gcd(e.per_beat_src, e.per_beat_dst)
        a, b = e.per_beat_src // g, e.per_beat_dst // g                     # chunks per input, output beat
        capacity = (e.per_beat_src + e.per_beat_dst + min(e.per_beat_src, e.per_beat_dst) - g) // g
        converters.append((a, b, capacity, []))                            # [] : its output beats' cycles
    prev = NEVER
    for j in range(len(t)):
        ready = max(t[j], prev + 1)
        for a, b, capacity, out in converters:
            # the buffer (a registered count) has room for a chunks once ceil(((j + 1) a - capacity) / b) beats left
            left = -(-((j + 1) * a - capacity) // b)
            if left >= 1:
                ready = max(ready, out[left - 1] + 1)
        t[j] = prev = ready
        for a, b, capacity, out in converters:
            while (len(out) + 1) * b <= (j + 1) * a:                       # output beats this input completes
                out.append(max(ready + CONVERTER_LATENCY, out[-1] + 1 if out else NEVER))
    return np.asarray(t, dtype=np.int64)


def _through_edge(edge, produced):
    """The cycles at which the beats of ``edge``'s source reach its destination: fork (no delay),
    width converter, FIFO."""
    t = produced[edge.src]
    if edge.converter is not None:
        n_in, n_out = edge.per_beat_src, edge.per_beat_dst
        beats = t.size * n_in // n_out
        last_in = ((np.arange(beats, dtype=np.int64) + 1) * n_out - 1) // n_in
        t = chain(t[last_in] + CONVERTER_LATENCY)
    if edge.depth > 0:
        t = chain(t + FIFO_LATENCY)
    return t


# ---- the engines' schedules (hw/*.py docstrings) ------------------------------------------------

def _mac_engine(arrivals, vectors, beats_per_vector, mac_beats, outputs, output_mac_beat, serial, latency, interval):
    """An MVAU or VVAU: a double-buffered input store (two banks of one vector each, filled one
    beat per cycle while a bank is free), an issue unit that walks ``mac_beats`` MAC beats per
    vector over a full bank (one per ``serial`` cycles) once the vector's last beat is in, and
    ``outputs`` output beats per vector, beat ``f`` ``latency`` cycles after the issue of its last
    MAC beat (``output_mac_beat[f]``), at most one per ``interval`` cycles."""
    arrivals = arrivals.reshape(vectors, beats_per_vector)
    taken = np.empty_like(arrivals)
    out = np.empty((vectors, outputs), dtype=np.int64)
    issue_end = []
    last_taken, last_out = NEVER, NEVER
    for v in range(vectors):
        bank_free = issue_end[v - 2] + 1 if v >= 2 else NEVER     # full flag clears the cycle after
        taken[v] = chain(np.maximum(arrivals[v], bank_free), 1, last_taken)
        last_taken = int(taken[v, -1])
        start = last_taken + 1                                      # full flag set the cycle after
        if v:
            start = max(start, issue_end[v - 1] + serial)
        out[v] = chain(start + output_mac_beat * serial + latency, interval, last_out)
        last_out = int(out[v, -1])
        issue_end.append(max(start + (mac_beats - 1) * serial, last_out - latency))
    return taken.reshape(-1), out.reshape(-1)


def _serial(params):
    return int(params["a_bits"]) if params.get("style", "bit_parallel") == "bit_serial" else 1


def _mvau(params, arrivals, latency, interval):
    weights = params["weights"]
    points, n, k = len(weights), len(weights[0]), len(weights[0][0])
    pe, simd = int(params["pe"]), int(params["simd"])
    nf, sf = n // pe, k // simd
    t = arrivals["i"]
    mac_beat = (np.arange(nf, dtype=np.int64) + 1) * points * sf - 1     # (neuron fold, point, synapse fold)
    taken, out = _mac_engine(t, t.size // sf, sf, points * nf * sf, nf, mac_beat, _serial(params), latency, interval)
    return {"i": taken}, out


def _vvau(params, arrivals, latency, interval):
    weights = params["weights"]
    channels, positions = len(weights), len(weights[0])
    pe, simd = int(params["pe"]), int(params["simd"])
    cf, kf = channels // pe, positions // simd
    t = arrivals["i"]
    per_window = positions * cf
    mac_beat = (np.arange(cf, dtype=np.int64) + 1) * kf - 1               # (channel fold, position fold)
    taken, out = _mac_engine(t, t.size // per_window, per_window, cf * kf, cf, mac_beat, _serial(params),
                             latency, interval)
    return {"i": taken}, out


def _window(params, arrivals, latency, interval):
    """`SlidingWindow`: output row ``oy`` starts ``latency`` cycles after the input beat that
    completes the rows it needs (the last row waits for the whole image), then one beat per cycle;
    input row ``r`` is taken once the line buffer of ``min(KH + SH, H)`` rows has room for it,
    i.e. once the reader is at an output row whose first needed row is past ``r - rows``."""
    h, w, c = int(params["height"]), int(params["width"]), int(params["channels"])
    kh, kw = _pair(params["kernel"])
    sh, sw = _pair(params.get("stride", 1))
    top, left, bottom, right = _padding(params.get("padding", 0))
    folds = c // int(params.get("simd", 1))
    ho, wo = (h + top + bottom - kh) // sh + 1, (w + left + right - kw) // sw + 1
    rows = min(kh + sh, h)
    row_beats = w * folds
    per_row_out = wo * kh * kw * folds
    arrivals = arrivals["i"].reshape(h, row_beats)
    taken = np.empty_like(arrivals)
    out = np.empty((ho, per_row_out), dtype=np.int64)
    written, last_taken, last_out = 0, NEVER, NEVER
    row_start = []                       # cycle from which the reader is at output row oy
    for oy in range(ho):
        row_start.append(NEVER if oy == 0 else last_out)
        win_top = oy * sh - top
        need = h if oy == ho - 1 else min(max(win_top + kh, 0), h)
        while written < need:
            r = written
            # row r goes in once the reader's first needed row is past r - rows
            reader = _first_reader_row(r, rows, sh, top, h)
            room = row_start[min(reader, oy)]
            taken[r] = chain(np.maximum(arrivals[r], room), 1, last_taken)
            last_taken = int(taken[r, -1])
            written += 1
        ready = (int(taken[need - 1, -1]) if need > 0 else 0) + latency     # need 0: rows of padding only
        out[oy] = chain(np.full(per_row_out, ready, dtype=np.int64), 1, last_out)
        last_out = int(out[oy, -1])
    return {"i": taken.reshape(-1)}, out.reshape(-1)


def _wide_window(params, arrivals, latency, interval):
    """`WideWindow` (hw/wide_window.py), cycle by cycle: its control (rows written, the reader's
    word per cycle over an output row's rows, the two-stage read pipeline, the column queue's
    occupancy and its output beats) transcribed from the hardware, with every output beat taken
    when offered. The first layer it serves is small (a few hundred input beats), so a loop over
    cycles costs little; ``latency`` (the unit's documented constant) is not needed here."""
    h, w = int(params["height"]), int(params["width"])
    kh, kw = _pair(params["kernel"])
    sh, sw = _pair(params.get("stride", 1))
    top, left, bottom, right = _padding(params.get("padding", 0))
    pixels, p_in = int(params.get("pixels", 1)), int(params.get("in_pixels", 1))
    ho, wo = (h + top + bottom - kh) // sh + 1, (w + left + right - kw) // sw + 1
    rows = max(kh + sh, 2 * kh + sh - 1 - top - bottom)
    words, beats = w // p_in, wo // pixels
    span, step = (pixels - 1) * sw + kw, pixels * sw
    row_step = w + left + right - (wo - pixels) * sw
    cap = max(step, row_step) + max(p_in + right + left, span, step) - 1
    clamp = lambda v: min(max(v, 0), h)         # noqa: E731
    arr = np.asarray(arrivals["i"], dtype=np.int64)
    taken, out = [], []
    written = wcol = first_needed = oy = wi = beat = 0
    win_top, need = -top, clamp(kh - top)
    s1_valid = s1_last = s2_valid = s2_last = out_valid = False
    occ, last_beat = left, beats == 1
    t = int(arr[0]) if arr.size else 0
    while len(out) < ho * beats:
        j = len(taken)
        wr = j < arr.size and arr[j] <= t and written < first_needed + rows
        row_done = wr and wcol == words - 1
        push_count = p_in + right + left if s2_last else p_in
        fire = out_valid
        tail = occ - ((row_step if last_beat else step) if fire else 0)
        push = s2_valid and tail + push_count <= cap
        move1 = s1_valid and (not s2_valid or push)
        issue = written >= need and (not s1_valid or move1)
        last_word, last_oy = wi == words - 1, oy == ho - 1
        image_done = issue and last_word and last_oy
        occ_next = tail + (push_count if push else 0)
        last_next = ((True if beats == 1 else (not last_beat and beat == beats - 2)) if fire else last_beat)
        if wr:
            taken.append(t)
            wcol = 0 if row_done else wcol + 1
        if fire:
            out.append(t)
            beat = 0 if last_beat else beat + 1
        written += int(row_done) - (h if image_done else 0)
        if issue:
            s1_valid, s1_last_next = True, last_word
            wi = 0 if last_word else wi + 1
            if last_word:
                next_top = win_top + sh
                oy, win_top = (0, -top) if last_oy else (oy + 1, next_top)
                need = clamp(kh - top) if last_oy else clamp(next_top + kh)
                first_needed = 0 if last_oy else clamp(next_top)
        elif move1:
            s1_valid, s1_last_next = False, s1_last
        else:
            s1_last_next = s1_last
        if move1:
            s2_valid, s2_last = True, s1_last
        elif push:
            s2_valid = False
        s1_last = s1_last_next
        occ, last_beat = occ_next, last_next
        out_valid = occ_next >= (row_step if last_next else max(span, step))
        t += 1
        if t > (int(arr[-1]) if arr.size else 0) + 64 * (h * words + ho * beats) + 1000:
            raise QfabError("the WideWindow model did not finish an image (a model error)")
    return {"i": np.asarray(taken, dtype=np.int64)}, np.asarray(out, dtype=np.int64)


def _first_reader_row(r, rows, sh, top, h):
    """The first output row at which the line buffer has room for input row ``r``:
    ``clamp(oy * SH - top, 0, H) + rows > r``."""
    oy = 0
    while min(max(oy * sh - top, 0), h) + rows <= r:
        oy += 1
    return oy


def _reduce(arrivals, window, folds, latency):
    """A per-channel reduction over windows of ``window`` positions (hw/pool.py): one input beat
    per cycle in ``(position, fold)`` order; fold ``f`` of a window leaves ``latency`` cycles after
    its last position's beat."""
    t = chain(arrivals)
    per = window * folds
    last = t.reshape(-1, per)[:, per - folds:]
    return {"i": t}, chain(last.reshape(-1) + latency)


def _pool(params, arrivals, latency, interval):
    return _reduce(arrivals["i"], int(params["window"]), int(params["channels"]) // int(params.get("simd", 1)),
                   latency)


def _global_pool(params, arrivals, latency, interval):
    return _reduce(arrivals["i"], int(params["height"]) * int(params["width"]),
                   int(params["channels"]) // int(params.get("simd", 1)), latency)


def _add(params, arrivals, latency, interval):
    """`Add`: takes a beat from both inputs together (from ``a`` alone when ``b`` is per-channel
    constants), the sum ``latency`` cycles later."""
    both = chain(np.maximum(arrivals["a"], arrivals["b"]) if "b" in arrivals else arrivals["a"])
    return {port: both for port in arrivals}, both + latency


def _pair(value):
    return (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _padding(value):
    if isinstance(value, int):
        return (value,) * 4
    if len(value) == 2:
        return (int(value[0]), int(value[1])) * 2
    return tuple(int(v) for v in value)


ENGINES = {"MVAU": _mvau, "VVAU": _vvau, "SlidingWindow": _window, "WideWindow": _wide_window, "MaxPool": _pool, "AvgPool": _pool,
           "GlobalAvgPool": _global_pool, "Add": _add}
