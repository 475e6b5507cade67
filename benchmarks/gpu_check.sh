#!/usr/bin/env bash
# The GPU figures the project lacks, in one run on one GPU (BENCHMARKS.md, "GPU check").
#
#   bash benchmarks/gpu_check.sh [--tiny] [--out DIR]
#
# Steps, in this order, each under its own `timeout` and all under one budget (GPU_CHECK_BUDGET
# seconds, default 560), so a failing or hanging step costs only its own time and the summary is
# always printed:
#   env            nvidia-smi; python, torch, CUDA and package versions (and where each is
#                  imported from); the harness modules the steps use import, without open_clip
#                  or nudenet
#   revival        benchmarks/revival_speed.py: the 16 SD-v1.5 ff.net.2 shapes completed one
#                  layer at a time, float32, both weight families, warmed up first (goal <= 1 s)
#   generation     benchmarks/generation_throughput.py --sd15-random: fp16, 512 px, 20 steps,
#                  batch 8, 80 prompts, the harness against a plain diffusers loop, best of 2
#                  rounds (goal >= 0.9x)
#   esd            benchmarks/esd_speed.py: ESD-x training steps/s on the SD-v1.5-shaped UNet
#                  (float32 weights, the harness's ESD objective and fine-tuning engine)
#   revival-batch  as revival, same-shaped layers completed together (--batch)
#   sd-scale       benchmarks/sd_scale.py: every stage of a small recipe on the SD-v1.5-shaped
#                  pipeline (ConceptPrune, its defended twin, ESD-x, revival with zeros and with
#                  eq7, generation at 512 px fp16, scoring), seconds and peak memory per stage
# --tiny: every step on the CPU at tiny sizes (a check of this script; a minute or two).
# Needs diffusers, webdataset (and what BENCHMARKS.md lists) importable; the harness is used from
# this checkout (PYTHONPATH), not installed. Writes DIR/gpu_check.md (the summary table) and
# DIR/<step>.log; the exit status is non-zero when a step failed.
set -u -o pipefail

TINY=0
OUT_DIR=""
while [ $# -gt 0 ]; do
  case "$1" in
    --tiny) TINY=1; shift ;;
    --out) OUT_DIR="${2:?--out needs a folder}"; shift 2 ;;
    --out=*) OUT_DIR="${1#--out=}"; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument '$1' (use --tiny, --out DIR)" >&2; exit 2 ;;
  esac
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 2
OUT_DIR=${OUT_DIR:-${OUT:+$OUT/gpu-check}}
OUT_DIR=${OUT_DIR:-/tmp/gpu-check}
mkdir -p "$OUT_DIR" || exit 2
OUT_DIR=$(cd "$OUT_DIR" && pwd)

export PYTHONPATH="$ROOT:${PYTHONPATH:-}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
export TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET:-560}
START=$(date +%s.%N)

if [ "$TINY" = 1 ]; then
  THREADS=${OMP_NUM_THREADS:-1}
  REVIVAL=(benchmarks/revival_speed.py --device cpu --family both --layers 2 --skip-reference --skip-previous
           --skip-tight --dtype float32 --warmup --threads "$THREADS")
  GENERATION=(benchmarks/generation_throughput.py --sd15-tiny --accelerator cpu --dtype float32 --height 64
              --width 64 --steps 2 --batch-size 4 --prompts-per-digit 1 --rounds 1 --threads "$THREADS")
  ESD=(benchmarks/esd_speed.py --tiny --device cpu --steps 2 --warmup 1 --ddim-steps 4 --threads "$THREADS")
  SD_SCALE=(benchmarks/sd_scale.py --tiny --device cpu --height 64 --steps 4 --esd-steps 2 --prompts 2)
  NEED_CUDA=0
else
  REVIVAL=(benchmarks/revival_speed.py --device cuda --family both --skip-reference --skip-previous --skip-tight
           --dtype float32 --warmup)
  GENERATION=(benchmarks/generation_throughput.py --sd15-random --accelerator gpu --dtype float16 --height 512
              --width 512 --steps 20 --batch-size 8 --prompts-per-digit 8 --rounds 2)
  ESD=(benchmarks/esd_speed.py --device cuda --steps 12 --warmup 3 --ddim-steps 50)
  SD_SCALE=(benchmarks/sd_scale.py --device cuda --dtype float16 --height 512 --steps 10 --esd-steps 5 --prompts 8)
  NEED_CUDA=1
fi

ENV_PY=$(cat <<'PYTHON'
import importlib, os, platform, sys
print("python", platform.python_version(), sys.executable)
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(),
      "available", torch.cuda.is_available(), "threads", torch.get_num_threads())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("gpu", torch.cuda.get_device_name(0), "capability", torch.cuda.get_device_capability(0),
          "memory GiB", round(p.total_memory / 2**30, 1), "bf16", torch.cuda.is_bf16_supported(),
          "count", torch.cuda.device_count())
elif os.environ.get("NEED_CUDA") == "1":
    sys.exit("no CUDA device visible to torch")
from importlib import metadata, util
for module, dist in (("diffusers", "diffusers"), ("transformers", "transformers"), ("accelerate", "accelerate"),
                     ("lightning", "lightning"), ("torchmetrics", "torchmetrics"), ("huggingface_hub", "huggingface_hub"),
                     ("tokenizers", "tokenizers"), ("safetensors", "safetensors"), ("webdataset", "webdataset"),
                     ("braceexpand", "braceexpand"), ("PIL", "pillow"), ("requests", "requests"),
                     ("threadpoolctl", "threadpoolctl"), ("numpy", "numpy"), ("scipy", "scipy"), ("yaml", "pyyaml"),
                     ("tqdm", "tqdm"), ("torchvision", "torchvision"), ("open_clip", "open_clip_torch"), ("nudenet", "nudenet")):
    spec = util.find_spec(module)
    try:
        version = metadata.version(dist)
    except metadata.PackageNotFoundError:
        version = "?"
    print(f"{module:16} {version if spec else 'MISSING':12} {spec.origin if spec else '-'}")
import harness, harness.models.pipelines, harness.generate.run, harness.train.engine, harness.unlearn.esd
print("harness", harness.__version__, os.path.dirname(harness.__file__))
loaded = sorted(m for m in ("open_clip", "nudenet") if m in sys.modules)
if loaded:
    sys.exit(f"the steps import {loaded}, absent on the GPU machine")
print("open_clip and nudenet not imported by the steps modules")
PYTHON
)

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

ROWS=()
FAILED=0

# parse_<step> LOG -> one line: the figure (empty when the log has none)
parse_env() {
  awk '/^torch /{t="torch " $2 ", CUDA " $4} /^gpu /{sub(/^gpu /, ""); sub(/ capability.*/, ""); g=$0}
       /^diffusers /{d="diffusers " $2}
       END { s=t; if (d != "") s=s ", " d; if (g != "") s=g ", " s; print s }' "$1"
}
parse_revival() {
  awk '/^## family .*: [0-9]+ layers/ { n=$(NF-1) }
       /^total (power-law|real-spectrum): harness/ { f=$2; sub(/:$/, "", f); s=s sep f " " $4 " s"; sep=", " }
       /^worst residual: harness/ { r=r rsep $4; rsep="/" }
       END { if (s != "") print s " for " n " layers each (worst residual " r ")" }' "$1"
}
parse_generation() {
  awk -F'|' '/^\| plain loop \|/ { gsub(/ /, "", $4); p=$4 } /^\| harness \|/ { gsub(/ /, "", $4); gsub(/ /, "", $5); h=$4; r=$5 }
             END { if (r != "") print "harness/plain " r "x (harness " h " img/s, plain " p " img/s)" }' "$1"
}
parse_sd_scale() {
  awk -F'|' '/^\| (unlearn|revival|generate|score) / { gsub(/^ +| +$/, "", $2); gsub(/ /, "", $3); gsub(/ /, "", $5)
                                                      split($2, w, " "); s=s sep w[1] " " w[2] " " $3 " s"; sep=", "
                                                      if ($5 != "-" && $5 + 0 > g) g=$5 + 0 }
             END { if (s != "") print s (g > 0 ? ", peak GPU " g " MB" : "") }' "$1"
}
parse_esd() {
  awk '/^RESULT / { for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
                    f = "ESD %s steps/s (mean i %s; at the mean of the draw %s), update only %s steps/s, peak GPU memory %s GiB\n"
                    printf f, v["esd_steps_per_s"], v["mean_i"], v["expected_esd_steps_per_s"], v["update_steps_per_s"], v["peak_gib"] }' "$1"
}
goal_met() {  # goal_met STEP FIGURE -> met / NOT met / -
  [ "$TINY" = 1 ] && { echo "n/a (tiny)"; return; }
  [ -n "$2" ] || { echo "-"; return; }
  case "$1" in
    revival|revival-batch) echo "$2" | awk '{ n=0; bad=0; for (i = 1; i <= NF; i++) if ($(i+1) ~ /^s,?$/ && $i ~ /^[0-9.]+$/) { n++; if ($i > 1.0) bad=1 } }
                                           END { print (n == 0 ? "-" : (bad ? "NOT met" : "met")) }' ;;
    generation) echo "$2" | awk '{ r=$2; sub(/x$/, "", r); print (r + 0 >= 0.9 ? "met" : "NOT met") }' ;;
    *) echo "-" ;;
  esac
}

# run_step NAME TIMEOUT GOAL PARSER WHAT -- COMMAND...  (WHAT: the header; default the command)
run_step() {
  local name=$1 limit=$2 goal=$3 parser=$4 what=$5; shift 6
  local log="$OUT_DIR/$name.log" left status rc figure started seconds
  left=$(awk -v s="$START" -v b="$BUDGET" -v n="$(now)" 'BEGIN { printf "%d", b - (n - s) }')
  [ "$left" -lt "$limit" ] && limit=$left
  echo
  [ -n "$what" ] || what="$*"
  echo "=== $name (timeout ${limit} s): $what"
  if [ "$limit" -lt 15 ]; then
    status="SKIPPED (budget spent)"; seconds=0; figure=""
    echo "skipped: the budget of $BUDGET s is spent" > "$log"
  else
    started=$(now)
    { echo "# $what"; echo "# timeout $limit s, $(date -u +%FT%TZ)"; } > "$log"
    NEED_CUDA=$NEED_CUDA timeout -k 15 "$limit" "$@" >> "$log" 2>&1
    rc=$?
    seconds=$(elapsed "$started")
    figure=$("$parser" "$log")
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then status="TIMEOUT ($limit s)"
    elif [ "$rc" != 0 ]; then status="FAILED (exit $rc)"
    elif [ -z "$figure" ]; then status="FAILED (no figure in the log)"
    else status="ok"; fi
  fi
  [ "$status" = ok ] || FAILED=1
  tr '\r' '\n' < "$log" | grep -v -E '[0-9]+%\||it/s\]|^[[:space:]]*$' | tail -n "$([ "$name" = env ] && echo 40 || echo 12)"
  echo "--- $name: $status in $seconds s: ${figure:--}"
  ROWS+=("| $name | $status | $seconds | ${figure:--} | $goal | $(goal_met "$name" "$figure") | $name.log |")
}

echo "gpu_check: $([ "$TINY" = 1 ] && echo 'tiny (CPU)' || echo 'GPU'), out $OUT_DIR, budget $BUDGET s, repo $ROOT"
run_step env 90 "-" parse_env "nvidia-smi; python, torch, CUDA, package versions; harness imports" -- bash -c 'command -v nvidia-smi >/dev/null && nvidia-smi || echo "no nvidia-smi"; "$0" -c "$1"' "$PY" "$ENV_PY"
run_step revival 150 "<= 1 s per family" parse_revival "" -- "$PY" "${REVIVAL[@]}"
run_step generation 200 ">= 0.9x plain" parse_generation "" -- "$PY" "${GENERATION[@]}"
run_step esd 150 "-" parse_esd "" -- "$PY" "${ESD[@]}"
run_step revival-batch 120 "<= 1 s per family" parse_revival "" -- "$PY" "${REVIVAL[@]}" --batch
run_step sd-scale 240 "-" parse_sd_scale "" -- "$PY" "${SD_SCALE[@]}"

{
  echo "## GPU check $(date -u +%FT%TZ)$([ "$TINY" = 1 ] && echo ' (--tiny: CPU, tiny sizes; the figures check the script, they measure nothing)')"
  echo
  echo "| step | status | seconds | figure | goal | goal met | log |"
  echo "|---|---|---|---|---|---|---|"
  printf '%s\n' "${ROWS[@]}"
  echo
  echo "total $(elapsed "$START") s; logs in $OUT_DIR"
} > "$OUT_DIR/gpu_check.md"
echo
cat "$OUT_DIR/gpu_check.md"
exit "$FAILED"
