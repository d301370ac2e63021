"""Docstring examples are executed, so the documentation cannot drift from the code."""
import doctest
import importlib
import pkgutil

import pytest

import jkofast

MODULES = sorted(m.name for m in pkgutil.walk_packages(jkofast.__path__, "jkofast.") if not m.name.endswith("__main__"))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
                             extraglobs={"torch": __import__("torch")})
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"


def test_some_examples_exist():
    finder = doctest.DocTestFinder()
    found = sum(len(t.examples) for n in MODULES for t in finder.find(importlib.import_module(n)))
    assert found >= 8, found


def _public_objects():
    """Public functions and classes of the public modules (no underscore anywhere in the
    module's path or the name), with the public methods a class defines itself."""
    import inspect
    for name in MODULES:
        if any(part.startswith("_") for part in name.split(".")):
            continue
        module = importlib.import_module(name)
        for attr in getattr(module, "__all__", None) or [a for a in vars(module) if not a.startswith("_")]:
            obj = getattr(module, attr)
            if not (inspect.isfunction(obj) or inspect.isclass(obj)) or obj.__module__ != name:
                continue  # (imported from elsewhere: checked where it is defined)
            yield f"{name}.{attr}", obj
            if inspect.isclass(obj):
                for method, fn in vars(obj).items():
                    # (extra_repr is nn.Module's hook, documented there)
                    if not method.startswith("_") and method != "extra_repr" and inspect.isfunction(fn):
                        yield f"{name}.{attr}.{method}", fn


def test_every_public_function_class_and_method_has_a_docstring():
    missing = [name for name, obj in _public_objects() if not (obj.__doc__ or "").strip()]
    assert len(list(_public_objects())) > 100  # (the walk reaches the package)
    assert not missing, f"public API without a docstring: {missing}"


def test_readme_api_block_runs(tmp_path, monkeypatch):
    # The README's ten-line API block, run as written apart from a quick training budget.
    from pathlib import Path

    text = (Path(__file__).parents[1] / "README.md").read_text()
    block = text.split("## The API in ten lines", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert 'method="jko-iflow"' in block
    block = block.replace('method="jko-iflow",', 'method="jko-iflow", budget="quick", progress=False,')
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(block, "README.md", "exec"), scope)
    assert scope["logp"].shape == (20_000,) and (tmp_path / "m.pt").exists()
    assert scope["x1"].shape == (100, 2) and scope["kinetic"].shape == (100,)
