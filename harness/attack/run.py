"""The attack stage: one attack against one unlearned model, published as one output folder.

Output folder (harness.layout.AttackFiles): the attacked tensors (UNet parameters the attack
changed; applied on top of the unlearned model), a prompt-space attack's new tokens, and the
record (params, what the attack read, applicable or why not, its family's report, its prompt
rewrite, seconds, provenance). The two appear together; a
folder whose record has the same settings key is reused without work. Under `accelerate launch`
every process takes part in attacks that declare `sharded`; others run on the main process.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from accelerate import Accelerator

from harness.atomic import check_output_folder, publish_folder
from harness.attack.interface import AttackContext, NotApplicable, attack_reads, resolve_attack
from harness.attack.revival.runner import make_accelerator, process_device
from harness.recipe import AttackEntry
from harness.recipe import GenerationSettings
from harness.layout import AttackFiles
from harness.models.checkpoints import save_tensors, source_identity
from harness.provenance import provenance
from harness.records import AttackRecord, completed, file_digest, settings_key, write_record
from harness.runtime import RuntimeSettings
from harness.recipe import ConceptSettings

log = logging.getLogger(__name__)


@dataclass
class AttackJob:
    """One attack against one unlearned model, into one output folder."""

    attack: AttackEntry
    base_model: str
    unlearned_files: list[Path]
    out: Path
    method: str | None = None
    """The label of the attacked method (None for a model given as it is)."""
    layers: list[str] = field(default_factory=list)
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    where: str = "recipe"
    entry: str = "attack"
    device: str = "auto"
    fidelity: str = "paper"
    seed: int = 0
    concept: ConceptSettings | None = None
    original: str | None = None
    """The original model, for attacks that declare `original` and for measuring (sign accuracy)."""
    data_dir: str | None = None
    runtime: RuntimeSettings | None = None

    def key(self) -> str:
        """The identity of the output: the attack entry and the unlearned model's content."""
        concept = dataclasses.asdict(self.concept) | {"data_dir": None} if self.concept else None
        return settings_key(
            "attack", dataclasses.asdict(self.attack), source_identity(self.base_model),
            [file_digest(path) for path in self.unlearned_files], self.layers, dataclasses.asdict(self.generation),
            self.fidelity, self.seed, concept, source_identity(self.original) if self.original else None,
        )


def output_is_ours(folder: Path) -> bool:
    """Whether `folder` holds an attack stage's output, whole or in parts (so it may be replaced)."""
    files = AttackFiles(folder)
    return files.record.is_file() or files.parts.is_dir() or files.checkpoints.is_dir()


def run_attack(job: AttackJob, accelerator: Accelerator | None = None) -> AttackRecord | None:
    """Run the attack and publish its folder; the record comes back on the main process (None elsewhere)."""
    accelerator = accelerator or make_accelerator(job.device)
    files = AttackFiles(Path(job.out))
    key = job.key()
    done = completed(AttackRecord, files.record, key)
    if done is not None and (files.tensors.is_file() or not done.applicable):
        if accelerator.is_main_process:
            log.info("attack %s%s: already done with these settings", job.attack.name,
                     f" on {job.method}" if job.method else "")
        return done if accelerator.is_main_process else None
    attack = resolve_attack(job.attack.attack, f"{job.where}: {job.entry}.attack")
    reads = attack_reads(attack)
    if accelerator.is_main_process:
        check_output_folder(files.folder, "--out", output_is_ours)
    accelerator.wait_for_everyone()
    context = AttackContext(
        base_model=job.base_model, unlearned_files=list(job.unlearned_files), layers=job.layers,
        device=process_device(job.device, accelerator), generation=job.generation, scratch=files.folder,
        reads=reads, where=job.where, entry=job.entry, fidelity=job.fidelity, seed=job.seed,
        accelerator=accelerator, concept_settings=job.concept, original_source=job.original,
        settings_key=key, runtime=job.runtime, data_dir=job.data_dir,
    )
    start = time.perf_counter()
    result, reason = None, None
    if "sharded" in reads or accelerator.is_main_process:
        try:
            result = attack(context, dict(job.attack.params))
        except NotApplicable as why:
            reason = str(why)
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return None
    record = AttackRecord(
        key=key, name=job.attack.name or job.attack.attack, attack=job.attack.attack, method=job.method,
        params=dict(job.attack.params), reads=sorted(reads - {"sharded"}), applicable=reason is None,
        reason=reason, revival=result.revival if result else None,
        info=(result.info | {"snapshots": sorted(result.snapshots)}) if result else {},
        fidelity=job.fidelity, seconds=round(time.perf_counter() - start, 3), provenance=provenance(),
        prompt_rewrite=dataclasses.asdict(result.prompt_rewrite) if result and result.prompt_rewrite else None,
    )
    if reason is not None:
        log.debug("attack %s on %s: not applicable (%s)", record.name, job.method, reason)

    def fill(folder: Path) -> None:
        out = AttackFiles(folder)
        if result is not None:
            save_tensors(result.tensors, out.tensors, metadata={"attack": job.attack.attack})
            if result.tokens:
                save_tensors(result.tokens, out.tokens, metadata={"attack": job.attack.attack})
            for step, path in sorted(result.snapshots.items()):
                out.snapshot(step).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, out.snapshot(step))
        write_record(out.record, record)

    publish_folder(files.folder, fill)
    return record
