"""The run directory's contract lives in one module: no other module spells a file name of a run,
and the layout's paths and model names behave as documented."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from harness.layout import (
    PRETRAINED_MODEL,
    AttackFiles,
    GenerationFiles,
    ModelRef,
    ReportFiles,
    RunLayout,
    SlurmFiles,
    UnlearnFiles,
    check_label,
)


def run_file_names() -> list[str]:
    """Every file or folder name the layout defines, read from the layout's own objects."""
    root = Path("/run")
    layout = RunLayout(root)
    paths = [layout.recipe, layout.log, layout.results, layout.report.markdown, layout.report.record,
             layout.slurm.submit, layout.slurm.jobs, layout.slurm.logs]
    for files in (UnlearnFiles(root), AttackFiles(root)):
        paths += [getattr(files, name) for name in ("tensors", "mask", "record", "checkpoints", "parts")
                  if hasattr(files, name)]
    paths.append(GenerationFiles(root).record)
    return sorted({p.name for p in paths if "." in p.name} | {"shard-"})


def code_strings(path: Path) -> list[str]:
    """String constants of a module that code uses (docstrings, statements of their own, left out)."""
    tree = ast.parse(path.read_text())
    docs = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)}
    return [node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs]


def test_only_the_layout_spells_a_run_directory_file_name(repo: Path) -> None:
    package = repo / "harness"
    names = run_file_names()
    assert {"results.json", "attacked.safetensors", "unlearn.json", "generation.json", "submit.sh"} <= set(names)
    offenders = []
    for path in sorted(package.rglob("*.py")):
        if path == package / "layout.py":
            continue
        for text in code_strings(path):
            for name in names:
                if re.search(rf"(?<![\w.-]){re.escape(name)}", text):
                    offenders.append(f"{path.relative_to(repo)}: {name!r} in {text!r}")
    assert offenders == []
    templates = "\n".join(p.read_text() for p in (package / "resources" / "slurm").glob("*.sbatch"))
    assert not any(name in templates for name in names)


def test_model_labels_parse_back_and_name_their_folders(tmp_path: Path) -> None:
    layout = RunLayout(tmp_path)
    attacked = ModelRef("conceptprune", "nms")
    assert attacked.label == "conceptprune/nms" and ModelRef.parse("conceptprune/nms") == attacked
    assert ModelRef.parse("conceptprune") == ModelRef("conceptprune", "none") and PRETRAINED_MODEL.label == "pretrained"
    assert layout.images(attacked, "s").folder == tmp_path / "images" / "conceptprune" / "nms" / "s"
    assert layout.model_tensors(attacked) == [layout.unlearn("conceptprune").tensors,
                                             layout.attack("conceptprune", "nms").tensors]
    layout.metrics(attacked, "s").parent.mkdir(parents=True)
    layout.metrics(attacked, "s").write_text("{}")
    assert layout.scored() == {(attacked, "s"): layout.metrics(attacked, "s")}
    assert ReportFiles(tmp_path).markdown.suffix == ".md" and SlurmFiles(tmp_path).script(2, "attack").name == "02-attack.sbatch"


@pytest.mark.parametrize("name", ["pretrained", "none", "a/b", "", "-x", "with space"])
def test_labels_that_would_break_the_layout_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="must be letters, digits|is reserved"):
        check_label(name, "name")
