"""Synthesis benchmark of the MAC arrays against a plain ``acc + sum(w * a)`` array.

Synthesizes PE x SIMD arrays at w/a = 1/1, 2/2, 4/4, 8/8 with Yosys (``synth_ice40``,
``synth_ecp5``) and prints LUTs, FFs, DSPs, MACs per cycle and MACs per cycle per 1000 LUTs.
Weights are run-time inputs in every design (no constant folding), so the comparison is fair.

    python bench/mac_array.py [--quick] [--out FILE.json] [--jobs N] [--timeout S]

The plain 16x16 arrays at 4 and 8 bits take Yosys many minutes (ABC on ~20k-70k LUTs).
"""

import argparse
import concurrent.futures
import json
import os
import sys
import time

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from qfab.boards import synth
from qfab.hw._arith import acc_width, code_range
from qfab.hw.mac import Encoding, MacArray, MacStyle

SERIAL_MAX_BITS = 8 # bit-serial arrays take activations of up to 8 bits, precision set at run time
BEATS = 32          # dot products of 32 beats (fan-in 32 * SIMD) size the accumulators


class PlainArray(wiring.Component):
    """The obvious array: ``acc += sum(w * a)`` per PE, with ``*`` on input signals."""

    def __init__(self, pe, simd, w_shape, a_shape, acc_bits, beats):
        self._pe, self._simd, self._acc_bits, self._beats = pe, simd, acc_bits, beats
        layout = data.StructLayout({"w": data.ArrayLayout(data.ArrayLayout(w_shape, simd), pe),
                                    "a": data.ArrayLayout(a_shape, simd)})
        super().__init__({"i": In(stream.Signature(layout)),
                          "o": Out(stream.Signature(data.ArrayLayout(signed(acc_bits), pe)))})

    def elaborate(self, platform):
        m = Module()
        en = ~self.o.valid | self.o.ready
        beat = Signal(range(self._beats))
        last = beat == self._beats - 1
        m.d.comb += self.i.ready.eq(en)
        with m.If(self.i.valid & en):
            m.d.sync += beat.eq(Mux(last, 0, beat + 1))
        with m.If(en):
            m.d.sync += self.o.valid.eq(self.i.valid & last)
        for p in range(self._pe):
            acc = Signal(signed(self._acc_bits))
            total = acc + sum(self.i.payload.w[p][s] * self.i.payload.a[s]
                              for s in range(self._simd))
            with m.If(self.i.valid & en):
                m.d.sync += acc.eq(Mux(last, 0, total))
                with m.If(last):
                    m.d.sync += self.o.payload[p].eq(total)
        return m


def _encodings(bits):
    """Signed weights and signed activations: the reference configuration of the plain array."""
    return Encoding.SIGNED, Encoding.SIGNED


def _acc_bits(simd, bits, w_enc, a_enc):
    w_lo, w_hi = code_range(bits, w_enc)
    a_lo, a_hi = code_range(bits, a_enc)
    return acc_width(BEATS * simd * max(-w_lo, w_hi) * max(-a_lo, a_hi))


def build(design, pe, simd, bits):
    """(component, MACs per cycle at this precision)."""
    w_enc, a_enc = _encodings(bits)
    if design == "binary":
        w_enc = a_enc = Encoding.BIPOLAR
    kwargs = dict(w_bits=bits, w_encoding=w_enc, a_bits=bits, a_encoding=a_enc, beats=BEATS)
    if design == "plain":
        w_shape = signed(bits) if w_enc is Encoding.SIGNED else unsigned(bits)
        a_shape = signed(bits) if a_enc is Encoding.SIGNED else unsigned(bits)
        acc_bits = _acc_bits(simd, bits, w_enc, a_enc)
        return PlainArray(pe, simd, w_shape, a_shape, acc_bits, BEATS), pe * simd
    if design in ("parallel", "binary"):
        return MacArray(pe, simd, **kwargs), pe * simd
    if design == "parallel_dsp":
        return MacArray(pe, simd, use_dsp=True, **kwargs), pe * simd
    if design == "serial":
        # one array for every activation precision up to 8 bits, run at precision `bits`
        kwargs.update(a_bits=SERIAL_MAX_BITS)
        return MacArray(pe, simd, style=MacStyle.BIT_SERIAL, **kwargs), pe * simd / bits
    raise ValueError(design)


def synthesize(job, timeout=None):
    design, pe, simd, bits, family = job
    top, macs = build(design, pe, simd, bits)
    start = time.time()
    try:
        total = synth.synthesize(top, family, timeout=timeout, log=None).total
    except synth.SynthesisTimeout:
        return dict(design=design, pe=pe, simd=simd, bits=bits, family=family, luts=None,
                    ffs=None, luts_per_lane=None, dsps=None, macs_per_cycle=macs,
                    macs_per_klut=None, seconds=round(time.time() - start, 1))
    # an ECP5 CCU2C is two LUT4s of carry logic of its own
    luts = total.luts + (2 * total.carries if family == "ecp5" else 0)
    return dict(design=design, pe=pe, simd=simd, bits=bits, family=family, luts=luts, ffs=total.ffs,
                luts_per_lane=round(luts / (pe * simd), 1),
                dsps=total.dsps, macs_per_cycle=macs,
                macs_per_klut=round(1000 * macs / luts, 1) if luts else None,
                seconds=round(time.time() - start, 1))


def jobs_for(quick):
    shapes = [(8, 8)] if quick else [(8, 8), (16, 16)]
    families = ["ice40"] if quick else ["ice40", "ecp5"]
    jobs = []
    for family in families:
        for pe, simd in shapes:
            for bits in (1, 2, 4, 8):
                designs = ["plain", "parallel", "serial"]
                if family == "ecp5":
                    designs.append("parallel_dsp")
                if bits == 1:
                    designs.append("binary")
                jobs += [(d, pe, simd, bits, family) for d in designs]
    return jobs


def print_table(results):
    header = (f"{'family':6} {'PExSIMD':8} {'w/a':4} {'design':13} {'LUTs':>7} {'FFs':>6} "
              f"{'DSPs':>5} {'LUT/lane':>8} {'MAC/cyc':>8} {'MAC/cyc/kLUT':>13} {'vs plain':>9}")
    print(header)
    print("-" * len(header))
    plain = {(r["family"], r["pe"], r["simd"], r["bits"]): r for r in results
             if r["design"] == "plain"}
    for r in results:
        if r["luts"] is None:
            print(f"{r['family']:6} {r['pe']}x{r['simd']:<6} {r['bits']}/{r['bits']:<2} "
                  f"{r['design']:13} (synthesis timed out after {r['seconds']} s)")
            continue
        base = plain.get((r["family"], r["pe"], r["simd"], r["bits"]))
        ratio = (f"{r['macs_per_klut'] / base['macs_per_klut']:.2f}x"
                 if base and r["macs_per_klut"] and base["macs_per_klut"] else "")
        print(f"{r['family']:6} {r['pe']}x{r['simd']:<6} {r['bits']}/{r['bits']:<2} "
              f"{r['design']:13} {r['luts']:>7} {r['ffs']:>6} {r['dsps']:>5} "
              f"{r['luts_per_lane']:>8} "
              f"{r['macs_per_cycle']:>8g} {r['macs_per_klut'] or 0:>13} {ratio:>9}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8x8 only, iCE40 only")
    parser.add_argument("--out", help="write the results as JSON to this file")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--only", help="comma-separated designs to run (default: all)")
    parser.add_argument("--timeout", type=float, default=900,
                        help="seconds per synthesis before giving up (default 900)")
    args = parser.parse_args(argv)
    jobs = jobs_for(args.quick)
    if args.only:
        keep = set(args.only.split(","))
        jobs = [j for j in jobs if j[0] in keep or j[0] == "plain" and "plain" in keep]
    results = []
    # the plain arrays at 8 bits take Yosys longest: start them last
    slow_last = sorted(jobs, key=lambda j: (j[0] == "plain" and j[3] >= 4) * j[1] * j[2] * j[3])
    with concurrent.futures.ProcessPoolExecutor(args.jobs) as pool:
        futures = {pool.submit(synthesize, job, args.timeout): job for job in slow_last}
        for n, future in enumerate(concurrent.futures.as_completed(futures), 1):
            r = future.result()
            print(f"[{n}/{len(jobs)}] {r['family']} {r['pe']}x{r['simd']} w{r['bits']}a{r['bits']} "
                  f"{r['design']}: {r['luts']} LUTs, {r['dsps']} DSPs ({r['seconds']} s)",
                  flush=True)
            results.append(r)
    order = {job: n for n, job in enumerate(jobs)}
    results.sort(key=lambda r: order[(r["design"], r["pe"], r["simd"], r["bits"], r["family"])])
    print_table(results)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
