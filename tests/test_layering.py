"""The direction of knowledge (STYLE.md): hw/ imports only Amaranth and the standard library,
the compiler imports neither sim/ nor boards/ and only its lowering module knows Amaranth and
the hardware library, and nothing imports the CLI."""

import ast
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _imports(folder):
    for path in sorted((ROOT / folder).rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield path, alias.name
            elif isinstance(node, ast.ImportFrom):
                if node.level:           # relative: stays inside its own package
                    if node.level > 1 and folder != "compiler/frontends":
                        yield path, "<parent>." + (node.module or "")
                    continue
                yield path, node.module or ""


def _top(name):
    return name.split(".")[0]


def test_hw_imports_only_amaranth_and_stdlib():
    allowed = set(sys.stdlib_module_names) | {"amaranth"}
    bad = [(p.name, m) for p, m in _imports("hw") if _top(m) not in allowed]
    assert not bad, f"hw/ imports {bad}"


def test_compiler_imports_no_simulation_or_boards_and_only_lowering_knows_hardware():
    bad = [(p.name, m) for p, m in _imports("compiler")
           if m.startswith(("qfab.sim", "qfab.boards", "qfab.cli", "cocotb"))
           or ((_top(m) == "amaranth" or m.startswith("qfab.hw")) and p.name != "lowering.py")]
    assert not bad, f"compiler/ imports {bad}"
    assert any(p.name == "lowering.py" and m.startswith("qfab.hw") for p, m in _imports("compiler"))


@pytest.mark.parametrize("folder", ["hw", "compiler", "sim", "boards"])
def test_nothing_imports_the_cli(folder):
    bad = [(p.name, m) for p, m in _imports(folder) if m in ("qfab.cli", "qfab.doctor")]
    assert not bad


def test_sim_does_not_import_boards():
    bad = [(p.name, m) for p, m in _imports("sim") if m.startswith("qfab.boards")]
    assert not bad
