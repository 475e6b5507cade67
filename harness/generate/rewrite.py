"""Prompt-space attacks change what is asked: a rewrite of a suite's prompts of the erased concept
(its name replaced by a learned token, or a prefix put before it), applied before generation so
that every other stage sees an ordinary suite with the same ids, seeds and labels."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import HarnessError
from harness.generate.suites import PromptRecord, Suite
from harness.layout import AttackFiles
from harness.records import AttackRecord, read_record

WHOLE_SUITE_KINDS = {"nudity": "nudity"}
"""Concept kind -> the suite kind whose every prompt is a prompt of the concept (an I2P nudity
suite names no 'nudity')."""


@dataclass
class PromptRewrite:
    """Which prompts change and how: a prompt of the concept (labelled with one of `labels`; in a
    suite without labels, naming one of `names`, or any prompt of a suite of the concept's own
    kind) gets each of `names` replaced by `replacement` (put before the prompt when it names
    none) and `prefix` put before it; a per-prompt attack's `prompts` map a concept prompt drawn
    from a seed (`seeded(prompt, seed)`) to its own adversarial prompt, and the concept prompts it
    did not attack stay as they are."""

    names: list[str]
    labels: list[str] = field(default_factory=list)
    kind: str | None = None
    replacement: str | None = None
    prefix: str | None = None
    prompts: dict[str, str] = field(default_factory=dict)

    def applies(self, record: PromptRecord, suite_kind: str) -> bool:
        """Whether `record` (of a suite of `suite_kind`) is a prompt of the concept."""
        if record.label is not None:
            return record.label.lower() in {label.lower() for label in self.labels}
        if self.kind is not None and WHOLE_SUITE_KINDS.get(self.kind) == suite_kind:
            return True
        return any(self._pattern(name).search(record.prompt) for name in self.names)

    def prompt(self, text: str) -> str:
        """One prompt of the concept rewritten (by the name replacement and prefix)."""
        if self.replacement is not None:
            named = False
            for name in sorted(self.names, key=len, reverse=True):
                text, count = self._pattern(name).subn(lambda _: str(self.replacement), text)
                named = named or count > 0
            if not named:
                text = f"{self.replacement} {text}"
        return f"{self.prefix} {text}" if self.prefix else text

    def record_prompt(self, record: PromptRecord) -> str:
        """A concept prompt of a suite rewritten: its own adversarial prompt when it has one."""
        own = self.prompts.get(seeded(record.prompt, record.seed))
        if own is not None:
            return own
        return record.prompt if self.prompts else self.prompt(record.prompt)

    def suite(self, suite: Suite) -> Suite:
        """The suite with its concept prompts rewritten (same ids, seeds and labels)."""
        records = tuple(dataclasses.replace(r, prompt=self.record_prompt(r)) if self.applies(r, suite.kind) else r
                        for r in suite.records)
        return dataclasses.replace(suite, records=records)

    @staticmethod
    def _pattern(name: str) -> re.Pattern[str]:
        return re.compile(rf"(?<!\w){re.escape(name)}(?!\w)", re.IGNORECASE)


def seeded(prompt: str, seed: int) -> str:
    """The key of a prompt drawn from a seed in a per-prompt rewrite."""
    return f"{seed}\t{prompt}"


def prompt_changes(attack_folder: Path) -> tuple[Path | None, PromptRewrite | None]:
    """What an attack's output folder changes on the prompt side: its new tokens file and its
    prompt rewrite (None, None for a weight-space attack)."""
    files = AttackFiles(Path(attack_folder))
    if not files.record.is_file():
        raise HarnessError(f"{attack_folder}: not an attack's output folder (no {files.record.name})")
    record = read_record(AttackRecord, files.record)
    rewrite = PromptRewrite(**record.prompt_rewrite) if record.prompt_rewrite else None
    return (files.tokens if files.tokens.is_file() else None), rewrite
