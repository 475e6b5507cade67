"""ESD, AC and DiMUM as methods and DiMRA as an attack, each for a few steps on a tiny randomly
initialised SD pipeline (the real code path: names, timesteps, trainable presets) and on the
world where their data come from it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from harness.attack.job import AttackJob
from harness.attack.run import run as run_attack
from harness.errors import HarnessError
from harness.layout import AttackFiles
from harness.recipe import load_recipe
from harness.registry import resolve
from harness.runtime import RuntimeSettings
from harness.settings.generate import GenerationSettings
from harness.unlearn.job import UnlearnJob
from harness.unlearn.run import run as run_unlearning

GENERATION = "{steps: 3, guidance: 3.0, height: 64, width: 64, batch_size: 4}"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, save_tiny_sd_pipeline) -> Path:
    return save_tiny_sd_pipeline(tmp_path_factory.mktemp("sd") / "pipe")


def recipe(tmp_path: Path, model: Path, method: str, anchor: str = "a photo of a ball") -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(f"name: t\nmodel: {model}\nconcept: {{target: golf ball, kind: object, anchor: {anchor}}}\n"
                    f"methods: [{method}]\ngeneration: {GENERATION}\n")
    return path


@pytest.mark.parametrize(("method", "touched"), [
    ("{method: esd, params: {steps: 3, ddim_steps: 4, checkpoint_every: 2}}", ".attn2."),
    ("{method: esd, params: {steps: 2, ddim_steps: 4, trainable: esd-u}}", "not-attn2"),
    ("{method: ac, params: {steps: 3, anchor_samples: 2}}", ".attn2.to_"),
    ("{method: dimum, params: {steps: 3, alternative_samples: 2, batch_size: 2, trainable: esd-x, "
     "alternative_filter: none, retain: {source: prompts, prompts: [a photo of a cat, a photo of a dog], "
     "concept_filter: none}}}", ".attn2."),
])
def test_each_method_trains_only_what_it_names_on_a_tiny_sd_pipeline(tiny: Path, tmp_path: Path, method: str,
                                                                      touched: str) -> None:
    from harness.models.pipelines import load_pipeline

    record = run_unlearning(UnlearnJob.from_recipe(load_recipe(recipe(tmp_path, tiny, method)), None,
                                                    tmp_path / "out", RuntimeSettings(device="cpu")))
    from safetensors.torch import load_file

    from harness.layout import UnlearnFiles


    tensors = load_file(UnlearnFiles(tmp_path / "out").tensors)
    before = dict(load_pipeline(str(tiny)).unet.named_parameters())
    changed = [n for n, t in tensors.items() if not torch.equal(t, before[n].detach().float())]
    assert changed and record.changed > 0 and record.info["steps"] == record.params["steps"]
    if touched == "not-attn2":
        assert not any(".attn2." in n for n in tensors)
    else:
        assert all(touched in n for n in tensors)
    assert torch.isfinite(torch.tensor(record.info["final_loss"])) and record.info["train_seconds"] > 0


class FirstIsTheConcept(torch.nn.Module):
    """A stand-in classifier: the first image of every call is a golf ball, the rest cats."""

    class_names = ["golf ball", "cat"]

    def predict(self, images: torch.Tensor) -> list[str]:
        assert images.dtype == torch.uint8 and images.shape[1:] == (3, 64, 64)  # decoded through the VAE
        return ["golf ball"] + ["cat"] * (len(images) - 1)


def test_dimum_drops_alternatives_the_classifier_names_as_the_concept(tiny: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import harness.score.metrics.classifiers as classifiers

    asked = []
    monkeypatch.setattr(classifiers, "load_image_classifier",
                        lambda name, weights: asked.append((name, weights)) or FirstIsTheConcept())
    method = ("{method: dimum, params: {steps: 1, alternative_samples: 3, batch_size: 2, trainable: esd-x, "
              "retain: {source: prompts, prompts: [a photo of a cat], concept_filter: none}}}")
    record = run_unlearning(UnlearnJob.from_recipe(load_recipe(recipe(tmp_path, tiny, method)), None,
                                                    tmp_path / "out", RuntimeSettings(device="cpu")))
    assert asked == [("resnet50", None)]  # auto: ResNet-50 for an object on SD
    assert record.info["alternatives_filtered"] == {"classifier": "resnet50", "dropped": 1, "kept": 2}


def test_ac_and_dimum_need_an_anchor(tiny: Path, tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(f"name: t\nmodel: {tiny}\nconcept: {{target: golf ball, kind: object}}\n"
                    f"methods: [{{method: ac, params: {{steps: 1}}}}]\ngeneration: {GENERATION}\n")
    with pytest.raises(HarnessError, match="concept.anchor: this method maps the concept onto an anchor"):
        run_unlearning(UnlearnJob.from_recipe(load_recipe(path), None, tmp_path / "out", RuntimeSettings(device="cpu")))


def _folder(tmp_path: Path, captions: list[str]) -> Path:
    folder = tmp_path / "aux"
    folder.mkdir()
    for i, caption in enumerate(captions):
        Image.new("RGB", (48, 40), (40 * i, 90, 200)).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(caption)
    return folder


def test_dimra_relearns_from_a_folder_and_writes_its_curve(tiny: Path, tmp_path: Path) -> None:
    folder = _folder(tmp_path, ["a photo of a cat", "a photo of a dog", "a red car"])
    job = AttackJob(attack="dimra", params=resolve("attack", "dimra").parse({
        "steps": 4, "curve_every": 2, "checkpoint_every": 2, "batch_size": 2,
        "data": {"source": "folder", "path": str(folder)}}),
        model=str(tiny), unlearned_files=[], out=tmp_path / "attack", runtime=RuntimeSettings(device="cpu"),
        generation=GenerationSettings(steps=2, height=64, width=64),
        concept=load_recipe(recipe(tmp_path, tiny, "{method: conceptprune}")).concept)
    record = run_attack(job)
    files = AttackFiles(tmp_path / "attack")
    # the curve's points before the final step; the final model is the attacked model itself
    assert record.applicable and record.info["snapshots"] == [2] and record.info["data_samples"] == 3
    assert files.snapshot(2).is_file() and not files.snapshot(4).is_file() and files.tensors.is_file()
    assert not files.checkpoints.exists()


def test_dimra_refuses_data_that_names_the_erased_concept(tiny: Path, tmp_path: Path) -> None:
    folder = _folder(tmp_path, ["a photo of a cat", "a golf ball on grass"])
    job = AttackJob(attack="dimra",
                    params=resolve("attack", "dimra").parse({"steps": 2, "data": {"source": "folder", "path": str(folder)}}),
                    model=str(tiny), unlearned_files=[], out=tmp_path / "attack", runtime=RuntimeSettings(device="cpu"),
                    generation=GenerationSettings(steps=2, height=64, width=64),
                    concept=load_recipe(recipe(tmp_path, tiny, "{method: conceptprune}")).concept)
    with pytest.raises(HarnessError, match="1 of its prompts name the erased concept 'golf ball'"):
        run_attack(job)
    assert not AttackFiles(tmp_path / "attack").record.exists()


def test_dimra_on_the_world_never_sees_the_erased_class(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.attack.interface import AttackContext
    from harness.settings.unlearn import ConceptSettings
    from harness.train.data import DataSpec
    from harness.worlds.digits.store import ensure_world

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    ensure_world()
    job = AttackJob(attack="dimra", params=None, model="zoo:digits", unlearned_files=[], out=tmp_path,
                    generation=GenerationSettings(steps=2, scheduler=None),
                    concept=ConceptSettings(target="seven", kind="digit"))
    context = AttackContext(job=job, device=torch.device("cpu"), scratch=tmp_path, reads=frozenset())
    data = context.auxiliary_set(context.pipeline(), DataSpec())
    assert "seven" not in data.labels and len(set(data.labels)) == 9
    assert not any("seven" in p or " 7" in p for p in data.prompts)
    assert data.inputs.shape[1:] == (1, 16, 16) and data.inputs.min() >= -1 and data.inputs.max() <= 1
