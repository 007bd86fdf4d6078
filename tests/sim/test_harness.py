# amaranth: UnusedElaboratable=no
"""The Verilator harness: a stream design compiled once, driven from preloaded memories, with
random input gaps and output stalls, a watchdog, and a build cache."""

import numpy as np
import pytest
from amaranth import Module, signed
from amaranth.back import verilog
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from qfab.sim.packing import pack_beats, unpack_beats
from qfab.sim.verilator import StalledError, run_stream

from ..hw.test_streams import _Fifo

pytestmark = pytest.mark.verilator

LAYOUT = data.ArrayLayout(signed(5), 3)


class _Sink(wiring.Component):
    """Takes 3 beats, then never again: a deadlock for the watchdog to find."""

    def __init__(self):
        super().__init__({"i": In(stream.Signature(LAYOUT)), "o": Out(stream.Signature(LAYOUT))})

    def elaborate(self, platform):
        m = Module()
        from amaranth import Signal
        count = Signal(range(4))
        m.d.comb += self.i.ready.eq(count < 3)
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += count.eq(count + 1)
        return m


@pytest.fixture(scope="module")
def fifo_verilog():
    return verilog.convert(_Fifo(LAYOUT, 4), name="qfab_top")


@pytest.mark.parametrize("stall", [0.0, 0.3])
def test_stream_through_fifo_bit_exact(fifo_verilog, stall):
    values = np.random.default_rng(1).integers(-16, 16, (3000, 3))
    res = run_stream(fifo_verilog, 15, 15, pack_beats(values, 5), len(values), stall=stall, seed=7)
    assert np.array_equal(unpack_beats(res.outputs, 3, 5, True), values)
    assert res.out_count == len(values) and not res.stalled
    assert all(b > a for a, b in zip(res.times, res.times[1:]))
    if stall == 0.0:
        assert res.cycles < len(values) + 10          # one beat per cycle through the FIFO
    else:
        assert res.cycles > 1.3 * len(values)          # the stalls really happened


@pytest.mark.slow
def test_second_run_uses_the_cache(fifo_verilog):
    words = pack_beats(np.zeros((10, 3), int), 5)
    run_stream(fifo_verilog, 15, 15, words, 10)
    again = run_stream(fifo_verilog, 15, 15, words, 10)
    assert not again.built


@pytest.mark.slow
def test_watchdog_stops_a_stalled_design():
    v = verilog.convert(_Sink(), name="qfab_top")
    words = pack_beats(np.ones((10, 3), int), 5)
    with pytest.raises(StalledError, match="no beat moved for 200 cycles after 3 input and 0 output beats"):
        run_stream(v, 15, 15, words, 10, watchdog=200)


@pytest.mark.slow
def test_trace_writes_a_waveform(fifo_verilog, tmp_path):
    words = pack_beats(np.arange(30).reshape(10, 3) % 16, 5)
    trace = tmp_path / "run.vcd"
    res = run_stream(fifo_verilog, 15, 15, words, 10, trace=trace)
    assert res.out_count == 10
    text = trace.read_text()
    assert "$enddefinitions" in text and "i__payload" in text


@pytest.mark.slow
def test_trace_writes_an_fst_waveform(fifo_verilog, tmp_path):
    from pylibfst import ffi, lib
    words = pack_beats(np.arange(30).reshape(10, 3) % 16, 5)
    trace = tmp_path / "run.fst"
    run_stream(fifo_verilog, 15, 15, words, 10, trace=trace)
    reader = lib.fstReaderOpen(str(trace).encode())
    assert reader != ffi.NULL
    try:
        assert lib.fstReaderGetVarCount(reader) > 10
        assert lib.fstReaderGetEndTime(reader) > 100
    finally:
        lib.fstReaderClose(reader)


def test_trace_format_is_checked(fifo_verilog, tmp_path):
    with pytest.raises(ValueError, match="must end in .vcd or .fst"):
        run_stream(fifo_verilog, 15, 15, [0], 1, trace=tmp_path / "run.txt")
