# amaranth: UnusedElaboratable=no
import random

import pytest
from amaranth.hdl import Module
from amaranth.sim import Simulator

from qfab.hw.uart import UARTReceiver, UARTTransmitter

from .streams import get_all, put_all


def test_init():
    assert UARTTransmitter(4).divisor == 4
    assert UARTReceiver(100).divisor == 100


@pytest.mark.parametrize("divisor", [3, 0, "8", True, 4.0])
def test_init_wrong_divisor(divisor):
    with pytest.raises(TypeError, match="Divisor must be an integer of at least 4"):
        UARTTransmitter(divisor)
    with pytest.raises(TypeError, match="Divisor must be an integer of at least 4"):
        UARTReceiver(divisor)


@pytest.mark.parametrize("divisor", [4, 5, 13])
def test_loopback(divisor):
    """Bytes through tx -> rx arrive unchanged, with gaps on the sending side and stalls on the receiving side."""
    m = Module()
    m.submodules.tx = tx = UARTTransmitter(divisor)
    m.submodules.rx = rx = UARTReceiver(divisor)
    m.d.comb += rx.rx.eq(tx.tx)
    payload = [random.Random(divisor).randrange(256) for _ in range(40)] + [0x00, 0xFF, 0xA5]
    got = []

    async def sender(ctx):
        await put_all(ctx, tx.i, payload, gap_prob=0.3, seed=divisor)

    async def receiver(ctx):
        got.extend(await get_all(ctx, rx.o, len(payload), stall_prob=0.2, seed=divisor + 1))

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(sender)
    sim.add_testbench(receiver)
    sim.run_until(1e-6 * divisor * 10 * (len(payload) + 20) * 2)
    assert got == payload


def _bits(byte, stop=1):
    return [0] + [(byte >> i) & 1 for i in range(8)] + [stop]


@pytest.mark.parametrize("divisor", [4, 7])
def test_receiver_framing_error_and_glitch(divisor):
    """A low stop bit gives no byte and a framing-error pulse; a short low glitch is not a start bit."""
    rx = UARTReceiver(divisor)
    events = {"framing": 0, "bytes": []}

    async def line(ctx):
        ctx.set(rx.rx, 1)
        await ctx.tick().repeat(10)
        ctx.set(rx.rx, 0)                       # a glitch shorter than half a bit
        await ctx.tick()
        ctx.set(rx.rx, 1)
        await ctx.tick().repeat(3 * divisor)
        for byte, stop in ((0x3C, 0), (0x5A, 1)):
            for bit in _bits(byte, stop):
                ctx.set(rx.rx, bit)
                await ctx.tick().repeat(divisor)
            ctx.set(rx.rx, 1)
            await ctx.tick().repeat(2 * divisor)
        await ctx.tick().repeat(4 * divisor)

    async def watch(ctx):
        ctx.set(rx.o.ready, 1)
        async for _, _, valid, payload, framing in ctx.tick().sample(rx.o.valid, rx.o.payload, rx.framing_error):
            if valid:
                events["bytes"].append(payload)
            events["framing"] += framing

    sim = Simulator(rx)
    sim.add_clock(1e-6)
    sim.add_testbench(line)
    sim.add_process(watch)
    sim.run_until(1e-6 * divisor * 60)
    assert events["framing"] == 1
    assert events["bytes"] == [0x5A]
