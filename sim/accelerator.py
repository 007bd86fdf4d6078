"""Simulating a compiled accelerator (a build folder from ``qfab compile``) in Verilator.

Reads the build's manifest for how inputs and outputs are packed into stream beats, streams a
batch of integer codes through the harness, and returns the output codes with cycle statistics:
latency of the first result, steady-state initiation interval (cycles between consecutive
results) and its ratio to the lowering's analytical bound.
"""

from dataclasses import dataclass

import numpy as np

from qfab.compiler.buildfolder import Build, Manifest

from .packing import pack_beats, unpack_beats
from .verilator import StalledError, run_stream

__all__ = ["Build", "SimResult", "load_build", "simulate", "StalledError"]


def load_build(folder) -> Build:
    """The build in ``folder`` (`Build.load`)."""
    return Build.load(folder)


@dataclass
class SimResult:
    outputs: np.ndarray          # (B, *output shape) integer codes, channels-last
    cycles: int
    latency: int                 # first input beat to the last output beat of the first result
    interval: float              # steady-state cycles between results (median)
    bound: int                   # the lowering's analytical initiation interval
    build_seconds: float
    run_seconds: float
    built: bool
    times: list
    stages: dict                 # "stage.port" -> {"fire": cycles, "wait": cycles}
    gap_cycles: int = 0          # cycles the harness's random input gaps held back a beat
    hold_cycles: int = 0         # cycles its random output stalls held back a valid beat

    @property
    def ratio(self):
        return self.interval / self.bound if self.bound else float("nan")


def simulate(build: Build, codes, *, stall: float = 0.0, seed: int = 1, watchdog: int | None = None, trace=None,
             log=print) -> SimResult:
    """Run ``codes`` (``(B, *input shape)``, channels-last integer codes) through ``build``."""
    manifest = build.manifest
    i, o = manifest.input, manifest.output
    codes = np.asarray(codes, dtype=np.int64)
    batch = len(codes)
    flat = codes.reshape(batch * i.beats, i.per_beat)
    words = pack_beats(flat, i.bits)
    n_out = batch * o.beats
    bound = manifest.initiation_interval
    if watchdog is None:
        watchdog = max(10000, 20 * bound + 20 * manifest.latency_estimate)
    try:
        res = run_stream(build.verilog, i.per_beat * i.bits, o.per_beat * o.bits, words, n_out,
                         stall=stall, seed=seed, watchdog=watchdog, trace=trace, log=log,
                         activity_bits=manifest.activity_bits)
    except StalledError as e:
        raise StalledError(_describe_stall(manifest, e.result, batch), e.result) from None
    values = unpack_beats(res.outputs, o.per_beat, o.bits, o.signed)
    outputs = values.reshape(batch, *o.shape)
    per = o.beats
    done = [res.times[(k + 1) * per - 1] for k in range(batch)]
    gaps = np.diff(done)
    steady = gaps[len(gaps) // 4:] if len(gaps) >= 4 else gaps
    interval = float(np.median(steady)) if len(steady) else float("nan")
    return SimResult(outputs=outputs, cycles=res.cycles, latency=done[0] - res.first_in_cycle, interval=interval,
                     bound=bound, build_seconds=res.build_seconds, run_seconds=res.run_seconds, built=res.built,
                     times=done, stages=_fields(res.counters, manifest.counters_layout),
                     gap_cycles=res.gap_cycles, hold_cycles=res.hold_cycles)


def _fields(value, layout):
    """Decode a struct port value with a manifest's layout (``{name: {sub: FieldSlice}}``)."""
    if value is None:
        return {}
    return {name: {sub: part.extract(value) for sub, part in subs.items()} for name, subs in layout.items()}


def _describe_stall(manifest: Manifest, result, batch):
    """Name the stage whose FIFO is full (the stage after it is stuck) or empty (starved)."""
    lines = [f"pipeline stalled after {result.in_count} input beats and {result.out_count} output beats "
             f"(of {batch} inferences); no beat moved for the watchdog period."]
    levels = _fields(result.observe, manifest.observe_layout)
    fifos = {f.name: f for f in manifest.fifos}
    full, empty = [], []
    for name, value in levels.items():
        fifo = fifos.get(name)
        if fifo is None:
            continue
        level = value["level"]
        if level >= fifo.depth:
            full.append(f"FIFO {name} ({fifo.src} -> {fifo.dst}, depth {fifo.depth}) is full: "
                        f"{fifo.dst.split('.')[0]!r} stopped taking input")
        elif level == 0:
            empty.append(f"FIFO {name} ({fifo.src} -> {fifo.dst}) is empty: "
                         f"{fifo.src.split('.')[0]!r} produces nothing")
    lines += full + empty
    if not full and not empty:
        lines.append("no FIFO status was available to name the stage")
    return "\n  ".join(lines)
