"""The cocotb side of `qfab.boards.link_sim`: a UART model on the host side of ``qfab_core`` and
the real host driver, running in a bridged thread, talking through it.
"""

import dataclasses
import json
import os

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.task import bridge, resume
from cocotb.triggers import ClockCycles, Event, FallingEdge, First, Timer
from cocotb.utils import get_sim_time

from qfab.compiler.buildfolder import Build

from .host import Device, LinkError, Transport
from .link_sim import FaultyTransport


class UartModel:
    """8N1 at ``bit_ns`` per bit: ``send`` drives ``rx``; a monitor samples ``tx`` into ``received``."""

    def __init__(self, rx, tx, bit_ns):
        self.rx, self.tx, self.bit_ns = rx, tx, bit_ns
        self.received = bytearray()
        self.arrived = Event()
        self.framing_errors = 0

    async def send(self, data, cut_after=None):
        for k, byte in enumerate(data):
            if cut_after is not None and k >= cut_after:
                return
            for bit in [0] + [(byte >> i) & 1 for i in range(8)] + [1]:
                self.rx.value = bit
                await Timer(self.bit_ns, unit="ns")

    async def monitor(self):
        while True:
            await FallingEdge(self.tx)
            await Timer(self.bit_ns // 2, unit="ns")
            if int(self.tx.value) != 0:
                continue                                    # a glitch, not a start bit
            byte = 0
            for i in range(8):
                await Timer(self.bit_ns, unit="ns")
                byte |= int(self.tx.value) << i
            await Timer(self.bit_ns, unit="ns")
            if int(self.tx.value) != 1:
                self.framing_errors += 1
            self.received.append(byte)
            self.arrived.set()


class SimTransport(Transport):
    """The driver's transport into the simulator; times are simulated seconds."""

    name = "simulated UART"

    def __init__(self, uart, faults):
        self.uart = uart
        self.faults = {int(k): kind for k, kind in faults}
        self.frames = 0

    @resume
    async def write(self, data):
        kind = self.faults.get(self.frames)
        self.frames += 1
        if kind == "flip":
            data = bytearray(data)
            data[5 + (len(data) - 9) // 2 if len(data) > 9 else -1] ^= 0xFF   # a payload byte, or a CRC byte
            await self.uart.send(bytes(data))
        elif kind == "cut":
            await self.uart.send(data, cut_after=len(data) // 2)
        else:
            await self.uart.send(data)

    @resume
    async def read(self, size, timeout):
        if not self.uart.received:
            self.uart.arrived.clear()
            await First(self.uart.arrived.wait(), Timer(max(1, int(timeout * 1e9)), unit="ns"))
        out = bytes(self.uart.received[:size])
        del self.uart.received[:size]
        return out

    def clock(self):
        return get_sim_time(unit="ns") * 1e-9


def _host(transport, job):
    """What ``qfab run`` does with a board, against the simulated one; with ``keep_going``, a
    caller that catches an input's error and goes on with the same `Device`."""
    build = Build.load(job["build"])
    if job.get("result_faults"):
        transport = FaultyTransport(transport, job["result_faults"], delay=1.5 * job["timeout_s"])
    device = Device(transport, timeout=job["timeout_s"], retries=job["retries"])
    failed = {}
    try:
        info = device.check(build.manifest, build.verilog)
        inputs = np.load(job["inputs"])
        if job.get("keep_going"):
            out = np.zeros((len(inputs), info.out_elements), np.int64)
            for k, codes in enumerate(inputs):
                try:
                    out[k] = device.infer(codes)
                except LinkError as e:
                    failed[k] = f"input {k}: {e}"
        else:
            out = device.run(inputs)
    except LinkError as e:
        return {"error": str(e), "stats": dataclasses.asdict(device.stats)}
    np.save(job["outputs"], out)
    return {"info": dataclasses.asdict(info), "stats": dataclasses.asdict(device.stats), "failed": failed,
            "applied": getattr(transport, "applied", [])}


@cocotb.test()
async def host_link(dut):
    job = json.loads(open(os.environ["QFAB_LINK_JOB"]).read())
    clock_ns = job["clock_ns"]
    Clock(dut.clk, clock_ns, unit="ns").start()
    dut.rx.value = 1
    dut.rst.value = 1
    await ClockCycles(dut.clk, 4)
    dut.rst.value = 0
    await ClockCycles(dut.clk, 4)
    uart = UartModel(dut.rx, dut.tx, job["divisor"] * clock_ns)
    cocotb.start_soon(uart.monitor())
    result = await bridge(_host)(SimTransport(uart, job["faults"]), job)
    result["cycles"] = int(get_sim_time(unit="ns") // clock_ns)
    result["framing_errors"] = uart.framing_errors
    with open(job["result"], "w") as f:
        json.dump(result, f)
