"""An 8N1 UART as two stream components: bytes in on a stream, bits out on a pin, and back."""

from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

__all__ = ["UARTTransmitter", "UARTReceiver"]


def _check_divisor(divisor):
    if not isinstance(divisor, int) or isinstance(divisor, bool) or divisor < 4:
        raise TypeError(f"Divisor must be an integer of at least 4 (clock cycles per bit), not {divisor!r}")


class UARTTransmitter(wiring.Component):
    """Sends each byte of ``i`` on ``tx``: a start bit (0), 8 data bits LSB first, a stop bit (1).

    Parameters
    ----------
    divisor : int
        Clock cycles per bit (clock frequency / baud rate), at least 4.

    Members
    -------
    i : ``In(stream.Signature(8))``
        Bytes to send. A byte is taken when the line is idle or in the last cycle of the previous
        byte's stop bit; ``i.ready`` depends only on registers.
    tx : ``Out(1, init=1)``
        The line, idle high.

    Latency: the start bit begins the cycle after the byte is taken; every bit lasts exactly
    ``divisor`` cycles. Throughput: one byte per ``10 * divisor`` cycles when ``i`` is never empty.

    Raises
    ------
    TypeError
        If ``divisor`` is not an integer of at least 4.
    """

    def __init__(self, divisor: int) -> None:
        _check_divisor(divisor)
        self._divisor = divisor
        super().__init__({"i": In(stream.Signature(8)), "tx": Out(1, init=1)})

    divisor = property(lambda self: self._divisor)

    def elaborate(self, platform):
        m = Module()
        shreg = Signal(10, init=0x3FF)        # stop, data[7:0], start: shifted out LSB first
        bits = Signal(range(11))
        timer = Signal(range(self._divisor))
        # a byte is taken when the line is idle or in the last cycle of a stop bit:
        # ``(bits == 0) | ((bits == 1) & (timer == 0))``, kept in a register from the next state
        # (the comparison of the timer with zero, four LUT levels, began the slowest path of a
        # UP5K design: through the framer's byte counter to its state)
        ready = Signal(init=1)
        zero = Signal(init=1)               # timer == 0
        m.d.comb += [self.tx.eq(shreg[0]), self.i.ready.eq(ready)]
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [shreg.eq(Cat(0, self.i.payload, 1)), bits.eq(10), timer.eq(self._divisor - 1),
                         zero.eq(0), ready.eq(0)]
        with m.Elif(bits != 0):
            with m.If(zero):
                m.d.sync += [shreg.eq(Cat(shreg[1:], 1)), bits.eq(bits - 1), timer.eq(self._divisor - 1),
                             zero.eq(0), ready.eq(bits == 1)]
            with m.Else():
                m.d.sync += [timer.eq(timer - 1), zero.eq(timer == 1), ready.eq((bits == 1) & (timer == 1))]
        with m.Else():
            m.d.sync += ready.eq(1)
        return m


class UARTReceiver(wiring.Component):
    """Receives bytes from ``rx`` (8N1) onto ``o``, sampling each bit in its middle.

    ``rx`` passes a two-flop synchronizer first. A start bit must still be low at its middle (else
    it was a glitch). A byte whose stop bit is low is not sent; ``framing_error`` pulses instead.
    A byte arriving while ``o`` still holds the previous one replaces it and pulses ``overrun``.

    Parameters
    ----------
    divisor : int
        Clock cycles per bit, at least 4.

    Members
    -------
    rx : ``In(1, init=1)``
        The line, idle high; asynchronous to the clock.
    o : ``Out(stream.Signature(8))``
        Received bytes.
    framing_error : ``Out(1)``
        Pulses for one cycle when a byte's stop bit is low (the byte is dropped).
    overrun : ``Out(1)``
        Pulses for one cycle when a byte replaces one ``o`` had not delivered yet.

    Latency: a byte is valid on ``o`` about ``divisor / 2 + 3`` cycles after its stop bit begins
    (the synchronizer's two cycles, then the middle of the stop bit). The receiver is ready for
    the next start bit from the middle of the stop bit, so it keeps up with a sender whose clock
    is faster by a few percent; sampling in the middle of each bit tolerates a baud-rate error
    of about 3.5 % at ``divisor=16`` (less at small divisors, where a cycle is a larger part of a bit).

    Raises
    ------
    TypeError
        If ``divisor`` is not an integer of at least 4.
    """

    def __init__(self, divisor: int) -> None:
        _check_divisor(divisor)
        self._divisor = divisor
        super().__init__({"rx": In(1, init=1), "o": Out(stream.Signature(8)),
                          "framing_error": Out(1), "overrun": Out(1)})

    divisor = property(lambda self: self._divisor)

    def elaborate(self, platform):
        m = Module()
        rx = Signal(init=1)
        m.submodules.sync_rx = FFSynchronizer(self.rx, rx, init=1)
        timer = Signal(range(self._divisor))
        bits = Signal(range(10))
        shreg = Signal(8)
        m.d.sync += [self.framing_error.eq(0), self.overrun.eq(0)]
        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)

        def deliver():
            with m.If(rx):
                m.d.sync += [self.o.payload.eq(shreg), self.o.valid.eq(1),
                             self.overrun.eq(self.o.valid & ~self.o.ready)]
            with m.Else():
                m.d.sync += self.framing_error.eq(1)

        with m.FSM():
            with m.State("IDLE"):
                with m.If(~rx):
                    m.d.sync += timer.eq(self._divisor // 2 - 1)
                    m.next = "START"
            with m.State("START"):
                with m.If(timer == 0):
                    with m.If(rx):
                        m.next = "IDLE"                  # a glitch
                    with m.Else():
                        m.d.sync += [timer.eq(self._divisor - 1), bits.eq(8)]
                        m.next = "DATA"
                with m.Else():
                    m.d.sync += timer.eq(timer - 1)
            with m.State("DATA"):
                with m.If(timer == 0):
                    m.d.sync += [timer.eq(self._divisor - 1), bits.eq(bits - 1)]
                    with m.If(bits == 0):
                        deliver()
                        m.next = "STOP"
                    with m.Else():
                        m.d.sync += shreg.eq(Cat(shreg[1:], rx))
                with m.Else():
                    m.d.sync += timer.eq(timer - 1)
            with m.State("STOP"):
                # wait for the line to go idle (a framing error may leave it low: a break)
                with m.If(rx):
                    m.next = "IDLE"
        return m
