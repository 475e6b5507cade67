"""A defended method's undefended twin: the same method entry without the defense, already run.

The Gaussian defense only fills the positions a method changed, so a defended entry whose twin
(same method, params, layers, concept, model, sampling and fidelity; any name) has finished in
the same run directory takes the twin's weights and masks instead of computing them again: at
the paper's settings ConceptPrune's activations are the most expensive unlearning stage.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path

from harness.errors import HarnessError
from harness.layout import UnlearnFiles
from harness.models.checkpoints import load_tensor_file
from harness.records import UnlearnRecord, read_record
from harness.unlearn.job import UnlearnJob
from harness.unlearn.method import UnlearnResult


def undefended_twin(job: UnlearnJob) -> UnlearnFiles | None:
    """The finished output of `job` without its defense, in a folder beside its own; None when
    `job` has no defense or no such output is complete."""
    if job.method.defense is None:
        return None
    own = Path(job.out).resolve()
    siblings = sorted(p for p in own.parent.iterdir() if p.is_dir() and p.resolve() != own) if own.parent.is_dir() else []
    for folder in siblings:
        files = UnlearnFiles(folder)
        if not (files.record.is_file() and files.tensors.is_file() and files.mask.is_file()):
            continue
        twin = dataclasses.replace(job, out=folder,
                                   method=dataclasses.replace(job.method, name=folder.name, defense=None))
        try:
            if read_record(UnlearnRecord, files.record).key == twin.key():
                return files
        except HarnessError:
            continue
    return None


def twin_result(files: UnlearnFiles, order: Iterable[str]) -> UnlearnResult:
    """The twin's weights and masks as a method result, in the model's parameter `order` (the
    order the defense draws in; the files hold them sorted by name); its info says where they
    came from."""
    record = read_record(UnlearnRecord, files.record)
    saved_masks, saved_tensors = load_tensor_file(files.mask), load_tensor_file(files.tensors)
    masks = {name: saved_masks[name].bool() for name in order if name in saved_masks}
    tensors = {name: saved_tensors[name] for name in order if name in saved_tensors}
    return UnlearnResult(masks=masks, tensors=tensors,
                         info=record.info | {"reused_from": str(files.folder)})
