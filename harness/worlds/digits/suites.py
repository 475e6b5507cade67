"""The miniature world's built-in prompt suites (no file behind them):

- `digits-<name>` (`digits-seven`): prompts for one digit, label = the digit's name;
- `digits-all`: every digit, ids grouped by digit;
- `digits-neutral`: prompts naming no digit, no label;

each with 50 prompts per digit, or N with a suffix (`digits-all-20`, `digits-seven-5`).
A prompt's seed depends only on its digit and its position, so `digits-seven` and the sevens of
`digits-all` share seeds. They are scored by the world's digit classifier, with FID against the
world's held-out real digits.
"""

from __future__ import annotations

import re

from harness.errors import HarnessError
from harness.generate.suites import PromptRecord, Suite
from harness.worlds.digits.data import DIGIT_NAMES, NEUTRAL_PROMPTS, concept_prompts

DIGITS_PER_CLASS = 50
SUITE_NAME = re.compile(r"digits-([a-z]+?)(?:-(\d+))?")
SEED_STRIDE = 100_000
NEUTRAL_SEED_BASE = 10 * SEED_STRIDE
HELDOUT_REFERENCE = "digits-heldout"
"""The FID reference set: the world's real held-out digits at the generated size."""
SCORE_DEFAULTS = {"classifier": "digits", "fid_features": "classifier", "fid_reference": HELDOUT_REFERENCE}


def suite_names() -> list[str]:
    """The listed names (every digit, all, neutral; a count suffix is also accepted)."""
    return ["digits-all", "digits-neutral"] + [f"digits-{n}" for n in DIGIT_NAMES]


def digit_suite(name: str) -> Suite | None:
    """The suite `name`, or None when it is not a digit suite's name."""
    match = SUITE_NAME.fullmatch(name)
    if match is None:
        return None
    which, count_text = match.group(1), match.group(2)
    per_class = int(count_text) if count_text else DIGITS_PER_CLASS
    if per_class < 1 or per_class >= SEED_STRIDE:
        raise HarnessError(f"suite {name}: prompts per digit must lie in 1..{SEED_STRIDE - 1}")
    if which == "neutral":
        records = tuple(
            PromptRecord(i, NEUTRAL_PROMPTS[i % len(NEUTRAL_PROMPTS)], NEUTRAL_SEED_BASE + i) for i in range(per_class)
        )
        return Suite(name, "digits", records, ("fid",), "built-in", SCORE_DEFAULTS)
    if which == "all":
        digits = list(range(10))
    elif which in DIGIT_NAMES:
        digits = [DIGIT_NAMES.index(which)]
    else:
        return None
    records = []
    for digit in digits:
        prompts = concept_prompts(digit)
        for i in range(per_class):
            records.append(
                PromptRecord(len(records), prompts[i % len(prompts)], digit * SEED_STRIDE + i, label=DIGIT_NAMES[digit])
            )
    metrics = ("accuracy", "fid") if which == "all" else ("accuracy",)
    return Suite(name, "digits", tuple(records), metrics, "built-in", SCORE_DEFAULTS)
