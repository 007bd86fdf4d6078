"""The build folder: what ``qfab compile`` writes and every later step reads.

A build folder holds the accelerator's Verilog (``qfab_top.v``: what the simulators run; the
simulator counts its ``activity`` port), the same design as RTLIL (``qfab_top.il``: the netlist
Yosys wrote that Verilog from, which the board flow synthesizes because Yosys reads it in seconds
where the Verilog of large weight memories takes it an hour), the quantized model (``model.qfab``) and ``manifest.json``,
which describes the design (`Manifest`: stream packing, stages, FIFOs, estimates, port layouts)
and records the SHA-256 of every file it names. Steps after the compiler leave their results in
``reports/<name>.json`` (`Build.write_report`), as FINN's build folders keep one report per step.

`Build` is the only reader and writer of the folder. `Build.save` writes a whole new folder next
to the old one and swaps it in at the end, so an interrupted compile never leaves a folder that
mixes two designs; `Build.load` checks the format version and every file's hash, so a folder
changed by hand is refused instead of simulated or programmed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from qfab.base.errors import QfabError

__all__ = ["FORMAT", "VERSION", "OLDEST", "MANIFEST", "StreamFormat", "StageInfo", "FifoInfo", "ForkInfo", "ConverterInfo", "ResourceCount", "Estimates",
           "FieldSlice", "BuildFiles", "Manifest", "Build"]

FORMAT = "qfab-build"
VERSION = 4             # 1: no file hashes, FIFOs with "from"/"to"; 2: a second Verilog file for simulation;
                        # 3: one Verilog file; 4: the RTLIL netlist beside it (files.netlist)
OLDEST = 3              # the oldest version this qfab reads (a version 3 folder has no netlist)
MANIFEST = "manifest.json"
REPORTS = "reports"


@dataclass(frozen=True)
class StreamFormat:
    """How the accelerator's input or output tensor travels on its stream: ``elements`` codes of
    ``bits`` bits (``signed`` or not), ``per_beat`` of them in each beat, channels-last."""
    tensor: str
    shape: tuple[int, ...]
    elements: int
    per_beat: int
    bits: int
    signed: bool

    @property
    def beats(self) -> int:
        """Beats per inference."""
        return self.elements // self.per_beat


@dataclass(frozen=True)
class StageInfo:
    """One hardware stage: its IR node, kind, folding (None where it does not apply) and its
    cycles per inference at full rate."""
    name: str
    node: str
    kind: str
    pe: int | None = None
    simd: int | None = None
    style: str | None = None
    cycles: int | None = None
    pixels: int | None = None      # output pixels per beat of a convolution (None: not a fold field)
    requant: str | None = None     # a matrix engine's requantization (`estimate.REQUANT_MODES`)


@dataclass(frozen=True)
class FifoInfo:
    """A FIFO on the edge from ``src`` to ``dst`` (``"stage.port"``, or ``"i"``/``"o"`` for the
    accelerator's own streams)."""
    name: str
    src: str
    dst: str
    depth: int
    tensor: str
    elements_per_beat: int


@dataclass(frozen=True)
class ForkInfo:
    """A fork copying the stream of ``source`` to ``count`` edges, ``per_beat`` elements of type
    ``element`` (``"u4"``, ``"i8"``) per beat."""
    name: str
    source: str
    count: int
    per_beat: int
    element: str


@dataclass(frozen=True)
class ConverterInfo:
    """A width converter on edge ``edge`` from ``n_in`` to ``n_out`` elements per beat."""
    name: str
    edge: str
    n_in: int
    n_out: int
    element: str


@dataclass(frozen=True)
class ResourceCount:
    """Estimated resources, rounded; ``logic_cells`` only where the family counts them (iCE40)."""
    luts: int = 0
    ffs: int = 0
    dsps: int = 0
    bram_bits: int = 0
    bram_blocks: int = 0
    logic_cells: int | None = None

    def as_dict(self) -> dict[str, int]:
        """The counts by name, without ``logic_cells`` where it is not counted."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass(frozen=True)
class Estimates:
    """The lowering's resource estimates: per layer, per kind of stream plumbing (``fifos``,
    ``converters``, ``forks``) and in total, counted for ``family`` with the estimate model
    ``model`` (its source)."""
    per_layer: Mapping[str, ResourceCount] = field(default_factory=dict)
    streams: Mapping[str, ResourceCount] = field(default_factory=dict)
    total: ResourceCount = ResourceCount()
    family: str = "ice40"
    model: str = ""


@dataclass(frozen=True)
class FieldSlice:
    """Bits ``offset`` to ``offset + width - 1`` of a port's value."""
    offset: int
    width: int

    def extract(self, value: int) -> int:
        return (value >> self.offset) & ((1 << self.width) - 1)


PortLayout = Mapping[str, Mapping[str, FieldSlice]]     # entry -> sub-field -> slice


@dataclass(frozen=True)
class BuildFiles:
    """The names, inside the folder, of the files the manifest describes."""
    model: str = "model.qfab"
    verilog: str = "qfab_top.v"
    netlist: str | None = None      # "qfab_top.il" from qfab compile; None in a version 3 folder

    def names(self) -> tuple[str, ...]:
        return tuple(name for name in dataclasses.astuple(self) if name is not None)


@dataclass(frozen=True)
class Manifest:
    """What ``manifest.json`` says about a build.

    Members
    -------
    input, output : `StreamFormat`
        The accelerator's streams.
    initiation_interval : int
        Cycles per inference (the slowest stage).
    latency_estimate : int
        Estimated cycles from the first input beat to the last output beat.
    stages, fifos, forks, converters : tuple of `StageInfo`, `FifoInfo`, `ForkInfo`, `ConverterInfo`
        The lowering's plan (`qfab.compiler.plan.Plan`): its stages and the plumbing on its edges,
        under the names they have in the hardware.
    estimates : `Estimates`
    observe_layout, counters_layout : mapping
        Where each FIFO's fill level sits in the ``observe`` port, and each stage port's
        ``fire``/``wait`` counts in the simulation harness's ``counters`` vector (32 bits per bit
        of the top's ``activity`` port).
    activity_bits : int
        Width of the top's ``activity`` port (two bits per stage stream port).
    m_bits : int
        The requantization multipliers' width.
    top : str
        The Verilog top module.
    files : `BuildFiles`
    """
    input: StreamFormat
    output: StreamFormat
    initiation_interval: int
    latency_estimate: int = 0
    stages: tuple[StageInfo, ...] = ()
    fifos: tuple[FifoInfo, ...] = ()
    forks: tuple[ForkInfo, ...] = ()
    converters: tuple[ConverterInfo, ...] = ()
    estimates: Estimates = Estimates()
    observe_layout: PortLayout = field(default_factory=dict)
    counters_layout: PortLayout = field(default_factory=dict)
    activity_bits: int = 0
    m_bits: int = 0
    top: str = "qfab_top"
    files: BuildFiles = BuildFiles()

    def stage(self, name: str) -> StageInfo:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(name)

    def to_json(self, hashes: Mapping[str, str] | None = None) -> dict[str, Any]:
        """The manifest as written to ``manifest.json`` (with the files' ``sha256`` if given)."""
        doc = {"format": FORMAT, "version": VERSION, **dataclasses.asdict(self)}
        if hashes is not None:
            doc["sha256"] = dict(hashes)
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Manifest:
        """The manifest from a ``manifest.json`` document (format and version already checked)."""
        def resources(d):
            return ResourceCount(**d)

        def layout(d):
            return {name: {sub: FieldSlice(**s) for sub, s in subs.items()} for name, subs in d.items()}
        est = doc["estimates"]
        return cls(
            input=_stream(doc["input"]), output=_stream(doc["output"]),
            initiation_interval=int(doc["initiation_interval"]), latency_estimate=int(doc["latency_estimate"]),
            stages=tuple(StageInfo(**s) for s in doc["stages"]), fifos=tuple(FifoInfo(**f) for f in doc["fifos"]),
            forks=tuple(ForkInfo(**f) for f in doc.get("forks", ())),
            converters=tuple(ConverterInfo(**c) for c in doc.get("converters", ())),
            estimates=Estimates(per_layer={k: resources(v) for k, v in est["per_layer"].items()},
                                streams={k: resources(v) for k, v in est["streams"].items()},
                                total=resources(est["total"]), family=est["family"], model=est["model"]),
            observe_layout=layout(doc["observe_layout"]), counters_layout=layout(doc["counters_layout"]),
            activity_bits=int(doc["activity_bits"]), m_bits=int(doc["m_bits"]), top=doc["top"], files=BuildFiles(**doc["files"]))


def _stream(d):
    return StreamFormat(tensor=d["tensor"], shape=tuple(d["shape"]), elements=d["elements"], per_beat=d["per_beat"],
                        bits=d["bits"], signed=d["signed"])


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _check_name(folder, name):
    """``name`` as a path inside ``folder``; refuses absolute paths and ``..``."""
    if not isinstance(name, str) or not name:
        raise QfabError(f"{folder}: the manifest names a file {name!r}: not a file name")
    rel = pathlib.PurePosixPath(name)
    if rel.is_absolute() or pathlib.PureWindowsPath(name).is_absolute() or ".." in rel.parts or "\\" in name:
        raise QfabError(f"{folder}: the manifest names {name!r}, a path outside the build folder; refused")
    return pathlib.Path(folder, *rel.parts)


def _write_file(path, content):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


_REPORT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class Build:
    """A build folder and its manifest; make one with `load` or `save`.

    Members
    -------
    folder : pathlib.Path
    manifest : `Manifest`
    """

    def __init__(self, folder: str | os.PathLike, manifest: Manifest):
        if not isinstance(manifest, Manifest):
            raise TypeError(f"manifest must be a Manifest, not {manifest!r}")
        self._folder = pathlib.Path(folder)
        self._manifest = manifest

    folder = property(lambda self: self._folder)
    manifest = property(lambda self: self._manifest)

    def __repr__(self):
        return f"Build({str(self._folder)!r})"

    # -- reading ---------------------------------------------------------------------------------
    @classmethod
    def load(cls, folder: str | os.PathLike) -> Build:
        """The build in ``folder``, after checking its format version and every file's hash.

        Raises
        ------
        QfabError
            If the folder has no manifest, a foreign or newer one, names a file outside itself,
            or a file is missing or differs from what the manifest recorded.
        """
        folder = pathlib.Path(folder)
        path = folder / MANIFEST
        if not path.is_file():
            raise QfabError(f"{folder}: not a qfab build folder (no {MANIFEST}); run qfab compile first")
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise QfabError(f"{path}: not a readable qfab build manifest ({e})") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise QfabError(f"{path}: not a qfab build manifest")
        version = doc.get("version")
        if not isinstance(version, int) or isinstance(version, bool):
            raise QfabError(f"{path}: not a qfab build manifest (format version {version!r})")
        if version > VERSION:
            raise QfabError(f"{folder}: build format version {version!r} is newer than this qfab reads "
                            f"(up to {VERSION}); update qfab or run qfab compile again")
        if version < OLDEST:
            raise QfabError(f"{folder}: build format version {version} is older than this qfab reads ({OLDEST}); "
                            f"run qfab compile again")
        try:
            manifest = Manifest.from_json(doc)
            hashes = dict(doc["sha256"])
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise QfabError(f"{path}: malformed qfab build manifest ({type(e).__name__}: {e})") from None
        for name in manifest.files.names():
            file = _check_name(folder, name)
            if name not in hashes:
                raise QfabError(f"{path}: no hash recorded for {name}; run qfab compile again")
            try:
                data = file.read_bytes()
            except OSError:
                raise QfabError(f"{folder}: {name} is missing; run qfab compile again") from None
            if _sha256(data) != hashes[name]:
                raise QfabError(f"{folder}: {name} differs from the file qfab compile wrote (its SHA-256 does not "
                                f"match the manifest): a mixed or edited build folder; run qfab compile again")
        return cls(folder, manifest)

    def path(self, name: str) -> pathlib.Path:
        """The path of ``name``, a file inside the folder."""
        return _check_name(self._folder, name)

    @property
    def verilog(self) -> str:
        """The accelerator's Verilog (``qfab_top.v``), as the simulators run it."""
        return self.path(self._manifest.files.verilog).read_text()

    @property
    def netlist(self) -> str | None:
        """The same design as RTLIL (``qfab_top.il``), or None in a folder written before qfab kept it."""
        name = self._manifest.files.netlist
        return None if name is None else self.path(name).read_text()

    def synthesis_files(self) -> dict[str, str]:
        """What a board's Yosys run reads for the accelerator: ``{"qfab_top.il": RTLIL}``, or the
        Verilog in a folder without the netlist."""
        files = self._manifest.files
        if files.netlist is not None:
            return {files.netlist: self.netlist}
        return {files.verilog: self.verilog}

    @property
    def model_path(self) -> pathlib.Path:
        return self.path(self._manifest.files.model)

    def load_model(self):
        """The quantized model (an IR `Graph`) the accelerator implements."""
        from .modelfile import load
        return load(self.model_path)

    # -- writing ---------------------------------------------------------------------------------
    @classmethod
    def save(cls, folder: str | os.PathLike, manifest: Manifest, files: Mapping[str, bytes | str]) -> Build:
        """Write a build folder: ``files`` (name -> content, exactly the files ``manifest.files``
        names) and ``manifest.json`` with their hashes.

        Everything is written into a new sibling folder first, which then replaces ``folder``
        (with the reports and bitstreams of the design it held); if anything fails before, the old
        folder stays as it was. A non-empty folder that is not a build folder is not replaced.
        """
        folder = pathlib.Path(folder)
        want = set(manifest.files.names())
        if set(files) != want:
            raise ValueError(f"files must be exactly {sorted(want)}, not {sorted(files)}")
        for name in files:
            _check_name(folder, name)
        if folder.exists():
            if not folder.is_dir():
                raise QfabError(f"{folder}: exists and is not a folder; choose another build folder")
            if not (folder / MANIFEST).is_file() and any(folder.iterdir()):
                raise QfabError(f"{folder}: not empty and not a qfab build folder; refusing to replace it "
                                f"(choose a new or empty folder)")
        parent = folder.absolute().parent
        parent.mkdir(parents=True, exist_ok=True)
        tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".new", dir=parent))
        try:
            os.chmod(tmp, 0o777 & ~_umask())
            hashes = {}
            for name, content in files.items():
                data = content.encode() if isinstance(content, str) else bytes(content)
                _write_file(_check_name(tmp, name), data)
                hashes[name] = _sha256(data)
            (tmp / MANIFEST).write_text(json.dumps(manifest.to_json(hashes), indent=1))
            _swap(tmp, folder.absolute())
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return cls(folder, manifest)

    # -- reports ---------------------------------------------------------------------------------
    def _report_path(self, name):
        if not isinstance(name, str) or not _REPORT_NAME.fullmatch(name) or name.endswith(".json"):
            raise ValueError(f"report name must be a plain name like 'simulation', not {name!r}")
        return self._folder / REPORTS / f"{name}.json"

    def write_report(self, name: str, data: Mapping[str, Any] | Any) -> pathlib.Path:
        """Save ``data`` (a JSON-able mapping, or a dataclass) as the report ``name`` of this
        build (``reports/<name>.json``, replaced whole); return its path."""
        if dataclasses.is_dataclass(data) and not isinstance(data, type):
            data = dataclasses.asdict(data)
        path = self._report_path(name)
        text = json.dumps(data, indent=1)
        path.parent.mkdir(exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.replace(tmp, path)
        except BaseException:
            pathlib.Path(tmp).unlink(missing_ok=True)
            raise
        return path

    def read_report(self, name: str) -> dict[str, Any]:
        """The report ``name`` a step wrote (`write_report`)."""
        path = self._report_path(name)
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise QfabError(f"{self._folder}: no {name} report ({path.relative_to(self._folder)}); "
                            f"run the step that writes it first") from None
        except (OSError, ValueError) as e:
            raise QfabError(f"{path}: unreadable report ({e})") from None

    def reports(self) -> tuple[str, ...]:
        """The names of the reports written so far."""
        return tuple(sorted(p.stem for p in (self._folder / REPORTS).glob("*.json")))


def _swap(new, folder):
    """Put the folder ``new`` in the place of ``folder`` (which may not exist)."""
    if not folder.exists():
        os.rename(new, folder)
        return
    old = pathlib.Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".old", dir=folder.parent))
    os.rmdir(old)
    os.rename(folder, old)
    try:
        os.rename(new, folder)
    except BaseException:
        os.rename(old, folder)
        raise
    shutil.rmtree(old, ignore_errors=True)
