"""A stand-in for `qfab.boards.gateware.core.InferenceCore` with the interface `qfab.boards.gateware.top.BoardTop`
expects: the UART looped back (tx = rx), busy while a start bit or data is on the line, activity
toggling with every falling edge of rx. Board tops and bitstream builds of it take seconds."""

from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from qfab.boards.gateware.link import Status


class EchoCore(wiring.Component):
    rx: In(1, init=1)
    tx: Out(1, init=1)
    status: Out(Status)

    def synthesis_files(self):
        return {}

    def elaborate(self, platform):
        m = Module()
        last = Signal(init=1)
        m.d.sync += last.eq(self.rx)
        with m.If(last & ~self.rx):
            m.d.sync += self.status.activity.eq(~self.status.activity)
        m.d.comb += [self.tx.eq(self.rx), self.status.busy.eq(~self.rx)]
        return m
