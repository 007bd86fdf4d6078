# amaranth: UnusedElaboratable=no
"""The shared stream drivers themselves: through a FIFO, nothing lost, duplicated or reordered."""

from amaranth import Module, unsigned
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from .streams import stream_through


class _Fifo(wiring.Component):
    def __init__(self, layout, depth):
        self._layout = layout
        self._depth = depth
        super().__init__({"i": In(stream.Signature(layout)), "o": Out(stream.Signature(layout))})

    def elaborate(self, platform):
        m = Module()
        m.submodules.fifo = q = fifo.SyncFIFOBuffered(width=self._layout.size, depth=self._depth)
        m.d.comb += [
            q.w_data.eq(self.i.payload), q.w_en.eq(self.i.valid), self.i.ready.eq(q.w_rdy),
            self.o.payload.eq(q.r_data), self.o.valid.eq(q.r_rdy), q.r_en.eq(self.o.ready),
        ]
        return m


def test_drivers_through_fifo():
    layout = data.ArrayLayout(unsigned(4), 3)
    dut = _Fifo(layout, 4)
    sent = [[i % 16, (3 * i) % 16, (7 * i) % 16] for i in range(50)]
    got = stream_through(dut, sent, len(sent), gap_prob=0.4, stall_prob=0.4)
    assert got == sent
