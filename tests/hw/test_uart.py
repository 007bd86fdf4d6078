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


@pytest.mark.parametrize("divisor", [4, 9])
def test_transmitter_waveform(divisor):
    """Every bit lasts exactly ``divisor`` cycles and bytes follow each other without idle time."""
    tx = UARTTransmitter(divisor)
    payload = [0x55, 0x00, 0xFF, 0xA5]
    line = []

    async def sender(ctx):
        assert ctx.get(tx.tx) == 1
        await put_all(ctx, tx.i, payload)

    async def watch(ctx):
        async for _, _, bit in ctx.tick().sample(tx.tx):
            line.append(bit)

    sim = Simulator(tx)
    sim.add_clock(1e-6)
    sim.add_testbench(sender)
    sim.add_process(watch)
    sim.run_until(1e-6 * (divisor * 10 * len(payload) + 20))
    # the first byte is taken in the first cycle; its start bit is on the line from the second
    expected = [1] + [bit for byte in payload for bit in _bits(byte) for _ in range(divisor)]
    expected += [1] * (len(line) - len(expected))
    assert line == expected


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


@pytest.mark.parametrize("error", [-0.03, 0.03])
def test_receiver_tolerates_a_baud_rate_error(error):
    """A sender 3 % slow or fast, at any phase against the clock: sampling in the middle of each bit
    still reads every byte (sampling at the bit edges would not)."""
    divisor = 16
    period = divisor * (1 + error)
    rng = random.Random(int(error * 100))
    payload = [rng.randrange(256) for _ in range(12)] + [0x00, 0xFF]
    edges, t = [], rng.random() * divisor              # (time in cycles, level) of the sender's line
    for byte in payload:
        for k, bit in enumerate(_bits(byte)):
            edges.append((t + k * period, bit))
        t += (10 + rng.choice([0, 0, 0.5, 2])) * period
    rx = UARTReceiver(divisor)
    got, framing = [], []

    async def line(ctx):
        cycle = 0
        for when, bit in edges:
            while cycle < when:
                await ctx.tick()
                cycle += 1
            ctx.set(rx.rx, bit)

    async def watch(ctx):
        ctx.set(rx.o.ready, 1)
        async for _, _, valid, payload_, bad in ctx.tick().sample(rx.o.valid, rx.o.payload, rx.framing_error):
            if valid:
                got.append(payload_)
            if bad:
                framing.append(len(got))

    sim = Simulator(rx)
    sim.add_clock(1e-6)
    sim.add_testbench(line)
    sim.add_process(watch)
    sim.run_until(1e-6 * (t + 4 * divisor))
    assert framing == []
    assert got == payload


def test_receiver_overrun():
    """A byte that arrives while ``o`` still holds the previous one replaces it and pulses ``overrun``."""
    divisor = 4
    rx = UARTReceiver(divisor)
    overruns = []

    async def line(ctx):
        for byte in (0x11, 0x22):
            for bit in _bits(byte):
                ctx.set(rx.rx, bit)
                await ctx.tick().repeat(divisor)
        await ctx.tick().repeat(3 * divisor)
        assert ctx.get(rx.o.valid) and ctx.get(rx.o.payload) == 0x22
        ctx.set(rx.o.ready, 1)
        await ctx.tick()
        assert not ctx.get(rx.o.valid)

    async def watch(ctx):
        async for _, _, overrun in ctx.tick().sample(rx.overrun):
            if overrun:
                overruns.append(overrun)

    sim = Simulator(rx)
    sim.add_clock(1e-6)
    sim.add_testbench(line)
    sim.add_process(watch)
    sim.run_until(1e-6 * divisor * 30)
    assert overruns == [1]
