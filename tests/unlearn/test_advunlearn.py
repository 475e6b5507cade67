"""AdvUnlearn (`advunlearn`) on the tiny SD pipeline, called directly with a context whose layers
are the prefixed text-encoder names: what trains (the text encoder's layers, never the UNet or the
embeddings), the inner attack lowering its own loss, the warm-up schedule, the ESD loss falling,
the retain prompts, and bad params."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from harness.errors import HarnessError
from harness.recipe import load_recipe
from harness.registry import BUILTIN
from harness.settings.generate import GenerationSettings
from harness.settings.unlearn import ConceptSettings
from harness.unlearn.advunlearn import (
    ADVUNLEARN_LAYERS,
    PREFIX,
    AdvUnlearnObjective,
    AdvUnlearnParams,
    Originals,
    advunlearn,
    retain_prompts,
)
from harness.unlearn.method import resolve_method

GENERATION = GenerationSettings(steps=2, guidance=3.0, height=64, width=64, batch_size=4)
FAST = {"ddim_steps": 4, "retain_batch": 2}


def te_layers(pipeline) -> list[str]:
    """The prefixed names the default globs select (as the unlearn stage on main gives them)."""
    import fnmatch

    names = [PREFIX + n for n, _ in pipeline.text_encoder.named_parameters()]
    return [n for n in names if any(fnmatch.fnmatch(n, g) for g in ADVUNLEARN_LAYERS)]


def context_for(pipeline, method_context, tmp_path: Path, layers=None, target: str = "golf ball"):
    return method_context(pipeline, ConceptSettings(target=target, kind="object"),
                          te_layers(pipeline) if layers is None else layers, GENERATION, scratch=tmp_path / "scratch")


def test_advunlearn_is_registered_with_text_encoder_layers(tiny_sd_pipeline) -> None:
    plugin = resolve_method("advunlearn")
    assert "advunlearn" in BUILTIN["method"] and plugin.target is advunlearn
    assert list(plugin.layers) == ADVUNLEARN_LAYERS
    names = [n for n, _ in tiny_sd_pipeline(seed=0).text_encoder.named_parameters()]
    chosen = {n[len(PREFIX):] for n in te_layers(tiny_sd_pipeline(seed=0))}
    assert chosen == {n for n in names if "embeddings" not in n}  # every layer and final_layer_norm
    assert any(n.startswith(("final_layer_norm", "text_model.final_layer_norm")) for n in chosen)


def test_only_the_text_encoders_layers_change_under_prefixed_names(tiny_sd_pipeline, method_context, run_method,
                                                                    tmp_path: Path) -> None:
    pipeline = tiny_sd_pipeline(seed=0)
    unet = {n: t.clone() for n, t in pipeline.unet.state_dict().items()}
    encoder = {n: p.detach().clone() for n, p in pipeline.text_encoder.named_parameters()}
    layers = te_layers(pipeline)
    result = run_method("advunlearn", context_for(pipeline, method_context, tmp_path),
                        {"iterations": 2, "warmup": 1, "attack_step": 2, "lr": 1.0e-3, **FAST})
    assert set(result.tensors) == set(result.masks) == set(layers)
    for name, tensor in result.tensors.items():
        original = encoder[name[len(PREFIX):]]
        assert tensor.device.type == "cpu" and tensor.shape == original.shape
        assert torch.equal(result.masks[name], tensor != original)
    assert all(bool(m.any()) for m in result.masks.values())  # every trained tensor moved
    assert all(torch.equal(t, pipeline.unet.state_dict()[n]) for n, t in unet.items())  # UNet frozen
    for name in ("embeddings.token_embedding.weight", "embeddings.position_embedding.weight"):
        assert torch.equal(dict(pipeline.text_encoder.named_parameters())[name], encoder[name])
    info = result.info
    assert info["iterations"] == 2 and info["optimizer_steps"] == 4  # iter: an update and a retain step each
    assert info["attack_rounds"] == 1 and info["attack_steps"] == 2 and info["clean_updates"] == 1
    assert info["trained_parameters"] == len(layers) and info["params"]["retain_train"] == "iter"


def test_warmup_iterations_train_on_the_clean_prompt(tiny_sd_pipeline, method_context, run_method, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    original = AdvUnlearnObjective.attack

    def counted(self, module, index, generator, first=False):
        calls.append(int(module.global_step) // self.params.period)
        assert first == (not calls[:-1])  # the first round starts from a random word
        return original(self, module, index, generator, first)

    monkeypatch.setattr(AdvUnlearnObjective, "attack", counted)
    pipeline = tiny_sd_pipeline(seed=0)
    result = run_method("advunlearn", context_for(pipeline, method_context, tmp_path),
                        {"iterations": 3, "warmup": 2, "attack_step": 1, "retain_train": "reg", **FAST})
    assert calls == [2] and result.info["clean_updates"] == 2 and result.info["optimizer_steps"] == 3
    calls.clear()
    result = run_method("advunlearn", context_for(pipeline, method_context, tmp_path / "b"),
                        {"iterations": 2, "warmup": 5, **FAST})
    assert calls == [] and result.info["warmup_covers_all"] and result.info["attack_rounds"] == 0


def objective_on(pipeline, params: AdvUnlearnParams, prompts: list[str]) -> tuple[AdvUnlearnObjective, SimpleNamespace]:
    targets = [n for n, _ in pipeline.text_encoder.named_parameters() if "embeddings" not in n]
    retain = ["a photo of a cat", "a photo of a dog"]
    objective = AdvUnlearnObjective(params, prompts, retain, targets, Originals.of(pipeline, prompts, retain), GENERATION)
    module = SimpleNamespace(pipeline=pipeline, unet=pipeline.unet, device=torch.device("cpu"), global_step=0)
    objective.prepare(module)
    return objective, module


def mean_attack_loss(objective: AdvUnlearnObjective, module, delta: torch.Tensor, draws: int = 8) -> float:
    generator = torch.Generator().manual_seed(123)
    with torch.no_grad():
        return sum(float(objective.attack_loss(module, delta, 0, generator)) for _ in range(draws)) / draws


def test_the_inner_attack_lowers_its_own_loss_and_leaves_the_encoder_alone(tiny_sd_pipeline) -> None:
    pipeline = tiny_sd_pipeline(seed=0)
    params = AdvUnlearnParams(attack_step=30, attack_lr=1.0e-1, ddim_steps=4)
    objective, module = objective_on(pipeline, params, ["golf ball"])
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # an "unlearned" encoder: E_theta moved away from E_orig, whose targets are fixed
        for name, parameter in pipeline.text_encoder.named_parameters():
            if "embeddings" not in name:
                parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator))
    before = {n: p.detach().clone() for n, p in pipeline.text_encoder.named_parameters()}
    start = objective.initial_delta(module, torch.Generator().manual_seed(0), first=True)
    # the start is a real word's input embedding
    assert any(torch.equal(start[0], row) for row in objective.prefix.word_table())
    generator = torch.Generator().manual_seed(0)
    found = objective.attack(module, 0, generator, first=True)
    assert found.shape == start.shape and not torch.equal(found, start)
    assert len(objective.record.attack_losses[0]) == 30
    after, before_attack = mean_attack_loss(objective, module, found), mean_attack_loss(objective, module, start)
    assert after < 0.9 * before_attack
    assert all(torch.equal(p, before[n]) and p.grad is None for n, p in pipeline.text_encoder.named_parameters())


def test_the_esd_loss_falls_on_the_concept(tiny_sd_pipeline, method_context, run_method, tmp_path: Path) -> None:
    from harness.unlearn.advunlearn import encode

    pipeline = tiny_sd_pipeline(seed=0)
    params = AdvUnlearnParams(ddim_steps=4, negative_guidance=1.0)
    objective, module = objective_on(pipeline, params, ["golf ball"])

    def esd_loss() -> float:
        generator = torch.Generator().manual_seed(7)
        with torch.no_grad():
            condition = encode(pipeline.text_encoder, objective.ids[:1])
            return sum(float(objective.unlearn_loss(module, generator, 0, condition, *objective.draw_t(generator)))
                       for _ in range(6)) / 6

    start = esd_loss()
    result = run_method("advunlearn", context_for(pipeline, method_context, tmp_path),
                        {"iterations": 30, "warmup": 30, "lr": 1.0e-3, "retain_train": "reg",
                         "retain_loss_w": 0.0, **FAST})
    encoder = dict(pipeline.text_encoder.named_parameters())
    with torch.no_grad():
        for name, tensor in result.tensors.items():
            encoder[name[len(PREFIX):]].copy_(tensor)
    end = esd_loss()
    assert end < 0.7 * start


def test_retain_prompts_default_to_coco_objects_or_the_worlds_other_digits(tiny_sd_pipeline, method_context) -> None:
    context = method_context(tiny_sd_pipeline(seed=0), ConceptSettings(target="golf ball", kind="object"), [], GENERATION)
    coco = retain_prompts(context, [])
    assert 20 <= len(coco) <= 40 and coco[0] == "a photo of chair" and all(p.startswith("a photo of ") for p in coco)
    assert retain_prompts(context, ["x"]) == ["x"]
    digits = method_context(tiny_sd_pipeline(seed=0), ConceptSettings(target="seven", kind="digit"), [], GENERATION)
    others = retain_prompts(digits, [])
    assert "a photo of the digit eight" in others and not any("seven" in p or "7" in p for p in others)


def test_a_pipeline_without_text_encoder_and_unet_layers_are_keyed_errors(tiny_sd_pipeline, method_context, run_method,
                                                                          tmp_path: Path) -> None:
    pipeline = tiny_sd_pipeline(seed=0)
    with pytest.raises(HarnessError, match=r"methods\[0\]\.layers: advunlearn trains the text encoder only") as caught:
        run_method("advunlearn", context_for(pipeline, method_context, tmp_path, layers=["mid_block.attentions.0.proj_in.weight"]),
                   {"iterations": 1})
    assert "\n" not in str(caught.value)
    pipeline.text_encoder = None
    with pytest.raises(HarnessError, match=r"methods\[0\]\.method: advunlearn trains the text encoder; the pipeline has none"):
        run_method("advunlearn", context_for(pipeline, method_context, tmp_path, layers=[]), {"iterations": 1})


@pytest.mark.parametrize(("params", "message"), [
    ("{iterations: 0}", r"methods\[0\]\.params: iterations "),
    ("{attack_step: 0}", r"methods\[0\]\.params: attack_step "),
    ("{retain_train: both}", r"methods\[0\]\.params\.retain_train: unknown value .both."),
    ("{attack_init: zeros}", r"methods\[0\]\.params\.attack_init: unknown value .zeros."),
    ("{warmup: -1}", r"methods\[0\]\.params: warmup "),
])
def test_bad_params_are_one_line_errors_naming_the_key(tmp_path: Path, params: str, message: str) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(f"name: t\nmodel: zoo:digits\nconcept: {{target: seven, kind: digit}}\n"
                    f"methods: [{{method: advunlearn, params: {params}}}]\n")
    with pytest.raises(HarnessError, match=message) as caught:
        load_recipe(path)
    assert "\n" not in str(caught.value)


def test_warmup_beyond_the_iterations_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("name: t\nmodel: zoo:digits\nconcept: {target: seven, kind: digit}\n"
                    "methods: [{method: advunlearn, params: {iterations: 5, warmup: 200}}]\n")
    assert load_recipe(path).methods[0].params["warmup"] == 200


def test_the_world_preset_loads() -> None:
    recipe = load_recipe("digits-advunlearn")
    assert [m.method for m in recipe.methods] == ["advunlearn", "advunlearn"]
