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
