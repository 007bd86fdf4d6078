"""The cocotb side of a harness run: start the clock, release reset, wait for the end.

Python is idle while the design runs (the harness streams from and to memories). On a watchdog
stop, the FIFO status signals the design exposes are read so the error can name the stage.
"""

import json
import os

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, RisingEdge


def _status(dut):
    """Every ``fifo_*`` status port of the design under test, by name."""
    found = {}
    top = dut.dut
    for handle in top:
        name = handle._name
        if name.startswith("observe") or name.startswith("fifo_"):
            try:
                found[name] = int(handle.value)
            except ValueError:
                found[name] = None
    return found


@cocotb.test()
async def run_harness(dut):
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 1
    await ClockCycles(dut.clk, 3)
    dut.rst.value = 0
    await RisingEdge(dut.finished)
    result = {
        "cycles": int(dut.cycle.value), "in_count": int(dut.in_count.value),
        "out_count": int(dut.out_count.value), "first_in_cycle": int(dut.first_in_cycle.value),
        "stalled": bool(int(dut.stalled.value)), "done": bool(int(dut.done.value)),
    }
    if result["stalled"]:
        result["status"] = _status(dut)
    with open(os.environ["QFAB_RESULT"], "w") as f:
        json.dump(result, f)
