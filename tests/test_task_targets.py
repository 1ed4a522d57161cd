"""Task targets: a file imports its siblings, studies come through entry points, and the
library itself never imports the studies."""

from __future__ import annotations

import ast
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from autoclip.errors import TaskError
from autoclip.task import STUDY_GROUP, bundled_studies, load_task

ROOT = Path(__file__).resolve().parent.parent

TASK_FILE = """
import torch
from helpers_{tag} import make_model

import autoclip

def make_task():
    return autoclip.Task(
        model_fn=make_model,
        optimizer_fn=lambda p: torch.optim.SGD(p, lr=0.1),
        loss_fn=lambda m, b: m(b).pow(2).mean(),
        batches=[torch.ones(4, 2)],
        name="{tag}",
    )
"""


def test_a_task_file_imports_the_module_beside_it(tmp_path):
    (tmp_path / "helpers_sib.py").write_text(
        "import torch\ndef make_model():\n    return torch.nn.Linear(2, 1)\n"
    )
    (tmp_path / "task.py").write_text(TASK_FILE.format(tag="sib"))
    before = list(sys.path)
    task = load_task(f"{tmp_path / 'task.py'}:make_task")
    assert task.name == "sib" and task.build()[0].in_features == 2
    assert sys.path == before  # the folder was on sys.path only while the file loaded


def test_a_missing_import_names_the_folder_and_the_fix(tmp_path):
    (tmp_path / "task.py").write_text(TASK_FILE.format(tag="gone"))
    with pytest.raises(TaskError, match="No module named 'helpers_gone'") as err:
        load_task(f"{tmp_path / 'task.py'}:make_task")
    msg = str(err.value)
    assert str(tmp_path) in msg and "PYTHONPATH" in msg and "\n" not in msg


def _defines_make_task(path: Path) -> bool:
    tree = ast.parse(path.read_text())
    return any(isinstance(n, ast.FunctionDef) and n.name == "make_task" for n in tree.body)


def test_every_study_module_is_an_entry_point_and_loads():
    defined = {p.stem for p in (ROOT / "studies").glob("*.py") if _defines_make_task(p)}
    declared = {ep.name: ep.value for ep in entry_points(group=STUDY_GROUP)}
    assert set(declared) == defined, "add the study to [project.entry-points] in pyproject"
    assert all(v == f"autoclip_studies.{k}:make_task" for k, v in declared.items())
    assert set(bundled_studies()) == defined


def test_the_library_does_not_import_the_studies():
    code = (
        "import sys, autoclip, autoclip.cli, autoclip.report;"
        f"autoclip.load_task({str(ROOT / 'tests' / '_tasks.py')!r} + ':make_task');"
        "print(sorted(m for m in sys.modules if m.startswith('autoclip_studies')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    src = "\n".join(p.read_text() for p in (ROOT / "autoclip").rglob("*.py"))
    assert "import autoclip_studies" not in src and "from autoclip_studies" not in src


def test_benches_do_not_put_tests_on_sys_path():
    for path in (ROOT / "studies").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "path":
                target = node.value
                assert not (isinstance(target, ast.Name) and target.id == "sys"), (
                    f"{path.name}:{node.lineno} touches sys.path"
                )
