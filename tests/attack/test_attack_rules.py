"""Top-K sign retention, magnitude rules, quant4 and the ideal cases on hand-made matrices."""

from __future__ import annotations

import torch

from harness.attack.revival.baselines import ideal_case, quant4
from harness.attack.revival.layer import LayerJob, revive_layer
from harness.attack.revival.magnitudes import magnitudes, row_statistics
from harness.attack.revival.settings import CompletionSettings, RevivalParams
from harness.attack.revival.signs import sign_agreement, top_k_keep

GEN = torch.Generator().manual_seed(0)


def test_top_k_keeps_largest_magnitudes_globally() -> None:
    values = torch.tensor([0.1, -0.9, 0.5, -0.2, 0.05])
    assert top_k_keep(values, 0.4).tolist() == [False, True, True, False, False]
    assert top_k_keep(values, 1.0).all()
    assert top_k_keep(values, 0.6).sum() == 3


def test_row_statistics_use_only_surviving_weights() -> None:
    weight = torch.tensor([[0.0, -3.0, 1.0, 2.0], [4.0, 0.0, 0.0, -1.0]])
    pruned = torch.tensor([[True, False, False, False], [False, True, True, False]])
    maximum, mean, std = row_statistics(weight, pruned)
    assert maximum.tolist() == [3.0, 4.0]
    assert mean.tolist() == [2.0, 2.5]
    assert torch.allclose(std, torch.tensor([1.0, (4.5) ** 0.5]))


def test_magnitude_rules() -> None:
    weight = torch.tensor([[0.0, -3.0, 1.0, 2.0]])
    pruned = torch.tensor([[True, False, False, False]])
    completed = torch.tensor([[-0.7, -3.0, 1.0, 2.0]])
    assert magnitudes("nms", weight, pruned, completed, GEN)[0, 0] == 3.0
    assert magnitudes("average", weight, pruned, completed, GEN)[0, 0] == 2.0
    assert magnitudes("align", weight, pruned, completed, GEN)[0, 0] == 0.7
    sampled = magnitudes("sample", weight, pruned, completed, torch.Generator().manual_seed(1))
    assert (sampled >= 0).all()


def test_quant4_rounds_half_up_per_row_and_keeps_zeros() -> None:
    weight = torch.tensor([[7.0, 0.5, -0.5, 0.0, 2.5, -7.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    expected = torch.tensor([[7.0, 1.0, 0.0, 0.0, 3.0, -7.0], [0.0] * 6])
    torch.testing.assert_close(quant4(weight), expected)
    scaled = quant4(weight[:1] * 0.01)
    torch.testing.assert_close(scaled, expected[:1] * 0.01)


def test_ideal_cases_use_the_truth_only_where_pruned() -> None:
    original = torch.tensor([[1.0, -2.0, 3.0], [-4.0, 5.0, 0.5]])
    pruned = torch.tensor([[True, False, False], [False, True, False]])
    weight = torch.where(pruned, 0.0, original)
    nms = ideal_case("ideal-sign-nms", weight, pruned, original, GEN)
    torch.testing.assert_close(nms, torch.tensor([[3.0, -2.0, 3.0], [-4.0, 4.0, 0.5]]))
    random_sign = ideal_case("ideal-magnitude-random-sign", weight, pruned, original, torch.Generator().manual_seed(3))
    assert random_sign.abs().equal(original.abs())
    assert random_sign[~pruned].equal(original[~pruned])


def test_sign_agreement_ignores_true_zeros() -> None:
    assert sign_agreement(torch.tensor([1.0, -1.0, 1.0, 5.0]), torch.tensor([2.0, 3.0, 0.0, 1.0])) == 2 / 3
    assert sign_agreement(torch.tensor([1.0]), torch.tensor([0.0])) is None


def test_attack_on_one_layer_revives_top_k_with_neuron_max() -> None:
    gen = torch.Generator().manual_seed(4)
    original = (torch.randn(24, 3, generator=gen) @ torch.randn(3, 96, generator=gen)) + 0.05 * torch.randn(24, 96, generator=gen)
    pruned = torch.rand(original.shape, generator=gen) < 0.05
    weight = torch.where(pruned, 0.0, original)
    settings = RevivalParams(top_k=0.5, completion=CompletionSettings(tol=1e-6))
    outcome = revive_layer(LayerJob("w", weight, pruned, original), settings, torch.device("cpu"))
    revived = outcome.weight
    assert revived[~pruned].equal(weight[~pruned])
    changed = revived[pruned] != 0
    assert int(changed.sum()) == outcome.report.kept == round(0.5 * int(pruned.sum()))
    row_max = torch.where(pruned, 0.0, weight).abs().max(dim=1).values
    expected_magnitude = row_max[:, None].expand_as(weight)[pruned][changed]
    torch.testing.assert_close(revived[pruned][changed].abs(), expected_magnitude)
    assert outcome.report.sign_accuracy > 0.9
    assert outcome.report.sign_accuracy_topk >= outcome.report.sign_accuracy
