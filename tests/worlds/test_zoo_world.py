"""The world's folder: a reduced build, the shipped world, the classifier, `zoo:` names and the CLI."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from harness.cli import main
from harness.errors import HarnessError
from harness.models.checkpoints import resolve_local
from harness.worlds.digits import store as world
from harness.worlds.digits.classifier import load_classifier
from harness.worlds.digits.data import concept_prompts, heldout_digits
from harness.worlds.digits.pipeline import DigitsPipeline, build_untrained_pipeline
from harness.worlds.digits.store import (
    PIPELINE_DIR,
    REPORT_FILE,
    SHIPPED_DIR,
    SHIPPED_MARKER,
    BuildSettings,
    build_world,
    ensure_world,
    is_complete,
    world_dir,
)
from harness.worlds.digits.train import (
    TrainSettings,
    feed_forward_hidden,
    feed_forwards_off,
    routing_loss,
    selectivity_loss,
    starting_pipeline,
)


@pytest.fixture(scope="module")
def reduced_world(tmp_path_factory):
    """A world built with a few steps: the real build path, end to end, in seconds (world training:
    every test that asks for it is marked slow)."""
    folder = tmp_path_factory.mktemp("cache") / "zoo" / "digits"
    train = TrainSettings(steps=4, batch_size=8, eval_every=2, eval_per_digit=1, eval_steps=2, ffn_routing=1.0,
                          ffn_selectivity=0.5)
    report = build_world(folder, BuildSettings(train=train, classifier_epochs=3, eval_per_digit=2, eval_steps=2))
    return folder, report


@pytest.fixture(scope="module")
def shipped_world(tmp_path_factory):
    return ensure_world(tmp_path_factory.mktemp("cache"))


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_reduced_build_writes_a_complete_world_and_its_report(reduced_world) -> None:
    folder, report = reduced_world
    assert is_complete(folder)
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]
    on_disk = json.loads((folder / REPORT_FILE).read_text())
    assert on_disk["build_command"] == "harness zoo build digits --steps 4 --seed 0 --ffn-routing 1.0 --ffn-selectivity 0.5"
    assert [h["step"] for h in on_disk["generation_history"]] == [2, 4]
    assert set(on_disk["generation_history"][0]["accuracy_by_guidance"]) == {"1.0", "3.0"}
    assert set(on_disk["generation_accuracy"]["per_digit"]) == {str(d) for d in range(10)}
    assert on_disk["settings"]["train"]["steps"] == 4 and on_disk["provenance"]["versions"]["torch"]
    assert report["classifier"] == json.loads((folder / "classifier.json").read_text())


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_reduced_classifier_beats_chance_on_heldout_real_digits(reduced_world) -> None:
    folder, _ = reduced_world
    classifier = load_classifier(folder)
    images, labels = heldout_digits(16)
    with torch.no_grad():
        accuracy = (classifier(images).argmax(1) == labels).float().mean().item()
    assert accuracy > 0.6  # chance is 0.1
    assert classifier.features(images[:5]).shape == (5, 128)
    rgb_big = images[:5].repeat(1, 3, 2, 2)
    assert classifier(rgb_big).shape == (5, 10)


def test_shipped_world_installs_and_meets_its_quality_bar(shipped_world) -> None:
    assert is_complete(SHIPPED_DIR), "the package must ship the trained digits world"
    classifier = load_classifier(shipped_world)
    images, labels = heldout_digits(16)
    with torch.no_grad():
        assert (classifier(images).argmax(1) == labels).float().mean().item() >= 0.97
    pipeline = DigitsPipeline.from_pretrained(shipped_world / PIPELINE_DIR)
    assert pipeline.unet.dtype == torch.float32
    prompts = [concept_prompts(d)[0] for d in range(10) for _ in range(2)]
    generators = [torch.Generator().manual_seed(1000 * d + i) for d in range(10) for i in range(2)]
    images = pipeline(prompts, generator=generators, output_type="pt").images
    with torch.no_grad():
        predicted = classifier(images).argmax(1)
    assert (predicted == torch.arange(10).repeat_interleave(2)).float().mean().item() >= 0.8


def test_ensure_world_is_idempotent(shipped_world) -> None:
    stamp = (shipped_world / REPORT_FILE).stat().st_mtime_ns
    assert ensure_world(shipped_world.parent.parent) == shipped_world
    assert (shipped_world / REPORT_FILE).stat().st_mtime_ns == stamp


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_cache_holding_older_shipped_weights_is_installed_again(tmp_path, reduced_world, monkeypatch) -> None:
    folder = ensure_world(tmp_path / "old")
    shipped_report = (folder / REPORT_FILE).read_bytes()
    (folder / REPORT_FILE).write_text("{}")
    (folder / SHIPPED_MARKER).write_text("digest of older weights\n")
    assert ensure_world(tmp_path / "old") == folder
    assert (folder / REPORT_FILE).read_bytes() == shipped_report
    assert is_complete(folder) and not [p for p in folder.parent.iterdir() if p.name.startswith(".")]
    (folder / REPORT_FILE).write_text("{}")  # installed before installs were marked
    (folder / SHIPPED_MARKER).unlink()
    monkeypatch.setattr(world, "EARLIER_SHIPPED_REPORTS", {hashlib.sha256(b"{}").hexdigest()})
    assert ensure_world(tmp_path / "old") == folder
    assert (folder / REPORT_FILE).read_bytes() == shipped_report and (folder / SHIPPED_MARKER).is_file()
    built, _ = reduced_world  # a world the user built has no marker and is kept
    assert not (built / SHIPPED_MARKER).exists()
    stamp = (built / REPORT_FILE).stat().st_mtime_ns
    assert ensure_world(built.parent.parent) == built and (built / REPORT_FILE).stat().st_mtime_ns == stamp


def test_a_zoo_source_names_the_worlds_pipeline_folder(shipped_world, monkeypatch) -> None:
    monkeypatch.setenv("HARNESS_CACHE", str(shipped_world.parent.parent))
    assert resolve_local("zoo:digits") == shipped_world / PIPELINE_DIR
    assert world_dir() == shipped_world
    with pytest.raises(HarnessError, match="zoo:letters: unknown world 'letters' \\(known: digits\\)"):
        resolve_local("zoo:letters")


def test_cli_info_and_bad_input(shipped_world, capsys) -> None:
    assert main(["zoo", "info", "digits", "--cache-dir", str(shipped_world.parent.parent)]) == 0
    out = capsys.readouterr().out
    assert "present" in out and "classifier held-out top-1" in out and "per digit: 0:" in out
    assert main(["zoo", "build", "letters"]) == 2
    assert main(["zoo", "build", "digits", "--steps", "0"]) == 2
    assert "--steps: expected a positive number" in capsys.readouterr().err
    assert main(["zoo", "build", "digits", "--ffn-routing", "-1"]) == 2
    assert "--ffn-routing: expected a weight >= 0, got -1.0" in capsys.readouterr().err
    assert main(["zoo", "build", "digits", "--ffn-selectivity", "-0.5"]) == 2
    assert "--ffn-selectivity: expected a weight >= 0, got -0.5" in capsys.readouterr().err
    assert main(["zoo", "build", "digits", "--init-from", "/nonexistent/world"]) == 2
    assert "--init-from /nonexistent/world: not a world or pipeline folder" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_warm_start_begins_from_the_given_world(reduced_world, tmp_path) -> None:
    folder, _ = reduced_world
    saved = DigitsPipeline.from_pretrained(folder / PIPELINE_DIR).unet.state_dict()
    for init_from in (folder, folder / PIPELINE_DIR):
        warm = starting_pipeline(TrainSettings(init_from=str(init_from))).unet.state_dict()
        assert all(torch.equal(warm[name], saved[name]) for name in saved)
    fresh = starting_pipeline(TrainSettings()).unet.state_dict()
    assert not all(torch.equal(fresh[name], saved[name]) for name in saved)
    with pytest.raises(HarnessError, match=f"--init-from {tmp_path}: not a world or pipeline folder"):
        starting_pipeline(TrainSettings(init_from=str(tmp_path)))


def test_routing_loss_measures_the_prompt_without_the_feed_forwards() -> None:
    unet = build_untrained_pipeline(0).unet
    generator = torch.Generator().manual_seed(0)
    noisy = torch.randn(2, 1, 16, 16, generator=generator)
    t = torch.tensor([10, 500])
    context, empty = torch.randn(2, 2, 16, 64, generator=generator)
    with torch.no_grad():
        plain = unet(noisy, t, encoder_hidden_states=context).sample
        with feed_forwards_off(unet):
            switched_off = unet(noisy, t, encoder_hidden_states=context).sample
        for name, parameter in unet.named_parameters():
            if ".ff.net.2." in name:
                parameter.zero_()
        assert torch.allclose(switched_off, unet(noisy, t, encoder_hidden_states=context).sample, atol=1e-6)
        assert not torch.allclose(plain, switched_off, atol=1e-3)
        assert routing_loss(unet, noisy, t, context, empty) > 1e-6
        for name, parameter in unet.named_parameters():
            if name.endswith("attn2.to_v.weight"):
                parameter.zero_()
        assert routing_loss(unet, noisy, t, context, empty) < 1e-10


def test_selectivity_loss_is_minus_log_the_share_of_activation_in_the_named_digits_units() -> None:
    owner = torch.arange(40) % 10
    named = torch.tensor([7, 2, -1])
    own_only = torch.zeros(3, 5, 40)
    own_only[0, :, owner == 7] = 2.0
    own_only[1, :, owner == 2] = 1.0
    own_only[2, :, 0] = 1.0  # the empty prompt's activation is left out
    assert selectivity_loss([own_only], named) == 0
    leaking = own_only.clone()
    leaking[0, :, owner == 3] = -0.5  # digit 3's units answer a prompt for seven
    seven_share = 2.0 / (2.0 + 0.5)
    expected = -torch.tensor(seven_share).log() / 2  # the prompt for two still keeps all of it
    assert torch.isclose(selectivity_loss([leaking], named), expected)
    assert torch.isclose(selectivity_loss([10 * leaking], named), expected)
    assert torch.isclose(selectivity_loss([leaking, own_only], named), expected / 2)
    assert selectivity_loss([own_only], torch.tensor([-1, -1, -1])) == 0


def test_selectivity_loss_pulls_hardest_on_the_quietest_digits_units() -> None:
    owner = torch.arange(20) % 10
    activation = torch.ones(2, 1, 20)
    activation[1, :, owner == 3] = 0.01  # digit 3's units are nearly dead
    activation.requires_grad_(True)
    selectivity_loss([activation], torch.tensor([1, 3])).backward()
    assert activation.grad[1, 0, owner == 3].mean() < 50 * activation.grad[0, 0, owner == 1].mean() < 0


def test_feed_forward_hidden_collects_every_geglu_output() -> None:
    unet = build_untrained_pipeline(0).unet
    with torch.no_grad(), feed_forward_hidden(unet) as hidden:
        unet(torch.randn(2, 1, 16, 16), torch.tensor([1, 2]), encoder_hidden_states=torch.randn(2, 16, 64))
    assert [h.shape for h in hidden] == [(2, 64, 256), (2, 16, 256), (2, 16, 256), (2, 16, 256),
                                         (2, 16, 256), (2, 64, 256), (2, 64, 256)]


def test_a_world_without_seven_never_sees_a_seven_and_keeps_the_installed_text_encoder(monkeypatch) -> None:
    """The control world of DiMRA's matrix: no image and no prompt of the excluded digit, the
    installed world's text encoder unchanged, so its UNet is a `checkpoint` row beside it."""
    import harness.worlds.digits.train as train

    named = []
    choose = train._choose_prompts
    monkeypatch.setattr(train, "_choose_prompts", lambda labels, *a: named.extend(labels.tolist()) or choose(labels, *a))
    pipeline, _ = train.train_generator(TrainSettings(steps=3, batch_size=16, eval_every=0, exclude=(7,)),
                                        frozen_text_encoder=world.installed_text_encoder())
    assert len(named) == 3 * (16 + 8) and 7 not in named and len(set(named)) > 5  # images' and selectivity's prompts
    installed = DigitsPipeline.from_pretrained(ensure_world() / PIPELINE_DIR).text_encoder.state_dict()
    assert all(torch.equal(t, installed[n]) for n, t in pipeline.text_encoder.state_dict().items())
    fresh = starting_pipeline(TrainSettings()).unet.state_dict()
    assert not all(torch.equal(t, fresh[n]) for n, t in pipeline.unet.state_dict().items())  # the UNet trained


def test_exclude_names_a_digit(capsys) -> None:
    assert main(["zoo", "build", "digits", "--exclude", "eleven"]) == 2
    assert "--exclude eleven: not a digit (choose from zero, one" in capsys.readouterr().err
