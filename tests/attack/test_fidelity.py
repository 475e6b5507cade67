"""The fidelity switch: each rule on a small hand-made matrix, paper vs the authors' reference code."""

from __future__ import annotations

import math

import pytest
import torch

from harness.attack.revival.baselines import ideal_case, quant4
from harness.attack.revival.layer import LayerJob, revive_layer
from harness.attack.revival.magnitudes import magnitudes, row_statistics, signed_row_statistics
from harness.attack.revival.settings import CompletionSettings, RevivalParams
from harness.attack.revival.signs import top_k_count, top_k_keep
from harness.errors import HarnessError
from harness.settings.unlearn import ConceptSettings
from harness.unlearn.prompts import REFERENCE_CODE_OBJECT_SCENES, object_prompt_pairs, prompt_pairs

WEIGHT = torch.tensor([[0.0, -3.0, 1.0, 2.0], [4.0, 0.0, 0.0, -1.0]])
PRUNED = torch.tensor([[True, False, False, False], [False, True, True, False]])


def noise(seed: int) -> torch.Tensor:
    """The standard normals the sampling rules draw for WEIGHT from a generator seeded `seed`."""
    return torch.randn(WEIGHT.shape, generator=torch.Generator().manual_seed(seed))


# Top-K


def test_top_k_half_of_five_rounds_to_even_in_the_paper_and_keeps_three_in_the_reference() -> None:
    values = torch.tensor([0.1, -0.9, 0.5, -0.2, 0.05])
    # paper: round(2.5) = 2 (half to even); reference: drop int(0.5 * 5) = 2 -> threshold 0.1 -> keep 3
    assert top_k_keep(values, 0.5).tolist() == [False, True, True, False, False]
    assert top_k_keep(values, 0.5, "reference-code").tolist() == [False, True, True, True, False]
    assert top_k_count(5, 0.5) == 2 and top_k_count(5, 0.5, "reference-code") == 3
    # where both rules give the same count they keep the same entries
    expected = [False, True, True, False, False]
    assert top_k_keep(values, 0.4, "reference-code").tolist() == top_k_keep(values, 0.4).tolist() == expected


def test_top_k_reference_keeps_everything_at_k_09_of_ten_by_float_arithmetic() -> None:
    values = torch.arange(1.0, 11.0)
    assert (1 - 0.9) * 10 < 1  # 0.9999999999999998: int() gives 0 entries to drop
    assert top_k_keep(values, 0.9).tolist() == [False] + [True] * 9
    assert top_k_keep(values, 0.9, "reference-code").all()
    assert top_k_count(10, 0.9) == 9 and top_k_count(10, 0.9, "reference-code") == 10
    assert top_k_keep(values, 1.0, "reference-code").all() and top_k_keep(values, 1.0).all()


def test_top_k_ties_at_the_reference_threshold_are_all_dropped() -> None:
    values = torch.tensor([0.1, -0.1, 0.5])
    # paper: round(1.8) = 2, ties by position -> 0.5 and the first 0.1
    assert top_k_keep(values, 0.6).tolist() == [True, False, True]
    # reference: drop int(0.4 * 3) = 1 -> threshold 0.1 -> every |v| <= 0.1 is dropped
    assert top_k_keep(values, 0.6, "reference-code").tolist() == [False, False, True]


def test_unknown_fidelity_is_refused() -> None:
    with pytest.raises(ValueError, match="fidelity"):
        top_k_keep(torch.ones(3), 0.5, "authors")
    with pytest.raises(ValueError, match="fidelity"):
        magnitudes("nms", WEIGHT, PRUNED, WEIGHT, torch.Generator(), "authors")


# Magnitudes


def test_signed_row_statistics_are_mean_and_population_std_of_signed_survivors() -> None:
    mean, std = signed_row_statistics(WEIGHT, PRUNED)
    # row 0 survivors -3, 1, 2: mean 0, variance 14/3; row 1 survivors 4, -1: mean 1.5, std 2.5
    torch.testing.assert_close(mean, torch.tensor([0.0, 1.5]))
    torch.testing.assert_close(std, torch.tensor([math.sqrt(14 / 3), 2.5]))
    _, single_std = signed_row_statistics(torch.tensor([[5.0, 0.0]]), torch.tensor([[False, True]]))
    assert single_std.tolist() == [pytest.approx(1e-8)]  # their `std or 1e-8`


def test_sample_rule_statistics_under_both_fidelities() -> None:
    n = noise(1)
    paper = magnitudes("sample", WEIGHT, PRUNED, WEIGHT, torch.Generator().manual_seed(1))
    reference = magnitudes("sample", WEIGHT, PRUNED, WEIGHT, torch.Generator().manual_seed(1), "reference-code")
    # paper: |w| statistics with the n - 1 std: row 0 mean 2, std 1; row 1 mean 2.5, std sqrt(4.5)
    torch.testing.assert_close(paper[0], (2.0 + 1.0 * n[0]).abs())
    torch.testing.assert_close(paper[1], (2.5 + math.sqrt(4.5) * n[1]).abs())
    # reference: signed statistics with the population std
    torch.testing.assert_close(reference[0], (0.0 + math.sqrt(14 / 3) * n[0]).abs())
    torch.testing.assert_close(reference[1], (1.5 + 2.5 * n[1]).abs())


def test_nms_is_the_row_max_in_the_paper_and_at_least_1_000001_row_max_in_the_reference() -> None:
    paper = magnitudes("nms", WEIGHT, PRUNED, WEIGHT, torch.Generator().manual_seed(2))
    assert paper.tolist() == [[3.0] * 4, [4.0] * 4]
    reference = magnitudes("nms", WEIGHT, PRUNED, WEIGHT, torch.Generator().manual_seed(2), "reference-code")
    n = noise(2)
    expected = torch.maximum(
        torch.stack([(math.sqrt(14 / 3) * n[0]).abs(), (1.5 + 2.5 * n[1]).abs()]),
        torch.tensor([[3.0 * 1.000001], [4.0 * 1.000001]]),
    )
    torch.testing.assert_close(reference, expected)
    assert (reference >= torch.tensor([[3.000003], [4.000004]]) - 1e-6).all()


def test_reference_nms_exceeds_the_row_max_exactly_where_the_draw_does() -> None:
    # row -3, 3 (and one pruned entry): signed mean 0, population std 3, row max 3
    weight = torch.tensor([[-3.0, 3.0, 0.0]]).repeat(200, 1)
    pruned = torch.tensor([[False, False, True]]).repeat(200, 1)
    drawn = torch.randn(weight.shape, generator=torch.Generator().manual_seed(5)).abs() * 3.0
    got = magnitudes("nms", weight, pruned, weight, torch.Generator().manual_seed(5), "reference-code")
    floor = torch.tensor(3.0 + 3.0 * 1e-6)  # row max + 1e-6 row max, in double, then float32
    above = drawn > floor
    assert 0 < int(above.sum()) < above.numel()  # both cases occur
    torch.testing.assert_close(got[above], drawn[above])
    assert torch.equal(got[~above], floor.expand(int((~above).sum())))


def test_average_and_align_do_not_depend_on_fidelity() -> None:
    completed = torch.tensor([[-0.7, -3.0, 1.0, 2.0], [0.2, 0.3, -0.4, -1.0]])
    for rule in ("average", "align"):
        assert torch.equal(magnitudes(rule, WEIGHT, PRUNED, completed, torch.Generator()),
                           magnitudes(rule, WEIGHT, PRUNED, completed, torch.Generator(), "reference-code"))
    maximum, mean, _ = row_statistics(WEIGHT, PRUNED)
    assert mean.tolist() == [2.0, 2.5] and maximum.tolist() == [3.0, 4.0]


def test_ideal_sign_sample_inherits_the_sample_rule() -> None:
    original = torch.tensor([[-1.0, -3.0, 1.0, 2.0], [4.0, 7.0, -2.0, -1.0]])
    n = noise(3)
    for fidelity, rows in (("paper", [(2.0 + n[0]).abs(), (2.5 + math.sqrt(4.5) * n[1]).abs()]),
                           ("reference-code", [(math.sqrt(14 / 3) * n[0]).abs(), (1.5 + 2.5 * n[1]).abs()])):
        got = ideal_case("ideal-sign-sample", WEIGHT, PRUNED, original, torch.Generator().manual_seed(3), fidelity)
        expected = torch.where(PRUNED, torch.sign(original) * torch.stack(rows), WEIGHT)
        torch.testing.assert_close(got, expected)


# Quant Recover


def test_quant4_in_fp16_moves_levels_and_values() -> None:
    weight = torch.tensor([[1.0, 0.5, -0.5, 0.0], [0.0, 0.0, 0.0, 0.0]])
    # paper (fp32): scale = fl32(1/7); 0.5 / scale = 3.4999998 -> level 3; -0.5 -> level -3
    scale32 = torch.tensor(1 / 7, dtype=torch.float32)
    expected_paper = torch.stack([torch.stack([7 * scale32, 3 * scale32, -3 * scale32, 0 * scale32]), torch.zeros(4)])
    torch.testing.assert_close(quant4(weight), expected_paper, rtol=0, atol=0)
    assert quant4(weight)[0, 1].item() == pytest.approx(0.4285714626312256, abs=0)
    # reference (fp16): scale = fp16(1/7) = 585/4096 = 0.142822265625; 0.5 / scale = 3.50085 -> fp16
    # 3.5, + 0.5 = 4 -> level 4 (0.5712890625); -0.5 -> -3.5 + 0.5 = -3 -> -0.428466796875;
    # 7 * 585/4096 = 4095/4096 rounds to 1.0 in fp16
    expected_reference = torch.tensor([[1.0, 0.5712890625, -0.428466796875, 0.0], [0.0, 0.0, 0.0, 0.0]])
    assert quant4(weight, "reference-code").tolist() == expected_reference.tolist()
    assert quant4(weight, "reference-code").dtype == torch.float32


def test_quant4_agrees_where_fp16_is_exact() -> None:
    weight = torch.tensor([[7.0, 0.5, -0.5, 0.0, 2.5, -7.0]])
    assert quant4(weight, "reference-code").tolist() == quant4(weight).tolist() == [[7.0, 1.0, 0.0, 0.0, 3.0, -7.0]]


# Prompts


def test_object_prompts_use_the_authors_scene_lists_only_under_reference_code() -> None:
    scenes = ["kitchen", "park"]
    paper = object_prompt_pairs("church", scenes)
    assert paper.base == ["a kitchen", "a park"] and paper.target == ["a church in a kitchen", "a church in a park"]
    church = object_prompt_pairs("church", scenes, "reference-code")
    assert len(church.base) == len(church.target) == 8
    assert (church.base[0], church.target[0]) == ("a road", "a church on a road")
    assert (church.base[3], church.target[3]) == ("a street", "a church  on the street")  # their leading space
    bus = object_prompt_pairs("school bus", scenes, "reference-code")
    assert bus.target[-1] == "a school bus in a forest" and bus.base == church.base
    assert object_prompt_pairs("motorcycle", None, "reference-code").target[1] == "a motorcycle in the park"
    truck = object_prompt_pairs("garbage truck", None, "reference-code")
    assert len(truck.base) == 13 and (truck.base[3], truck.target[3]) == ("a white car", "a garbage truck near a white car")
    # every other class keeps the common template under both settings
    assert object_prompt_pairs("golf ball", scenes, "reference-code") == object_prompt_pairs("golf ball", scenes)
    assert set(REFERENCE_CODE_OBJECT_SCENES) == {"church", "motorcycle", "school bus", "garbage truck"}


def test_prompt_pairs_default_is_unchanged_and_reference_code_needs_no_word_list(tmp_path) -> None:
    (tmp_path / "common_scenes.txt").write_text("kitchen\npark\n")
    concept = ConceptSettings(target="school bus", kind="object")
    assert prompt_pairs(concept, tmp_path).target == ["a school bus in a kitchen", "a school bus in a park"]
    assert prompt_pairs(concept, None, fidelity="reference-code").target[0] == "a school bus on a road"
    with pytest.raises(HarnessError, match="data_dir"):
        prompt_pairs(concept, None)
    with pytest.raises(HarnessError, match="fidelity"):
        prompt_pairs(concept, tmp_path, fidelity="authors")


# The layer reads the switch


def test_revive_layer_threads_fidelity_and_records_it() -> None:
    gen = torch.Generator().manual_seed(4)
    original = (torch.randn(24, 3, generator=gen) @ torch.randn(3, 96, generator=gen)) + 0.05 * torch.randn(24, 96, generator=gen)
    pruned = torch.zeros(original.shape, dtype=torch.bool)
    pruned.view(-1)[torch.randperm(pruned.numel(), generator=gen)[:101]] = True  # odd count: 50.5
    weight = torch.where(pruned, 0.0, original)
    job = LayerJob("w", weight, pruned, original)
    settings = RevivalParams(top_k=0.5, completion=CompletionSettings(tol=1e-6))
    paper = revive_layer(job, settings, torch.device("cpu"))
    reference = revive_layer(job, settings, torch.device("cpu"), fidelity="reference-code")
    assert paper.report.fidelity == "paper" and reference.report.fidelity == "reference-code"
    assert paper.report.kept == round(0.5 * 101) == 50
    assert reference.report.kept == 101 - int(0.5 * 101) == 51
    assert (reference.weight[pruned].abs() >= paper.weight[pruned].abs()).all()  # NMS at least 1.000001 * max
    quant = RevivalParams(strategy="quant4")
    assert torch.equal(revive_layer(job, quant, torch.device("cpu"), "reference-code").weight, quant4(weight, "reference-code"))
