"""ConceptPrune: the skilled-neuron rule, the hooks (calls, CFG, GEGLU input) and a full run on a
tiny SD-shaped pipeline."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from harness.cli import main
from harness.errors import HarnessError
from harness.layout import UnlearnFiles
from harness.recipe import load_recipe
from harness.records import UnlearnRecord, read_record
from harness.settings.generate import GenerationSettings
from harness.settings.unlearn import ConceptSettings
from harness.unlearn.activations import ColumnNormRecorder, TooFewCalls, column_norms
from harness.unlearn.conceptprune import skilled_mask
from harness.unlearn.job import UnlearnJob
from harness.unlearn.run import run as run_unlearning

GENERATION = GenerationSettings(steps=3, guidance=7.5, height=64, width=64, batch_size=4)


def test_skilled_mask_takes_row_top_k_where_target_beats_base() -> None:
    weight = torch.tensor([[1.0, -2.0, 3.0, 0.5], [4.0, 1.0, -1.0, 1.0]])
    base = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    target = torch.tensor([[2.0, 0.5, 2.0, 9.0]])
    # scores row 0: target |w|*t = [2, 1, 6, 4.5] -> top-2 columns 2, 3; both beat base [1, 2, 3, .5]
    # row 1: [8, .5, 2, 9] -> columns 3, 0; both beat base [4, 1, 1, 1]
    mask = skilled_mask(weight, base, target, k=2)
    assert mask.tolist() == [[False, False, True, True], [True, False, False, True]]
    # where the target does not beat the base, a top-k column is left alone
    lower = torch.tensor([[0.5, 0.5, 0.5, 9.0]])
    assert skilled_mask(weight, base, lower, k=2).tolist() == [[False, False, False, True], [False, False, False, True]]


def test_skilled_mask_is_the_union_over_calls() -> None:
    weight = torch.ones(1, 4)
    base = torch.ones(2, 4)
    target = torch.tensor([[5.0, 2.0, 0.0, 0.0], [0.0, 0.0, 2.0, 5.0]])
    assert skilled_mask(weight, base, target, k=1).tolist() == [[True, False, False, True]]


def test_recorder_sees_the_geglu_output_for_every_unet_call_including_the_unconditional_half(
        tiny_sd_pipeline, tiny_ffn_layers) -> None:
    pipeline = tiny_sd_pipeline()
    layer = tiny_ffn_layers[0]
    geglu = pipeline.unet.get_submodule(layer.replace("ff.net.2.weight", "ff.net.0"))
    outputs: list[torch.Tensor] = []
    geglu.register_forward_hook(lambda module, args, out: outputs.append(out.detach().clone()))
    recorder = ColumnNormRecorder(pipeline.unet, [layer], calls=2)
    with recorder, torch.no_grad():
        recorder.run(pipeline, GENERATION.pipeline_kwargs(["a cat", "a dog"], [0, 0]))
    assert len(outputs) == 2  # stopped after the second UNet call
    for call, out in enumerate(outputs):
        assert out.shape[0] == 4  # 2 prompts x (unconditional + conditional)
        rows = torch.nn.functional.normalize(out.reshape(-1, out.shape[-1]).float(), dim=1)
        torch.testing.assert_close(recorder.sums[layer][call], (rows**2).sum(0))
        assert recorder.rows[layer][call] == rows.shape[0]
    norms = recorder.norms()[layer]
    assert norms.shape == (2, 64) and norms.dtype == torch.float32
    # token rows are unit vectors, so the mean squared column norms sum to one per call
    torch.testing.assert_close((norms**2).sum(1), torch.ones(2))


def test_pndm_makes_steps_plus_one_unet_calls_and_asking_more_is_an_error(tiny_sd_pipeline, tiny_ffn_layers) -> None:
    pipeline = tiny_sd_pipeline()
    norms = column_norms(pipeline, tiny_ffn_layers, ["a cat"], calls=4, generation=GENERATION, seeds=[0])
    assert all(n.shape[0] == 4 and torch.all(n[3] > 0) for n in norms.values())
    with pytest.raises(TooFewCalls, match="made 4 UNet calls, fewer than the 5"):
        column_norms(pipeline, tiny_ffn_layers, ["a cat"], calls=5, generation=GENERATION, seeds=[0])


def test_column_norms_do_not_depend_on_batching(tiny_sd_pipeline, tiny_ffn_layers) -> None:
    pipeline = tiny_sd_pipeline()
    prompts = ["a cat", "a dog in a park", "a car"]
    seeds = [0, 0, 0]
    one = column_norms(pipeline, tiny_ffn_layers[:1], prompts, 2, dataclasses.replace(GENERATION, batch_size=1), seeds)
    three = column_norms(pipeline, tiny_ffn_layers[:1], prompts, 2, dataclasses.replace(GENERATION, batch_size=3), seeds)
    torch.testing.assert_close(one[tiny_ffn_layers[0]], three[tiny_ffn_layers[0]], rtol=1e-4, atol=1e-5)


def _words(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    (data / "common_scenes.txt").write_text("road\ngarden \n\nbeach\n")
    return data


def test_conceptprune_zeroes_exactly_the_mask_and_leaves_the_pipeline_alone(tmp_path: Path, method_context, run_method,
                                                                            tiny_sd_pipeline, tiny_ffn_layers) -> None:
    pipeline = tiny_sd_pipeline()
    before = {n: p.detach().clone() for n, p in pipeline.unet.named_parameters()}
    context = method_context(pipeline, ConceptSettings(target="golf ball", kind="object"), tiny_ffn_layers,
                             GENERATION, data_dir=_words(tmp_path), source="r.yaml")
    result = run_method("conceptprune", context, {"skill_ratio": 0.05, "tau": 2})
    assert result.info["prompts"]["target"] == ["a golf ball in a road", "a golf ball in a garden", "a golf ball in a beach"]
    assert result.info["k"][tiny_ffn_layers[0]] == 3  # int(0.05 * 64)
    for name in tiny_ffn_layers:
        mask = result.masks[name]
        assert mask.dtype == torch.bool and mask.any()
        assert int(mask.sum(1).max()) <= 2 * result.info["k"][name]  # at most k per row per call
        assert torch.all(result.tensors[name][mask] == 0)
        torch.testing.assert_close(result.tensors[name][~mask], before[name][~mask])
    for name, parameter in pipeline.unet.named_parameters():
        assert torch.equal(parameter, before[name])


def test_more_images_per_prompt_see_more_seeds(tmp_path: Path, tiny_sd_pipeline, tiny_ffn_layers) -> None:
    pipeline = tiny_sd_pipeline()
    one = column_norms(pipeline, tiny_ffn_layers[:1], ["a cat"], 2, GENERATION, [0])[tiny_ffn_layers[0]]
    two = column_norms(pipeline, tiny_ffn_layers[:1], ["a cat", "a cat"], 2, GENERATION, [0, 1])[tiny_ffn_layers[0]]
    other = column_norms(pipeline, tiny_ffn_layers[:1], ["a cat"], 2, GENERATION, [1])[tiny_ffn_layers[0]]
    # the mean over two seeds' squared norms is the average of each seed's
    torch.testing.assert_close(two**2, (one**2 + other**2) / 2, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(one, other)


def test_conceptprune_param_errors_name_the_key(tmp_path: Path, method_context, run_method, tiny_sd_pipeline,
                                                tiny_ffn_layers) -> None:
    context = method_context(tiny_sd_pipeline(), ConceptSettings(target="golf ball", kind="object"), tiny_ffn_layers,
                             GENERATION, data_dir=_words(tmp_path), source="r.yaml")
    with pytest.raises(HarnessError, match=r"r.yaml: methods\[0\].params: unknown key 'skill_ratoi'"):
        run_method("conceptprune", context, {"skill_ratoi": 0.1})
    with pytest.raises(HarnessError, match=r"methods\[0\].params.skill_ratio: 0.001 x 64 input features .* k = 0"):
        run_method("conceptprune", context, {"skill_ratio": 0.001})
    with pytest.raises(HarnessError, match=r"r.yaml: methods\[0\].params.tau: generation made 4 UNet calls"):
        run_method("conceptprune", context, {"tau": 9})


def test_unlearn_command_writes_tensors_mask_and_record(tmp_path: Path, shared_data: Path, tiny_conceptprune_recipe,
                                                        tiny_ffn_layers) -> None:
    recipe = tiny_conceptprune_recipe(tmp_path)
    out = tmp_path / "out"
    assert main(["unlearn", "--recipe", str(recipe), "--out", str(out), "--data-dir", str(shared_data), "--device", "cpu"]) == 0
    files = UnlearnFiles(out)
    tensors = load_file(files.tensors)
    masks = load_file(files.mask)
    record = read_record(UnlearnRecord, files.record)
    assert sorted(tensors) == sorted(masks) == sorted(tiny_ffn_layers)
    assert all(m.dtype == torch.uint8 for m in masks.values())
    assert all(torch.all(tensors[n][masks[n].bool()] == 0) for n in tensors)
    assert record.changed == sum(int(m.sum()) for m in masks.values()) > 0
    assert record.params == {"skill_ratio": 0.05, "tau": 2, "seed": 0, "images_per_prompt": 1}
    assert len(record.info["prompts"]["base"]) == 12  # common_scenes.txt
    assert [r.name for r in record.layers] == tiny_ffn_layers
    assert record.seeds["generation.fixed_seed"] == 0 and "versions" in record.provenance
    assert 0 < record.fraction_of_unet < record.fraction_of_layers < 1


def test_same_recipe_same_files(tmp_path: Path, save_tiny_sd_pipeline) -> None:
    model = save_tiny_sd_pipeline(tmp_path / "pipe")
    data = _words(tmp_path)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"name: tiny\nmodel: {model}\nconcept: {{target: golf ball, kind: object, data_dir: {data}}}\n"
        "methods: [{method: conceptprune, params: {skill_ratio: 0.05, tau: 2}}]\n"
        "generation: {steps: 3, height: 64, width: 64}\n"
    )
    first = run_unlearning(UnlearnJob.from_recipe(load_recipe(recipe), None, tmp_path / "a"))
    second = run_unlearning(UnlearnJob.from_recipe(load_recipe(recipe), None, tmp_path / "b"))
    a, b = load_file(UnlearnFiles(tmp_path / "a").mask), load_file(UnlearnFiles(tmp_path / "b").mask)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert first.key == second.key and first.changed == second.changed


def test_the_same_code_path_runs_on_the_world_pipeline(method_context, run_method) -> None:
    from harness.models.layers import select_layers
    from harness.settings.unlearn import SD_FFN_LAYERS
    from harness.worlds.digits.pipeline import build_untrained_pipeline

    pipeline = build_untrained_pipeline()
    layers = select_layers(dict(pipeline.unet.named_parameters()), SD_FFN_LAYERS)
    assert len(layers) == 7
    context = method_context(pipeline, ConceptSettings(target="seven", kind="digit"), layers,
                             GenerationSettings(steps=3, guidance=3.0, scheduler=None), source="w.yaml")
    result = run_method("conceptprune", context, {"skill_ratio": 0.02, "tau": 3})  # DDIM: one UNet call per step
    assert result.info["k"][layers[0]] == 5  # int(0.02 * 256)
    assert result.info["prompts"]["target"][0] == "a photo of the digit seven"
    assert all(result.masks[n].any() and torch.all(result.tensors[n][result.masks[n]] == 0) for n in layers)
    with pytest.raises(HarnessError, match=r"w.yaml: methods\[0\].params.tau: generation made 3 UNet calls"):
        run_method("conceptprune", context, {"tau": 4})


def test_unlearn_rerun_with_the_same_settings_reuses_and_a_changed_one_recomputes(tmp_path: Path,
                                                                                   save_tiny_sd_pipeline) -> None:
    model = save_tiny_sd_pipeline(tmp_path / "pipe")
    data = _words(tmp_path)
    recipe = tmp_path / "r.yaml"
    text = (f"name: tiny\nmodel: {model}\nconcept: {{target: golf ball, kind: object, data_dir: {data}}}\n"
            "methods: [{method: conceptprune, params: {skill_ratio: RATIO, tau: 2}}]\n"
            "generation: {steps: 3, height: 64, width: 64}\n")
    recipe.write_text(text.replace("RATIO", "0.05"))
    out = tmp_path / "out"
    args = ["unlearn", "--recipe", str(recipe), "--out", str(out), "--device", "cpu"]
    assert main(args) == 0
    files = UnlearnFiles(out)
    first, stamp = read_record(UnlearnRecord, files.record), files.tensors.stat().st_mtime_ns
    assert main(args) == 0
    assert files.tensors.stat().st_mtime_ns == stamp and read_record(UnlearnRecord, files.record) == first
    recipe.write_text(text.replace("RATIO", "0.3"))
    assert main(args) == 0
    second = read_record(UnlearnRecord, files.record)
    assert second.key != first.key and second.params["skill_ratio"] == 0.3 and second.changed > first.changed


def test_tau_is_checked_against_the_samplers_unet_calls_before_any_work(tmp_path: Path) -> None:
    """PNDM as SD configures it makes steps + 1 UNet calls: tau 10 needs 9 steps, not 10; DDIM one per step."""
    from harness.models.pipelines import unet_calls
    from harness.unlearn.conceptprune import check_tau

    assert unet_calls("owner/not-cached", "PNDMScheduler", 9) == (10, "PNDMScheduler")
    assert unet_calls("zoo:digits", None, 9) == (9, "DDIMScheduler")
    assert unet_calls(str(tmp_path), None, 7) == (7, None)  # no scheduler at hand: the bound every sampler meets
    check_tau(10, "owner/not-cached", GenerationSettings(steps=9))
    with pytest.raises(HarnessError, match=r"tau 10 needs at least 9 sampling steps with PNDMScheduler \(10 UNet calls\); "
                                           r"generation.steps is 5 \(6 calls\)"):
        check_tau(10, "owner/not-cached", GenerationSettings(steps=5))
    with pytest.raises(HarnessError, match="tau 10 needs at least 10 sampling steps with DDIMScheduler"):
        check_tau(10, "zoo:digits", GenerationSettings(steps=9, scheduler=None))
