"""The miniature world, a plug-in (registered as world `digits`, model source `zoo:digits`).

A small pixel-space text-to-image diffusion model with SD's UNet layout, trained on
scikit-learn's real handwritten digits, with prompts such as "a photo of the digit seven", and a
digit classifier that plays ResNet-50's part. Its parts: `data` (digits, prompts, split),
`text` and `pipeline` (tokenizer, text encoder, DigitsPipeline), `classifier`, `train` and
`quality` (building it), `store` (the cache folder, shipped weights), `suites` (built-in prompt
suites) and `command` (`harness zoo`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch

from harness.errors import HarnessError
from harness.registry import world
from harness.world import World


class DigitsWorld(World):
    """The world's hooks for the harness's generic stages."""

    name = "digits"
    concept_kinds = ("digit",)

    def pipeline_dir(self) -> Path:
        from harness.worlds.digits.store import PIPELINE_DIR, ensure_world

        return ensure_world() / PIPELINE_DIR

    def identity(self) -> str:
        from harness.worlds.digits.store import ensure_world, report_digest

        return f"digits@{report_digest(ensure_world())[:16]}"

    def prompt_pairs(self, target: str, kind: str) -> tuple[list[str], list[str]]:
        from harness.worlds.digits.data import DIGIT_NAMES, NEUTRAL_PROMPTS, concept_prompts

        name = target.strip().lower()
        if name.isdigit() and int(name) < len(DIGIT_NAMES):
            digit = int(name)
        elif name in DIGIT_NAMES:
            digit = DIGIT_NAMES.index(name)
        else:
            raise HarnessError(f"'{target}' is no digit, so it has no prompts "
                               f"(choose from {', '.join(DIGIT_NAMES)} or 0-9)", key="concept.target", rooted=True)
        return list(NEUTRAL_PROMPTS), list(concept_prompts(digit))

    def suite_names(self) -> list[str]:
        from harness.worlds.digits.suites import suite_names

        return suite_names()

    def suite(self, name: str):
        from harness.worlds.digits.suites import digit_suite

        return digit_suite(name)

    def reference_images(self, name: str, size: tuple[int, int], batch_size: int) -> Iterator[torch.Tensor] | None:
        from harness.worlds.digits.data import heldout_digits
        from harness.worlds.digits.suites import HELDOUT_REFERENCE

        if name != HELDOUT_REFERENCE:
            return None
        images, _ = heldout_digits(size[0])
        return iter((images * 255).round().to(torch.uint8).split(batch_size))

    def labelled_images(self, split: str, size: int) -> tuple[torch.Tensor, list[str]] | None:
        from harness.worlds.digits.data import DIGIT_NAMES, heldout_digits, train_digits

        if split not in ("train", "heldout"):
            raise HarnessError(f"world digits: unknown split '{split}' (train or heldout)")
        images, labels = (train_digits if split == "train" else heldout_digits)(size)
        return images, [DIGIT_NAMES[int(d)] for d in labels]

    def label_prompts(self, label: str) -> list[str]:
        from harness.worlds.digits.data import concept_prompts, digit_of_name

        return concept_prompts(digit_of_name(label))

    def neutral_prompts(self) -> list[str]:
        from harness.worlds.digits.data import NEUTRAL_PROMPTS

        return list(NEUTRAL_PROMPTS)

    def concept_names(self, target: str) -> list[str]:
        from harness.worlds.digits.data import DIGIT_NAMES, digit_of_name

        digit = digit_of_name(target)
        return [DIGIT_NAMES[digit], str(digit)]


WORLD = world("digits")(DigitsWorld())
