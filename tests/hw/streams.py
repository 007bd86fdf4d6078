"""Stream drivers for Amaranth async testbenches, shared by every hardware test.

`put_all` drives a ``stream.Signature`` producer side with random ``valid`` gaps; `get_all`
consumes with random ``ready`` stalls and returns what arrived, in order; `stream_through` runs a
component with one input and one output stream under both. Payloads are Python
values the payload layout can cast (an int, or a list of ints for an ``ArrayLayout``).
"""

import random

from amaranth.lib import data
from amaranth.sim import Simulator

__all__ = ["put_all", "get_all", "payload_value", "stream_through"]


def payload_value(value):
    """A sampled payload as plain Python: a list of ints for an array, a dict for a struct."""
    if isinstance(value, data.Const):
        layout = value.shape()
        if isinstance(layout, data.ArrayLayout):
            return [payload_value(value[i]) for i in range(layout.length)]
        if isinstance(layout, data.StructLayout):
            return {name: payload_value(value[name]) for name, _ in layout}
    return value


async def put_all(ctx, stream, payloads, *, gap_prob=0.0, seed=0):
    """Send every payload in order; before each beat, idle with probability ``gap_prob``."""
    rng = random.Random(seed)
    for payload in payloads:
        while rng.random() < gap_prob:
            await ctx.tick()
        ctx.set(stream.valid, 1)
        ctx.set(stream.payload, payload)
        await ctx.tick().until(stream.ready)
        ctx.set(stream.valid, 0)


async def get_all(ctx, stream, count, *, stall_prob=0.0, seed=1):
    """Receive ``count`` payloads; before each beat, hold ``ready`` low with ``stall_prob``."""
    rng = random.Random(seed)
    received = []
    for _ in range(count):
        while rng.random() < stall_prob:
            ctx.set(stream.ready, 0)
            await ctx.tick()
        ctx.set(stream.ready, 1)
        payload, = await ctx.tick().sample(stream.payload).until(stream.valid)
        received.append(payload_value(payload))
    ctx.set(stream.ready, 0)
    return received


def stream_through(dut, payloads, count, *, gap_prob=0.0, stall_prob=0.0, seed=0, before=None,
                   monitor=None):
    """Simulate ``dut``: send ``payloads`` into ``dut.i`` with input gaps, take ``count`` from
    ``dut.o`` with output stalls; return what arrived. ``before``: an async ``f(ctx)`` the producer
    awaits first (set a control input, load weights); ``monitor``: an async ``f(ctx)`` run beside
    them for as long as they run (watch internal signals)."""
    got = []

    async def producer(ctx):
        if before is not None:
            await before(ctx)
        await put_all(ctx, dut.i, payloads, gap_prob=gap_prob, seed=seed)

    async def consumer(ctx):
        got.extend(await get_all(ctx, dut.o, count, stall_prob=stall_prob, seed=seed + 1))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    if monitor is not None:
        sim.add_testbench(monitor, background=True)
    sim.run()
    return got
