"""Every public name carries a runnable example, and submodules are not shadowed.

CI also runs every docstring example in the package: ``python -m pytest --doctest-modules
autoclip`` (see .ci/run). This module checks that each name in ``autoclip.__all__`` has at
least one example of its own, and runs it, so a name without one fails here.
"""

from __future__ import annotations

import doctest
import pkgutil
import sys
import types

import pytest

import autoclip

# Names allowed to lack an example (none).
PHASE2: set[str] = set()


def _examples(name: str) -> list[doctest.DocTest]:
    obj = getattr(autoclip, name)
    module = obj if isinstance(obj, types.ModuleType) else None
    finder = doctest.DocTestFinder(recurse=False, exclude_empty=True)
    return [t for t in finder.find(obj, name, module=module or False) if t.examples]


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.xfail(strict=True, reason="phase 2"))
        if n in PHASE2
        else n
        for n in sorted(autoclip.__all__)
    ],
)
def test_every_public_name_has_a_running_example(name, monkeypatch):
    monkeypatch.chdir(__import__("pathlib").Path(__file__).parent.parent)
    tests = _examples(name)
    assert tests, f"autoclip.{name} has no >>> example in its docstring"
    obj = getattr(autoclip, name)
    home = obj if isinstance(obj, types.ModuleType) else sys.modules[obj.__module__]
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for t in tests:
        t.globs = dict(vars(home))  # as --doctest-modules runs it: the defining module's names
        runner.run(t)
    assert runner.failures == 0, f"autoclip.{name}: {runner.failures} example(s) failed"
    assert runner.tries >= 1


def test_import_of_a_submodule_gives_the_module():
    import autoclip.probe as m
    import autoclip.propose as n

    assert isinstance(m, types.ModuleType) and m.__name__ == "autoclip.probe"
    assert isinstance(n, types.ModuleType) and n.__name__ == "autoclip.propose"
    for info in pkgutil.iter_modules(autoclip.__path__):
        value = getattr(autoclip, info.name, None)
        assert value is None or isinstance(value, types.ModuleType), (
            f"autoclip.{info.name} is {value!r}, shadowing the submodule"
        )
