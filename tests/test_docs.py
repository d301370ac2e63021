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
