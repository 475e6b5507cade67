"""Bad input, table-driven: every row is a command line (or a recipe) a user could get wrong. Each
must end with the promised one-line error naming the option, key or file, the expected exit
status, and no output that looks complete. Add a row whenever a new option or key appears."""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from harness.cli import main
from harness.layout import AttackFiles, GenerationFiles, UnlearnFiles

FFN = "transformer_blocks.0.ff.net.2.weight"
RECIPE = """\
name: bad
model: zoo:digits
concept: {target: seven, kind: digit}
methods: [{method: conceptprune, params: {tau: 2}}]
attacks: [{attack: nms}]
generation: {steps: 2, guidance: 3.0, scheduler: null, dtype: float32, batch_size: 4, shard_size: 4}
suites: [digits-seven-2]
"""


@dataclass(frozen=True)
class Row:
    """One bad input: the command line (placeholders filled from the fixture's paths), what the
    recipe file holds (`{recipe}`), the exit status, a fragment of the message, and outputs that
    must not look complete afterwards."""

    name: str
    argv: str
    code: int
    fragment: str
    recipe: str = RECIPE
    absent: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)


def swap(old: str, new: str) -> str:
    assert old in RECIPE, old
    return RECIPE.replace(old, new)


REVIVE = "revive --unlearned {pruned} --out {tmp}/out"
ATTACK_OUT = ("{tmp}/out/attack.json", "{tmp}/out/attacked.safetensors")
UNLEARN = "unlearn --recipe {recipe} --out {tmp}/out --device cpu"
UNLEARN_OUT = ("{tmp}/out/unlearn.json", "{tmp}/out/unlearned.safetensors")
BENCHMARK = "benchmark {recipe} --run-dir {tmp}/run --device cpu --accelerator cpu"
GENERATE = "generate --model {world} --suite digits-seven-2 --out {tmp}/images --accelerator cpu --steps 2"

ROWS = [
    # revive ------------------------------------------------------------------------------------
    Row("revive-missing-model", "revive --unlearned {tmp}/missing.pt --out {tmp}/out", 2, "missing.pt: no such file or folder", absent=ATTACK_OUT),
    Row("revive-no-layer", REVIVE + " --layers *nothing*", 2, "layer pattern '*nothing*' matches no parameter", absent=ATTACK_OUT),
    Row("revive-top-k-range", REVIVE + " --top-k 1.5", 2, "top_k must lie in (0, 1]", absent=ATTACK_OUT),
    Row("revive-top-k-nan", REVIVE + " --top-k nan", 2, "--top-k: expected a finite number", absent=ATTACK_OUT),
    Row("revive-tol-inf", REVIVE + " --tol inf", 2, "--tol: expected a finite number", absent=ATTACK_OUT),
    Row("revive-threshold-nan", REVIVE + " --zero-threshold nan", 2, "--zero-threshold: expected a finite number", absent=ATTACK_OUT),
    Row("revive-threshold-negative", REVIVE + " --zero-threshold -1", 2, "mask threshold must be positive", absent=ATTACK_OUT),
    Row("revive-mask-and-threshold", REVIVE + " --zero-threshold 0.1 --mask-file {file}", 2, "a mask file or a threshold, not both", absent=ATTACK_OUT),
    Row("revive-lambda-range", REVIVE + " --lambda-ratio 2", 2, "lambda_ratio must lie in (0, 1)", absent=ATTACK_OUT),
    Row("revive-max-iters", REVIVE + " --max-iters 0", 2, "max_iters and path_steps at least 1", absent=ATTACK_OUT),
    Row("revive-max-rank", REVIVE + " --max-rank 0", 2, "max_rank must be at least 1", absent=ATTACK_OUT),
    Row("revive-magnitude-choice", REVIVE + " --magnitude biggest", 2, "invalid choice: 'biggest'", absent=ATTACK_OUT),
    Row("revive-device-unknown", REVIVE + " --device tpu9", 2, "--device: unknown device 'tpu9'", absent=ATTACK_OUT),
    Row("revive-device-no-gpu", REVIVE + " --device cuda", 2, "no CUDA GPU", absent=ATTACK_OUT),
    Row("revive-out-is-a-file", "revive --unlearned {pruned} --out {file}", 2, "exists and is not a folder"),
    Row("revive-out-under-a-file", "revive --unlearned {pruned} --out {file}/sub", 2, "is a file, so no folder can be made under it"),
    Row("revive-out-unwritable", "revive --unlearned {pruned} --out /proc/harness-out", 2, "cannot write there"),
    Row("revive-out-foreign-folder", "revive --unlearned {pruned} --out {foreign}", 2, "holds other files"),
    Row("revive-no-out", "revive --unlearned {pruned}", 2, "--out: no output folder given"),
    Row("revive-ideal-without-original", REVIVE + " --strategy ideal-sign-nms", 2, "need the original weights (--original)", absent=ATTACK_OUT),
    Row("revive-nothing-pruned", "revive --unlearned {original} --out {tmp}/out", 2, "no target layer has a pruned entry"),
    Row("revive-attack-without-recipe", REVIVE + " --attack nms", 2, "--attack needs --recipe", absent=ATTACK_OUT),
    Row("revive-cache-is-a-file", "revive --unlearned zoo:digits --out {tmp}/out", 2, "not a folder", absent=ATTACK_OUT,
        env={"HARNESS_CACHE": "{file}"}),
    # unlearn -----------------------------------------------------------------------------------
    Row("unlearn-recipe-missing", "unlearn --recipe {tmp}/nope.yaml --out {tmp}/out", 2, "nope.yaml: recipe file not found", absent=UNLEARN_OUT),
    Row("unlearn-typo-key", UNLEARN, 2, "recipe.yaml: methods[0]: unknown key 'parms'",
        recipe=swap("params: {tau: 2}", "parms: {tau: 2}"), absent=UNLEARN_OUT),
    Row("unlearn-sigma-inf", UNLEARN, 2, "methods[0].defense.sigma: expected a finite number",
        recipe=swap("params: {tau: 2}}", "params: {tau: 2}, defense: {sigma: .inf}}"), absent=UNLEARN_OUT),
    Row("unlearn-sigma-nan", UNLEARN, 2, "methods[0].defense.sigma: expected a finite number",
        recipe=swap("params: {tau: 2}}", "params: {tau: 2}, defense: {sigma: .nan}}"), absent=UNLEARN_OUT),
    Row("unlearn-steps-zero", UNLEARN, 2, "recipe.yaml: generation: steps must be at least 1",
        recipe=swap("steps: 2,", "steps: 0,"), absent=UNLEARN_OUT),
    Row("unlearn-batch-zero", UNLEARN, 2, "recipe.yaml: generation: batch_size must be at least 1",
        recipe=swap("batch_size: 4", "batch_size: 0"), absent=UNLEARN_OUT),
    Row("unlearn-unknown-world", UNLEARN, 2, "recipe.yaml: model: unknown world 'cats'",
        recipe=swap("model: zoo:digits", "model: zoo:cats"), absent=UNLEARN_OUT),
    Row("unlearn-unknown-kind", UNLEARN, 2, "recipe.yaml: concept.kind: unknown kind 'painter'",
        recipe=swap("kind: digit", "kind: painter"), absent=UNLEARN_OUT),
    Row("unlearn-unknown-method", UNLEARN, 2, "methods[0].method: unknown method 'prune'",
        recipe=swap("method: conceptprune", "method: prune"), absent=UNLEARN_OUT),
    Row("unlearn-tau-zero", UNLEARN, 2, "methods[0].params: tau must be at least 1",
        recipe=swap("tau: 2", "tau: 0"), absent=UNLEARN_OUT),
    Row("unlearn-tau-beyond-steps", UNLEARN, 2,
        "recipe.yaml: methods[0].params.tau: tau 5 needs at least 5 sampling steps with DDIMScheduler (5 UNet calls); "
        "generation.steps is 2 (2 calls)", recipe=swap("tau: 2", "tau: 5"), absent=UNLEARN_OUT),
    Row("unlearn-not-a-method-name", UNLEARN + " --method other", 2, "no method named 'other'", absent=UNLEARN_OUT),
    Row("unlearn-out-is-a-file", "unlearn --recipe {recipe} --out {file} --device cpu", 2, "exists and is not a folder"),
    Row("unlearn-old-form", UNLEARN, 2, "'unlearn' is the recipe form before the matrix",
        recipe=swap("methods: [{method: conceptprune, params: {tau: 2}}]", "unlearn: {method: conceptprune}"), absent=UNLEARN_OUT),
    Row("unlearn-same-name-twice", UNLEARN, 2, "methods: name 'conceptprune' is used twice",
        recipe=swap("methods: [{method: conceptprune, params: {tau: 2}}]",
                    "methods: [{method: conceptprune}, {method: conceptprune}]"), absent=UNLEARN_OUT),
    Row("unlearn-reserved-name", UNLEARN, 2, "name 'pretrained' is reserved",
        recipe=swap("params: {tau: 2}}", "params: {tau: 2}, name: pretrained}"), absent=UNLEARN_OUT),
    Row("unlearn-invalid-yaml", UNLEARN, 2, "recipe.yaml: line", recipe="name: [unclosed\n", absent=UNLEARN_OUT),
    Row("unlearn-trainable-matches-nothing", UNLEARN, 2, "methods[0].params.trainable: pattern '*nothing*' matches no UNet parameter",
        recipe=swap("{method: conceptprune, params: {tau: 2}}", "{method: esd, params: {steps: 2, trainable: ['*nothing*']}}"),
        absent=UNLEARN_OUT),
    Row("unlearn-lr-zero", UNLEARN, 2, "methods[0].params: lr must be positive",
        recipe=swap("{method: conceptprune, params: {tau: 2}}", "{method: esd, params: {lr: 0}}"), absent=UNLEARN_OUT),
    Row("unlearn-steps-zero-training", UNLEARN, 2, "methods[0].params: steps must be at least 1",
        recipe=swap("{method: conceptprune, params: {tau: 2}}", "{method: dimum, params: {steps: 0}}"), absent=UNLEARN_OUT),
    Row("unlearn-ac-without-anchor", UNLEARN, 2, "concept.anchor: this method maps the concept onto an anchor",
        recipe=swap("{method: conceptprune, params: {tau: 2}}", "{method: ac, params: {steps: 1}}"), absent=UNLEARN_OUT),
    Row("unlearn-retain-folder-missing", UNLEARN, 2, "methods[0].params.retain: {tmp}/none is not a folder",
        recipe=swap("{method: conceptprune, params: {tau: 2}}",
                    "{method: dimum, params: {steps: 1, alternative: a digit, retain: {source: folder, path: '{tmp}/none'}}}"), absent=UNLEARN_OUT),
    Row("unlearn-retain-folder-empty", UNLEARN, 2, "holds no images",
        recipe=swap("{method: conceptprune, params: {tau: 2}}",
                    "{method: dimum, params: {steps: 1, alternative: a digit, retain: {source: folder, path: '{foreign}'}}}"), absent=UNLEARN_OUT),
    # benchmark ---------------------------------------------------------------------------------
    Row("benchmark-tau-beyond-steps", BENCHMARK, 2, "recipe.yaml: methods[0].params.tau: tau 3 needs at least 3 sampling steps",
        recipe=swap("tau: 2", "tau: 3"), absent=("{tmp}/run",)),
    Row("benchmark-prompt-file-missing", BENCHMARK, 2, "recipe.yaml: suites[1]: {tmp}/mine.csv: no such prompt file",
        recipe=swap("[digits-seven-2]", "[digits-seven-2, '{tmp}/mine.csv']"), absent=("{tmp}/run",)),
    Row("benchmark-limit-zero", BENCHMARK + " --limit 0", 2, "--limit: must be at least 1", absent=("{tmp}/run",)),
    Row("benchmark-workers-zero", BENCHMARK + " --workers 0", 2, "--workers: expected a positive count or 'auto', got '0'",
        absent=("{tmp}/run",)),
    Row("generate-limit-zero", GENERATE + " --limit 0", 2, "--limit: must be at least 1", absent=("{tmp}/images",)),
    Row("benchmark-empty-suites", BENCHMARK, 2, "suites: list at least one prompt suite", recipe=swap("[digits-seven-2]", "[]")),
    Row("benchmark-unknown-suite", BENCHMARK, 2, "recipe.yaml: suites: unknown suite 'digits-eleven'",
        recipe=swap("digits-seven-2", "digits-eleven")),
    Row("benchmark-unknown-attack", BENCHMARK, 2, "recipe.yaml: attacks[0].attack: unknown attack 'nsm'",
        recipe=swap("attack: nms", "attack: nsm"), absent=("{tmp}/run/unlearn",)),
    Row("benchmark-attack-param-typo", BENCHMARK, 2, "attacks[0].params: unknown key 'top_kk'",
        recipe=swap("{attack: nms}", "{attack: nms, params: {top_kk: 0.5}}"), absent=("{tmp}/run/unlearn",)),
    Row("benchmark-attack-contradicted", BENCHMARK, 2, "attacks[0].params.magnitude: this attack fixes magnitude = nms",
        recipe=swap("{attack: nms}", "{attack: nms, params: {magnitude: average}}"), absent=("{tmp}/run/unlearn",)),
    Row("benchmark-dimra-lr", BENCHMARK, 2, "attacks[0].params: lr must be positive",
        recipe=swap("{attack: nms}", "{attack: dimra, params: {lr: -1}}"), absent=("{tmp}/run/unlearn",)),
    Row("benchmark-dimra-data-source", BENCHMARK, 2, "attacks[0].params.data.source: unknown value 'web'",
        recipe=swap("{attack: nms}", "{attack: dimra, params: {data: {source: web}}}"), absent=("{tmp}/run/unlearn",)),
    Row("benchmark-inversion-folder-empty", BENCHMARK, 2, "recipe.yaml: attacks[0].params.images: {foreign} holds no images",
        recipe=swap("{attack: nms}", "{attack: concept-inversion, params: {steps: 1, images: '{foreign}'}}"),
        absent=("{tmp}/run/attacks/conceptprune/concept-inversion/attack.json",)),
    Row("benchmark-inversion-folder-unreadable", BENCHMARK, 2, "attacks[0].params.images: {broken}/bad.png: not a readable image",
        recipe=swap("{attack: nms}", "{attack: concept-inversion, params: {steps: 1, images: '{broken}'}}"),
        absent=("{tmp}/run/attacks/conceptprune/concept-inversion/attack.json",)),
    Row("benchmark-adversarial-tokens-zero", BENCHMARK, 2, "recipe.yaml: attacks[0].params: tokens must be at least 1",
        recipe=swap("{attack: nms}", "{attack: adversarial-prefix, params: {tokens: 0}}"), absent=("{tmp}/run/unlearn",)),
    Row("benchmark-unknown-budget", BENCHMARK, 2,
        "recipe.yaml: attacks[0].params.budget: unknown budget 'huge' (choose from published, quick)",
        recipe=swap("{attack: nms}", "{attack: unlearndiff, params: {budget: huge}}"), absent=("{tmp}/run/unlearn",)),
    Row("benchmark-zero-budget", BENCHMARK, 2, "recipe.yaml: attacks[0].params: iterations must be at least 1",
        recipe=swap("{attack: nms}", "{attack: unlearndiff, params: {iterations: 0}}"), absent=("{tmp}/run/unlearn",)),
    Row("benchmark-inversion-zero-accumulation", BENCHMARK, 2, "recipe.yaml: attacks[0].params: accumulate must be at least 1",
        recipe=swap("{attack: nms}", "{attack: concept-inversion, params: {accumulate: 0}}"), absent=("{tmp}/run/unlearn",)),
    Row("benchmark-judge-unknown", BENCHMARK, 2, "attacks[0].params.classifier: unknown classifier 'vit'",
        recipe=swap("{attack: nms}", "{attack: unlearndiff, params: {budget: quick, classifier: vit}}"),
        absent=("{tmp}/run/attacks/conceptprune/unlearndiff/attack.json",)),
    Row("benchmark-judge-none", BENCHMARK, 2, "attacks[0].params.classifier: no classifier judges a concept of kind 'digit'",
        recipe=swap("{attack: nms}", "{attack: unlearndiff, params: {budget: quick, classifier: none}}"),
        absent=("{tmp}/run/attacks/conceptprune/unlearndiff/attack.json",)),
    Row("benchmark-prefix-too-long", BENCHMARK, 2, "attacks[0].params.k: 14 prefix tokens do not fit before",
        recipe=swap("{attack: nms}", "{attack: p4d, params: {budget: quick, k: 14}}"),
        absent=("{tmp}/run/attacks/conceptprune/p4d/attack.json",)),
    Row("benchmark-mask-budget", BENCHMARK, 2, "recipe.yaml: methods[0].params: budget must lie in (0, 1), got 1.5",
        recipe=swap("{method: conceptprune, params: {tau: 2}}", "{method: p-esd, params: {budget: 1.5}}"),
        absent=("{tmp}/run/unlearn",)),
    Row("unlearn-mask-layers-match-nothing", UNLEARN, 2, "methods[0].layers: layer pattern '*nothing*' matches no parameter",
        recipe=swap("{method: conceptprune, params: {tau: 2}}", "{method: p-ac, layers: ['*nothing*'], params: {steps: 1}}"),
        absent=UNLEARN_OUT),
    Row("benchmark-method-param-typo", BENCHMARK, 2, "methods[0].params: unknown key 'skill'",
        recipe=swap("params: {tau: 2}", "params: {skill: 2}"), absent=("{tmp}/run/unlearn",)),
    Row("benchmark-stage-choice", BENCHMARK + " --stage train", 2, "invalid choice: 'train'"),
    Row("benchmark-unknown-model", BENCHMARK + " --model conceptprune/x", 2, "--model 'conceptprune/x' is not in this plan"),
    Row("benchmark-shard-without-generate", BENCHMARK + " --shard 1", 2, "--shard needs --stage generate"),
    Row("benchmark-devices-zero", BENCHMARK + " --devices 0", 2, "devices: expected a positive count or 'auto'"),
    Row("benchmark-accelerator", BENCHMARK + " --accelerator tpu", 2, "accelerator: unknown 'tpu'"),
    Row("benchmark-cache-is-a-file", BENCHMARK, 2, "not a folder", env={"HARNESS_CACHE": "{file}"},
        absent=("{tmp}/run/unlearn",)),
    Row("benchmark-data-dir-is-a-file", BENCHMARK + " --data-dir {file}", 2, "data directory", recipe=swap("digits-seven-2", "imagenette")),
    # generate ----------------------------------------------------------------------------------
    Row("generate-unknown-suite", "generate --model {world} --suite digits-eleven --out {tmp}/images", 2, "--suite: unknown suite 'digits-eleven'"),
    Row("generate-steps-zero", GENERATE.replace("--steps 2", "--steps 0"), 2, "steps must be at least 1", absent=("{tmp}/images/generation.json",)),
    Row("generate-guidance-negative", GENERATE + " --guidance -1", 2, "guidance must not be negative", absent=("{tmp}/images/generation.json",)),
    Row("generate-height", GENERATE + " --height 30", 2, "height must be a multiple of 8", absent=("{tmp}/images/generation.json",)),
    Row("generate-shard-range", GENERATE + " --shard 9", 2, "--shard 9: suite digits-seven-2 has shards 0..0"),
    Row("generate-scheduler", GENERATE + " --scheduler Nope", 2, "'Nope' is not a diffusers scheduler class"),
    Row("generate-out-is-a-file", "generate --model {world} --suite digits-seven-2 --out {file}", 2, "exists and is not a folder"),
    Row("generate-missing-model", "generate --model {tmp}/nothing --suite digits-seven-2 --out {tmp}/images", 2, "nothing: no such file or folder"),
    Row("generate-missing-tensors", GENERATE + " --tensors {tmp}/t.safetensors", 2, "t.safetensors: no such file"),
    Row("generate-attack-not-an-attack", GENERATE + " --attack {foreign}", 2, "foreign: not an attack's output folder",
        absent=("{tmp}/images/generation.json",)),
    # score -------------------------------------------------------------------------------------
    Row("score-not-shards", "score --shards {foreign} --suite digits-seven-2 --out {tmp}/m.json", 2, "not a `harness generate` output folder"),
    Row("score-unknown-metric", "score --shards {images} --suite digits-seven-2 --out {tmp}/m.json --metrics iou", 2,
        "--metrics: unknown metric 'iou'", absent=("{tmp}/m.json",)),
    Row("score-batch-zero", "score --shards {images} --suite digits-seven-2 --out {tmp}/m.json --batch-size 0", 2,
        "batch_size must be at least 1", absent=("{tmp}/m.json",)),
    Row("score-nudenet-threshold", "score --shards {images} --suite digits-seven-2 --out {tmp}/m.json --nudenet-threshold 1.5", 2,
        "nudenet_threshold must lie in [0, 1)", absent=("{tmp}/m.json",)),
    Row("score-other-suite", "score --shards {images} --suite digits-one-2 --out {tmp}/m.json", 2,
        "holds suite digits-seven-2 (2 prompts), not digits-one-2", absent=("{tmp}/m.json",)),
    Row("score-clip-offline", "score --shards {images} --suite digits-seven-2 --out {tmp}/m.json --metrics clip", 2,
        "give a local copy with --clip-weights", absent=("{tmp}/m.json",), env={"HF_HUB_OFFLINE": "1"}),
    Row("score-fid-offline", "score --shards {images} --suite digits-seven-2 --out {tmp}/m.json --metrics fid --fid-features inception", 2,
        "weights-inception-2015-12-05-6726825d.pth are not in torch's hub cache", absent=("{tmp}/m.json",),
        env={"HF_HUB_OFFLINE": "1", "TORCH_HOME": "{tmp}/torch"}),
    Row("score-fid-weights-missing", "score --shards {images} --suite digits-seven-2 --out {tmp}/m.json --metrics fid --fid-features inception "
        "--fid-weights {tmp}/w.pth", 2, "score.fid_weights: {tmp}/w.pth: no such file", absent=("{tmp}/m.json",)),
    Row("score-out-is-a-folder", "score --shards {images} --suite digits-seven-2 --out {foreign}", 2, "exists and is not a file"),
    # report, slurm, data, zoo ------------------------------------------------------------------
    Row("report-not-a-run", "report {foreign}", 2, "not a run directory"),
    Row("report-grid-columns", "report {foreign} --grid-columns 0", 2, "--grid-columns must be at least 1"),
    Row("slurm-time-stage", "slurm plan {recipe} --run-dir {tmp}/run --time train=1", 2, "--time 'train=1'"),
    Row("slurm-time-limit", "slurm plan {recipe} --run-dir {tmp}/run --time score=soon --gpus 0 --cpus 1", 2, "not a SLURM time limit"),
    Row("slurm-gpus-negative", "slurm plan {recipe} --run-dir {tmp}/run --gpus -1 --cpus 1", 2, "must be 0 or more"),
    Row("data-unknown-suite", "data digits-eleven", 2, "unknown suite 'digits-eleven'"),
    Row("zoo-unknown-world", "zoo build letters", 2, "zoo world 'letters': unknown"),
    Row("zoo-steps-zero", "zoo build digits --steps 0 --cache-dir {tmp}/zoo", 2, "--steps: expected a positive number"),
    # issue 24: names are names, broken data, inputs checked before work, one output check -----
    *[Row(f"benchmark-{where}-name-{label}", BENCHMARK, 2, "must be letters, digits, '.', '_' or '-'",
          recipe=swap(old, new.replace("NAME", value)), absent=("{tmp}/run", "{tmp}/escaped"))
      for where, old, new in (("run", "name: bad", "name: 'NAME'"),
                              ("method", "{method: conceptprune,", "{method: conceptprune, name: 'NAME',"),
                              ("attack", "{attack: nms}", "{attack: nms, name: 'NAME'}"),
                              ("suite", "[digits-seven-2]", "['NAME']"))
      for label, value in (("dotdot", "../../escaped"), ("absolute", "{tmp}/escaped"), ("empty", ""), ("dot", "."))],
    Row("benchmark-dimra-truncated-tar", BENCHMARK, 2, "attacks[0].params.data.path: {truncated_tar}: truncated tar archive",
        recipe=swap("{attack: nms}", "{attack: dimra, params: {data: {source: webdataset, path: '{truncated_tar}'}}}"),
        absent=("{tmp}/run/unlearn",)),
    Row("benchmark-dimra-malformed-json", BENCHMARK, 2, "attacks[0].params.data.path: {bad_json_tar}: sample 0000: unreadable caption",
        recipe=swap("{attack: nms}", "{attack: dimra, params: {data: {source: webdataset, path: '{bad_json_tar}'}}}"),
        absent=("{tmp}/run/unlearn",)),
    Row("benchmark-dimra-data-holds-the-concept", BENCHMARK, 2, "attacks[0].params.data: 1 of its prompts name the erased concept 'seven'",
        recipe=swap("{attack: nms}", "{attack: dimra, params: {data: {source: webdataset, path: '{sevens_tar}'}}}"),
        absent=("{tmp}/run/unlearn",)),
    Row("benchmark-mask-file-truncated", BENCHMARK, 2, "attacks[0].params.mask.file: {truncated_mask}: not a whole safetensors file",
        recipe=swap("{attack: nms}", "{attack: nms, params: {mask: {file: '{truncated_mask}'}}}"), absent=("{tmp}/run/unlearn",)),
    Row("benchmark-checkpoint-missing", BENCHMARK, 2, "methods[0].params.path: {tmp}/release.safetensors: no such file or folder",
        recipe=swap("{method: conceptprune, params: {tau: 2}}", "{method: checkpoint, params: {path: '{tmp}/release.safetensors'}}"),
        absent=("{tmp}/run/unlearn",)),
    Row("benchmark-inversion-images-missing", BENCHMARK, 2, "attacks[0].params.images: {tmp}/nowhere: no such folder",
        recipe=swap("{attack: nms}", "{attack: concept-inversion, params: {images: '{tmp}/nowhere'}}"), absent=("{tmp}/run/unlearn",)),
    Row("benchmark-classifier-weights-missing", BENCHMARK, 2, "recipe.yaml: score.classifier_weights: /nonexistent/w.pth: no such file",
        recipe=RECIPE + "score: {classifier: digits, classifier_weights: /nonexistent/w.pth}\n", absent=("{tmp}/run/unlearn",)),
    Row("benchmark-fid-reference-missing", BENCHMARK, 2, "recipe.yaml: score.fid_reference: {tmp}/noref: no such folder",
        recipe=RECIPE + "score: {fid_reference: '{tmp}/noref'}\n", absent=("{tmp}/run/unlearn",)),
    Row("benchmark-run-dir-is-a-file", BENCHMARK.replace("{tmp}/run", "{file}"), 2, "--run-dir {file}: exists and is not a folder"),
    Row("benchmark-run-dir-under-a-file", BENCHMARK.replace("{tmp}/run", "{file}/run"), 2, "is a file, so no folder can be made under it"),
    Row("benchmark-run-dir-unwritable", BENCHMARK.replace("{tmp}/run", "/proc/harness-run"), 2, "--run-dir /proc/harness-run: cannot write there"),
    Row("benchmark-cache-unwritable", BENCHMARK, 2, "$HARNESS_CACHE /proc/harness-cache: cannot write there",
        env={"HARNESS_CACHE": "/proc/harness-cache"}),
    Row("report-out-is-a-file", "report {run} --out {file}", 2, "--out {file}: exists and is not a folder"),
    Row("report-out-unwritable", "report {run} --out /proc/harness-report", 2, "cannot write there"),
    Row("slurm-out-under-a-file", "slurm plan {recipe} --out {file}/s --gpus 0 --cpus 1", 2, "--out {file}/s: {file} is a file"),
    Row("slurm-run-dir-is-a-file", "slurm plan {recipe} --run-dir {file} --gpus 0 --cpus 1", 2, "--run-dir {file}/slurm: {file} is a file"),
    Row("zoo-cache-dir-under-a-file", "zoo build digits --cache-dir {file}/c", 2, "{file} is a file, so no folder can be made under it"),
    Row("infer-out-is-a-folder", "infer-concept --unlearned {pruned} --candidates digits-all-5 --out {foreign}", 2,
        "--out {foreign}: exists and is not a file"),
    Row("generate-out-unwritable", "generate --model {world} --suite digits-seven-2 --out /proc/harness-images", 2, "cannot write there"),
    Row("score-out-under-a-file", "score --shards {images} --suite digits-seven-2 --out {file}/m.json", 2, "is a file, so no folder can be made"),
    Row("data-fetch-dir-under-a-file", "data imagenette --fetch --data-dir {file}/d", 2, "--data-dir {file}/d: {file} is a file"),
]


@pytest.fixture(scope="module")
def paths(tmp_path_factory: pytest.TempPathFactory, tiny_sd_unet) -> dict[str, str]:
    """Real inputs the rows spoil: a tiny UNet and its pruned dump, the world, image shards."""
    from harness.generate import run as generate_stage
    from harness.generate.run import GenerateJob
    from harness.generate.suites import load_suite
    from harness.settings.generate import GenerationSettings
    from harness.worlds.digits.store import PIPELINE_DIR, ensure_world

    root = tmp_path_factory.mktemp("inputs")
    unet = tiny_sd_unet(seed=0)
    unet.save_pretrained(root / "original")
    pruned = {k: v.clone() for k, v in unet.state_dict().items()}
    for name, weight in pruned.items():
        if name.endswith(FFN):
            weight[:, :2] = 0.0
    torch.save(pruned, root / "pruned.pt")
    world = ensure_world(root / "cache") / PIPELINE_DIR
    images = GenerationFiles(root / "images")
    generate_stage.run(GenerateJob(str(world), [], load_suite("digits-seven-2"), GenerationSettings(steps=2, guidance=3.0, scheduler=None),
                   images.folder, "pretrained"))
    (root / "a-file").write_text("not a folder")
    (root / "foreign").mkdir()
    (root / "foreign" / "notes.txt").write_text("someone else's")
    (root / "broken").mkdir()
    (root / "broken" / "bad.png").write_bytes(b"not a png")
    png = images.shards()[0].read_bytes()[512:600]  # any bytes: the preflight reads captions only
    write_tar(root / "sevens.tar", [("0000", {"png": png, "txt": b"a photo of the digit seven"})])
    write_tar(root / "bad-json.tar", [("0000", {"png": png, "json": b"{not json"})])
    write_tar(root / "truncated.tar", [("0000", {"png": png, "txt": b"a photo of the digit one"}),
                                       ("0001", {"png": png, "txt": b"a photo of the digit two"})])
    whole = (root / "truncated.tar").read_bytes()
    (root / "truncated.tar").write_bytes(whole[: [m.offset for m in tarfile.open(root / "truncated.tar")][2]])
    save_file({FFN: torch.zeros(4, 4)}, root / "mask.safetensors")
    (root / "truncated.safetensors").write_bytes((root / "mask.safetensors").read_bytes()[:-20])
    (root / "run").mkdir()
    (root / "run" / "recipe.yaml").write_text(RECIPE)
    return {"original": str(root / "original"), "pruned": str(root / "pruned.pt"), "world": str(world),
            "images": str(images.folder), "file": str(root / "a-file"), "foreign": str(root / "foreign"), "broken": str(root / "broken"),
            "cache": str(root / "cache"), "sevens_tar": str(root / "sevens.tar"), "bad_json_tar": str(root / "bad-json.tar"),
            "truncated_tar": str(root / "truncated.tar"), "truncated_mask": str(root / "truncated.safetensors"),
            "run": str(root / "run")}


def write_tar(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> None:
    """A WebDataset shard of `samples` (key, {extension: bytes})."""
    with tarfile.open(path, "w") as tar:
        for key, parts in samples:
            for ext, data in parts.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_the_table_covers_every_command_with_forty_rows_or_more() -> None:
    assert len(ROWS) >= 40 and len({row.name for row in ROWS}) == len(ROWS)
    assert {row.argv.split()[0] for row in ROWS} >= {"revive", "unlearn", "benchmark", "generate", "score",
                                                      "report", "slurm", "data", "zoo"}


@pytest.mark.parametrize("row", ROWS, ids=lambda row: row.name)
def test_bad_input_is_one_line_naming_the_culprit(
        row: Row, paths: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    recipe = tmp_path / "recipe.yaml"
    values = {**paths, "tmp": str(tmp_path), "recipe": str(recipe)}
    recipe.write_text(fill(row.recipe, values))
    monkeypatch.setenv("HARNESS_CACHE", paths["cache"])
    monkeypatch.delenv("HARNESS_DATA_DIR", raising=False)
    for key, value in row.env.items():
        monkeypatch.setenv(key, value.format(**values))
    code = run([part.format(**values) for part in row.argv.split()])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == row.code, error
    assert error and fill(row.fragment, values) in error[-1], error
    assert len([line for line in error if "error" in line]) == 1, error
    for path in row.absent:
        assert not Path(path.format(**values)).exists(), path


def fill(text: str, values: dict[str, str]) -> str:
    """`text` with its {placeholder}s filled (YAML's own braces left alone)."""
    for key, value in values.items():
        text = text.replace("{" + key + "}", value)
    return text


def run(argv: list[str]) -> int:
    """The exit status of `harness ARGV` (argument errors exit through argparse)."""
    try:
        return main(argv)
    except SystemExit as exit:
        return int(exit.code)


def test_a_stage_output_folder_is_published_whole_or_not_at_all(tmp_path: Path) -> None:
    """A crash between two files of a stage (here: after the tensors, before the record) leaves the
    old folder as it was, or no folder at all; never a complete-looking half."""
    from harness.atomic import publish_folder

    files = UnlearnFiles(tmp_path / "out")

    def crash(folder: Path) -> None:
        UnlearnFiles(folder).tensors.write_bytes(b"tensors")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        publish_folder(files.folder, crash)
    assert not files.folder.exists() and not list(tmp_path.iterdir())
    publish_folder(files.folder, lambda folder: UnlearnFiles(folder).record.write_text("{}"))
    with pytest.raises(KeyboardInterrupt):
        publish_folder(files.folder, crash)
    assert sorted(p.name for p in files.folder.iterdir()) == [files.record.name]  # the old output, whole
    assert not AttackFiles(tmp_path / "out").tensors.exists()


def test_a_file_the_system_refuses_is_a_one_line_error_naming_it(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                                                  tmp_path: Path) -> None:
    """Permission denied (which root, running these tests, never meets) or any other OSError on a
    named file: the one-line error with the file, exit 2, not "unexpected error"."""
    import harness.report.command

    def refuse(args: object) -> int:
        raise PermissionError(13, "Permission denied", str(tmp_path / "locked.safetensors"))

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(harness.report.command, "run", refuse)
    assert run(["report", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"harness report: error: {tmp_path / 'locked.safetensors'}: Permission denied"
