"""ESD holds one UNet (issue 23): the frozen prediction swaps in copies of the trained tensors only
(and skips learned masks), training reaches the weights the old frozen deepcopy gave, the diff
afterwards copies only the trained tensors, and the sampling latents follow the recipe's size."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from harness.settings.generate import GenerationSettings
from harness.settings.unlearn import ConceptSettings
from harness.train.engine import FineTuneModule, fine_tune
from harness.train.masking import MaskLearning, MaskObjective, detach_masks
from harness.unlearn.esd import ESDObjective, ESDParams
from harness.unlearn.training import _trained_before


class DeepcopyESD(ESDObjective):
    """ESD as it was before issue 23: the frozen prediction from a deep copy of the whole UNet."""

    def attach(self, module: FineTuneModule) -> None:
        self.copy = copy.deepcopy(module.unet).requires_grad_(False).eval()

    def frozen(self, module, z, t, context):
        return self.copy(z, t, encoder_hidden_states=context).sample


def _numel(tensors) -> int:
    return sum(t.numel() for t in tensors)


@pytest.mark.parametrize("trainable", ["esd-x", "esd-u"])
def test_esd_trains_to_the_weights_the_whole_frozen_copy_gave(tiny_sd_pipeline, tmp_path: Path, trainable: str) -> None:
    params = ESDParams(steps=3, ddim_steps=4, lr=1e-3, trainable=trainable, checkpoint_every=100, seed=0)
    outcomes = {}
    for name, objective in (("deepcopy", DeepcopyESD(["a golf ball"], params, 1)),
                            ("swapped", ESDObjective(["a golf ball"], params, 1))):
        outcomes[name] = fine_tune(tiny_sd_pipeline(seed=0), objective, params, tmp_path / name, name, name,
                                   torch.device("cpu"))
    old, new = outcomes["deepcopy"].tensors, outcomes["swapped"].tensors
    assert old.keys() == new.keys() and outcomes["swapped"].losses == pytest.approx(outcomes["deepcopy"].losses, rel=1e-5)
    moved = 0
    for name in old:
        torch.testing.assert_close(new[name], old[name], rtol=1e-5, atol=1e-7)
        moved += int((new[name] != dict(tiny_sd_pipeline(seed=0).unet.named_parameters())[name]).any())
    assert moved > 0


def test_the_frozen_unet_holds_copies_of_the_trained_tensors_only(tiny_sd_pipeline) -> None:
    pipeline = tiny_sd_pipeline(seed=0)
    unet = pipeline.unet
    unet_parameters, unet_buffers = _numel(unet.parameters()), _numel(unet.buffers())
    module = FineTuneModule(pipeline, "esd-x", ESDObjective(["a golf ball"], ESDParams(ddim_steps=4), 1), ESDParams())
    trained = dict(unet.named_parameters())
    assert module.trainable and all(".attn2." in n for n in module.trainable)
    assert module.originals.numel() == _numel(trained[n] for n in module.trainable) < unet_parameters / 4
    assert _numel(module.parameters()) == unet_parameters  # no second UNet among the module's parts
    assert _numel(module.buffers()) == unet_buffers + module.originals.numel()
    assert not any(isinstance(m, type(unet)) for m in module.modules() if m is not unet)
    z, t, context = torch.randn(1, 4, 8, 8), torch.tensor(500), pipeline.encode_prompt(["a cat"], "cpu", 1, False)[0]
    with torch.no_grad():
        before = unet(z, t, encoder_hidden_states=context).sample
        for name in module.trainable:
            trained[name].add_(0.5)  # training moves the trained tensors
        assert not torch.allclose(unet(z, t, encoder_hidden_states=context).sample, before)
        assert torch.equal(module.frozen(z, t, encoder_hidden_states=context).sample, before)
    assert module.state_dict().keys() == {f"unet.{n}" for n in unet.state_dict()}  # copies stay out of checkpoints


def test_the_frozen_unet_of_a_learned_mask_is_unmasked(tiny_sd_pipeline) -> None:
    pipeline = tiny_sd_pipeline(seed=0)
    names = [n for n, _ in pipeline.unet.named_parameters() if ".attn2.to_" in n and n.endswith("weight")]
    params = ESDParams(ddim_steps=4)
    objective = MaskObjective(ESDObjective(["a golf ball"], params, 1), names, MaskLearning(), 10)
    z, t, context = torch.randn(1, 4, 8, 8), torch.tensor(500), pipeline.encode_prompt(["a cat"], "cpu", 1, False)[0]
    with torch.no_grad():
        before = pipeline.unet(z, t, encoder_hidden_states=context).sample
        module = FineTuneModule(pipeline, [], objective, params)
        assert module.originals.numel() == 0 and not module.trainable
        for scores in objective.scores.values():
            scores.fill_(-3.0)  # nearly every masked weight off
        masked = module.unet(z, t, encoder_hidden_states=context).sample
        assert not torch.allclose(masked, before)  # the masks (nearly all off) change the UNet
        assert torch.equal(module.frozen(z, t, encoder_hidden_states=context).sample, before)
        assert torch.equal(module.unet(z, t, encoder_hidden_states=context).sample, masked)  # masks back on
    detach_masks(pipeline.unet, names)


def test_the_diff_after_training_copies_the_trained_tensors_only(tiny_sd_pipeline, method_context) -> None:
    pipeline = tiny_sd_pipeline(seed=0)
    context = method_context(pipeline, ConceptSettings(target="golf ball", kind="object"), [], GenerationSettings())
    before = _trained_before(context, ESDParams(trainable="esd-x"))
    assert before and all(".attn2." in n for n in before)
    assert _numel(before.values()) < _numel(pipeline.unet.parameters()) / 4


@pytest.mark.parametrize(("height", "width", "latents"), [(None, None, (4, 8, 8)), (96, 128, (4, 12, 16))])
def test_esd_samples_latents_of_the_recipes_size(tiny_sd_pipeline, height, width, latents) -> None:
    shapes = []

    class Recording(ESDObjective):
        def _sample(self, module, z, concept, empty, steps):
            shapes.append(tuple(z.shape))
            out = super()._sample(module, z, concept, empty, steps)
            shapes.append(tuple(out.shape))
            return out

    params = ESDParams(ddim_steps=4)
    objective = Recording(["a golf ball"], params, 2, GenerationSettings(height=height, width=width))
    module = FineTuneModule(tiny_sd_pipeline(seed=0), "esd-x", objective, params)
    objective.prepare(module)
    assert objective.shape == latents
    loss = objective.loss(module, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and shapes == [(2, *latents)] * 2
