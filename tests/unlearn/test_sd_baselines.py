"""The field's baseline methods on SD: the shipped recipe that names them runs through
`harness benchmark` on a tiny SD-shaped pipeline (the recipe's methods and settings, only the
model, the sizes and the step counts made small), and every method's model generates."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness.layout import GenerationFiles, UnlearnFiles
from harness.models.checkpoints import load_tensor_file
from harness.records import GenerationRecord, UnlearnRecord, read_record

SMALL = {  # steps and sample counts a CPU runs in seconds; every other setting is the recipe's
    "erasediff": {"steps": 2, "batch_size": 2, "forget_samples": 2},
    "salun": {"steps": 2, "batch_size": 2, "forget_samples": 2},
    "fmn": {"steps": 2, "samples": 2, "ti_steps": 2},
    "advunlearn": {"iterations": 3, "warmup": 1, "attack_step": 2, "ddim_steps": 4, "retain_batch": 1},
}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_sd_baselines_recipe_runs_every_method_through_the_benchmark(tmp_path: Path, recipes_dir: Path,
                                                                        save_tiny_sd_pipeline) -> None:
    data = yaml.safe_load((recipes_dir / "sd15-baselines-golf-ball.yaml").read_text())
    assert [m["method"] for m in data["methods"]] == ["uce", "erasediff", "salun", "fmn", "advunlearn"]
    data["model"] = str(save_tiny_sd_pipeline(tmp_path / "pipe"))
    data["generation"] |= {"steps": 2, "height": 64, "width": 64, "batch_size": 2}
    for entry in data["methods"]:
        params = entry.setdefault("params", {})
        params.update(SMALL.get(entry["method"], {}))
        if "retain" in params:
            params["retain"] = params["retain"] | {"count": 2, "concept_filter": "none"}
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a golf ball on grass\na church\n")
    data["suites"] = [str(prompts)]
    recipe = tmp_path / "baselines.yaml"
    recipe.write_text(yaml.safe_dump(data))
    run_dir = tmp_path / "run"
    for stage in ("unlearn", "generate"):
        done = subprocess.run([sys.executable, "-m", "harness", "benchmark", str(recipe), "--run-dir", str(run_dir),
                               "--stage", stage, "--device", "cpu", "--accelerator", "cpu"],
                              capture_output=True, text=True, timeout=800)
        assert done.returncode == 0, done.stderr[-3000:]
    for entry in data["methods"]:
        files = UnlearnFiles(run_dir / "unlearn" / entry["method"])
        record = read_record(UnlearnRecord, files.record)
        tensors = load_tensor_file(files.tensors)
        text_encoder = {n for n in tensors if n.startswith("text_encoder.")}
        if entry["method"] == "advunlearn":  # the text encoder only
            assert text_encoder and text_encoder == set(tensors), sorted(tensors)[:3]
        else:
            assert tensors and not text_encoder
        assert record.method == entry["method"]
        generated = read_record(GenerationRecord, GenerationFiles(run_dir / "images" / entry["method"] / "none" / "prompts").record)
        assert generated.count == 2 and len(generated.tensors) == 1, entry["method"]
