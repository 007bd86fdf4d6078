"""Simulation: Verilator + cocotb runs of compiled accelerators, compared with the reference."""
