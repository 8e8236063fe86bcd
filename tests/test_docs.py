"""The documentation: docstring examples run, every public name is documented.

Every module of the installed package has its docstring examples run by doctest, so an
example that drifts from the code fails here. Every name in ``siglayer.__all__`` (and in
the ``__all__`` of public submodules listed there) has a NumPy-style docstring with an
example and is described in docs/ as ``siglayer.<name>``.
"""

from __future__ import annotations

import doctest
import importlib
import inspect
import types
from pathlib import Path

import pytest

import siglayer

DOCS = Path(__file__).resolve().parents[1] / "docs"
OPTIONAL_DEPENDENCIES = {"torch", "matplotlib", "sklearn", "jax", "dask"}


def _modules() -> list[str]:
    """Every Python module of the installed package (its shared libraries are no modules)."""
    files = Path(siglayer.__file__).parent.glob("*.py")
    return sorted(f"siglayer.{f.stem}" for f in files if f.stem != "__init__")


@pytest.mark.parametrize("module_name", ["siglayer", *_modules()])
def test_docstring_examples(module_name, restore_threads):
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        # siglayer.torch re-raises a missing torch as an ImportError that says what to do.
        missing = error if isinstance(error, ModuleNotFoundError) else error.__cause__
        if isinstance(missing, ModuleNotFoundError) and missing.name in OPTIONAL_DEPENDENCIES:
            pytest.skip(f"{module_name} needs {missing.name}")
        raise
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in finder.find(module, module_name):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} docstring example(s) of {module_name} failed"


def _public() -> list[tuple[str, object]]:
    """(qualified name, object) for siglayer.__all__ and the __all__ of modules in it."""
    names = []
    for name in siglayer.__all__:
        obj = getattr(siglayer, name)
        names.append((f"siglayer.{name}", obj))
        if isinstance(obj, types.ModuleType):
            names += [(f"siglayer.{name}.{sub}", getattr(obj, sub)) for sub in obj.__all__]
    return names


PUBLIC = _public()


@pytest.mark.parametrize("qualname, obj", PUBLIC, ids=[q for q, _ in PUBLIC])
def test_public_name_has_a_numpy_style_docstring(qualname, obj):
    if qualname == "siglayer.__version__":
        assert isinstance(obj, str)
        return
    doc = inspect.getdoc(obj)
    assert doc and doc != inspect.getdoc(type(obj)), f"{qualname} has no docstring of its own"
    if isinstance(obj, types.ModuleType):
        return
    assert ">>> " in doc, f"{qualname}: no example"
    if inspect.isclass(obj):
        for method_name, method in vars(obj).items():
            if not method_name.startswith("_") and inspect.isfunction(method):
                assert inspect.getdoc(method), f"{qualname}.{method_name} has no docstring"
        return
    signature = inspect.signature(obj)
    if signature.parameters:
        assert "Parameters\n----------" in doc, f"{qualname}: no Parameters section"
    if signature.return_annotation not in ("None", None):
        assert "Returns\n-------" in doc, f"{qualname}: no Returns section"


def test_every_public_name_is_in_the_docs():
    text = "\n".join(page.read_text() for page in sorted(DOCS.glob("*.md")))
    missing = [q for q, _ in PUBLIC if q not in text]
    assert not missing, f"not described in docs/: {missing}"


def test_help_of_forward_answers_the_users_questions():
    doc = inspect.getdoc(siglayer.forward)
    assert doc is not None
    for answer in (
        "(..., n_in)",
        "(n_in, n_out)",
        "(n_out,)",
        "float32",
        "float64",
        "Returns",
        "Raises",
        "TypeError",
        "ValueError",
        "out",
        ">>> ",
    ):
        assert answer in doc, answer
