"""The typing that ships: py.typed, and a stub that declares what the compiled module has.

mypy itself runs in CI (.ci/run) over the package and over tests/typecheck_api.py, which
pins the types users see; this file checks what mypy cannot: that the stub agrees with the
module actually built.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import siglayer
from siglayer import _core

PACKAGE_DIR = Path(siglayer.__file__).parent


def test_typing_files_are_installed():
    assert (PACKAGE_DIR / "py.typed").is_file()
    assert (PACKAGE_DIR / "_core.pyi").is_file()


def _stub_functions() -> dict[str, list[tuple[str, bool]]]:
    """Name -> [(parameter, has a default)] for each function in the installed stub."""
    tree = ast.parse((PACKAGE_DIR / "_core.pyi").read_text())
    functions: dict[str, list[tuple[str, bool]]] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name not in functions:
            args = node.args.posonlyargs + node.args.args
            first_default = len(args) - len(node.args.defaults)
            functions[node.name] = [(a.arg, i >= first_default) for i, a in enumerate(args)]
    return functions


def _runtime_functions() -> dict[str, list[tuple[str, bool]]]:
    """The same from the signatures pybind11 writes on the first line of each docstring."""
    functions = {}
    for name in dir(_core):
        obj = getattr(_core, name)
        if name.startswith("_") or not callable(obj) or isinstance(obj, type):
            continue  # exception classes (OverlapError) are checked with the attributes
        signature = re.match(rf"{name}\((.*)\) ->", obj.__doc__.splitlines()[0])
        assert signature, f"no signature line in _core.{name}.__doc__"
        params = re.findall(r"(?:^|, )(\w+): [^,=]+?( = [^,]+)?(?=, \w+:|$)", signature[1])
        functions[name] = [(p, bool(default)) for p, default in params]
    return functions


def test_stub_declares_every_function_of_the_compiled_module():
    runtime, stub = _runtime_functions(), _stub_functions()
    assert set(runtime) == set(stub), "update python/siglayer/_core.pyi"
    for name, params in runtime.items():
        assert stub[name] == params, f"_core.{name}: stub {stub[name]} != module {params}"


def test_stub_declares_the_module_attributes():
    tree = ast.parse((PACKAGE_DIR / "_core.pyi").read_text())
    declared = {n.target.id for n in tree.body if isinstance(n, ast.AnnAssign)}
    assert "__version__" in declared and isinstance(_core.__version__, str)
    classes = {n.name for n in tree.body if isinstance(n, ast.ClassDef)}
    runtime = {n for n in dir(_core) if isinstance(getattr(_core, n), type)}
    assert runtime <= classes, f"exception classes missing from the stub: {runtime - classes}"


def test_config_keys_match_the_stub():
    tree = ast.parse((PACKAGE_DIR / "_core.pyi").read_text())
    (config_class,) = (
        n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "CoreConfig"
    )
    keys = [n.target.id for n in config_class.body if isinstance(n, ast.AnnAssign)]
    assert list(_core.config()) == keys


@pytest.mark.parametrize("name", ["avx512bf16", "avx512", "avx2", "baseline"])
def test_select_isa_literal_names_are_the_real_ones(name):
    # The stub types select_isa's argument as these four literals; each must be a name
    # the core knows (it may refuse one this CPU lacks, but not as unknown).
    before = _core.config()["simd"]
    try:
        _core.select_isa(name)
    except ValueError as error:
        assert "this CPU cannot run" in str(error)
    finally:
        _core.select_isa(before)
    with pytest.raises(ValueError, match="expected one of"):
        _core.select_isa("sse9")
