"""The examples in lavit_hf's docstrings run and print what they show (`pytest --doctest-modules lavit_hf`)."""

import doctest
import importlib
import pkgutil

import pytest

import lavit_hf


MODULES = sorted(info.name for info in pkgutil.iter_modules(lavit_hf.__path__, "lavit_hf."))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, verbose=False, report=True)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples of {name} failed (see the output)"
