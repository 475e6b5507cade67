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
from pathlib import Path

from accelerate import Accelerator

from harness.atomic import publish_folder
from harness.attack.interface import AttackContext, NotApplicable, resolve_attack
from harness.attack.job import AttackJob
from harness.attack.revival.runner import make_accelerator, process_device
from harness.errors import in_file, keyed
from harness.layout import AttackFiles
from harness.models.checkpoints import save_tensors
from harness.outputs import check_output
from harness.provenance import provenance
from harness.records import AttackRecord, completed, write_record
from harness.registry import params_dict

log = logging.getLogger(__name__)


def output_is_ours(folder: Path) -> bool:
    """Whether `folder` holds an attack stage's output, whole or in parts (so it may be replaced)."""
    files = AttackFiles(folder)
    return files.record.is_file() or files.parts.is_dir() or files.checkpoints.is_dir()


def run(job: AttackJob, accelerator: Accelerator | None = None) -> AttackRecord | None:
    """Run the attack and publish its folder; the record comes back on the main process (None
    elsewhere). An error names the recipe file and the attack's entry."""
    with in_file(job.source), keyed(job.entry):
        return _run(job, accelerator or make_accelerator(job.runtime.device))


def _run(job: AttackJob, accelerator: Accelerator) -> AttackRecord | None:
    files = AttackFiles(Path(job.out))
    key = job.key()
    done = completed(AttackRecord, files.record, key)
    if done is not None and (files.tensors.is_file() or not done.applicable):
        if accelerator.is_main_process:
            log.info("attack %s%s: already done with these settings", job.label, f" on {job.method}" if job.method else "")
        return done if accelerator.is_main_process else None
    with keyed("attack"):
        attack = resolve_attack(job.attack)
    if accelerator.is_main_process:
        check_output(files.folder, "--out", output_is_ours)
    accelerator.wait_for_everyone()
    context = AttackContext(job=job, device=process_device(job.runtime.device, accelerator), scratch=files.folder,
                            reads=attack.reads, accelerator=accelerator, settings_key=key)
    start = time.perf_counter()
    result, reason = None, None
    if "sharded" in attack.reads or accelerator.is_main_process:
        try:
            result = attack(context, job.params)
        except NotApplicable as why:
            reason = str(why)
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return None
    record = AttackRecord(
        key=key, name=job.label, attack=job.attack, method=job.method,
        params=params_dict(job.params), reads=sorted(attack.reads - {"sharded"}), applicable=reason is None,
        reason=reason, revival=result.revival if result else None,
        info=(result.info | {"snapshots": sorted({*result.snapshots, *result.token_snapshots})}) if result else {},
        fidelity=job.fidelity, seconds=round(time.perf_counter() - start, 3), provenance=provenance(),
        prompt_rewrite=dataclasses.asdict(result.prompt_rewrite) if result and result.prompt_rewrite else None,
    )
    if reason is not None:
        log.debug("attack %s on %s: not applicable (%s)", record.name, job.method, reason)

    def fill(folder: Path) -> None:
        out = AttackFiles(folder)
        if result is not None:
            save_tensors(result.tensors, out.tensors, metadata={"attack": job.attack})
            if result.tokens:
                save_tensors(result.tokens, out.tokens, metadata={"attack": job.attack})
            for step, path in sorted(result.snapshots.items()):
                out.snapshot(step).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, out.snapshot(step))
            for step, path in sorted(result.token_snapshots.items()):
                out.token_snapshot(step).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, out.token_snapshot(step))
        write_record(out.record, record)

    publish_folder(files.folder, fill)
    return record
