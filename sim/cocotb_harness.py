"""The cocotb side of a harness run: start the clock, release reset, wait for the end.

Python is idle while the design runs (the harness streams from and to memories). At the end, the
design's ``observe`` port (FIFO fill levels, to name a stalled stage), if it has one, and the
harness's ``counters`` (cycles each bit of the design's ``activity`` port was set) are read.
"""

import json
import os

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, RisingEdge


def _read(dut, name):
    """A port of the design under test as an int (None if absent or unknown)."""
    try:
        handle = getattr(dut.dut, name)
        return int(handle.value)
    except (AttributeError, ValueError):
        return None


@cocotb.test()
async def run_harness(dut):
    if os.environ.get("QFAB_INTERNAL_CLOCK") != "1":
        cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 1
    await ClockCycles(dut.clk, 3)
    dut.rst.value = 0
    await RisingEdge(dut.finished)
    result = {
        "cycles": int(dut.cycle.value), "in_count": int(dut.in_count.value),
        "out_count": int(dut.out_count.value), "first_in_cycle": int(dut.first_in_cycle.value),
        "stalled": bool(int(dut.stalled.value)), "done": bool(int(dut.done.value)),
        "gap_cycles": int(dut.gap_cycles.value), "hold_cycles": int(dut.hold_cycles.value),
    }
    result["observe"] = _read(dut, "observe")
    result["counters"] = int(dut.counters.value) if os.environ.get("QFAB_ACTIVITY") == "1" else None
    with open(os.environ["QFAB_RESULT"], "w") as f:
        json.dump(result, f)
