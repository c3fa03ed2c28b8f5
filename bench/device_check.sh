#!/usr/bin/env bash
# The GPU checks of issue 14 as one command: about 8 minutes on one H200, results as files.
#
# How a session with a GPU runs it (the device tool; /work/.library/device/README.md):
#   1. here, once (needs PyPI):  bash scripts/prepare_device.sh
#      It fills .device/ (gitignored, ~10 MB): jsonargparse's wheels, learn2learn's sdist and
#      its build requirements as wheels. The GPU machine has no network; its Python 3.12 has
#      torch, pytorch-lightning, torchmetrics, matplotlib, pytest but neither of those two.
#   2. the device tool's run, with the folder carried (it is ignored by git, so it travels
#      only when named):
#        run(command="bash bench/device_check.sh", carry=[".device"], timeout_s=600)
#   3. what comes back from $OUT (5 files): summary.md (every step's status and numbers),
#      device_check.log (all output), meta_step.json, train_metrics.csv, val_curve.png.
#      Put the figures in BENCHMARKS.md ("Meta-train step on a GPU").
#   The script keeps to DEVICE_CHECK_SECONDS (default 540) on its own: every step has a time
#   cap, cut further when the total runs short, and whatever it wrote is in $OUT even if the
#   tool's limit stops it. One run costs about 10 of a session's 15 device minutes (machine
#   start included): there is time for one more, not two.
#
# Steps (the order puts the cheap, decisive ones first):
#   0. install: build learn2learn for the machine's Python from the sdist (no index), install
#      it and the wheels into a --target folder on PYTHONPATH;
#   1. tests: the CUDA-marked tests (tests/test_cuda.py: meta-gradients, evaluation and
#      scoring on CUDA equal the CPU's, FD under TF32, a deterministic GPU run twice,
#      adaptation on the GPU), with CUDA_REQUIRED=1 so that a GPU torch cannot see fails them;
#      and the CPU equality tests (test_vectorized.py, test_meta_gradients.py) on that torch;
#   2+3. bench/meta_step.py --device cuda: the plain learn2learn loop vs the project's step
#      per task and vectorised (and per task with channels-last images), FO/SO/FD, 1 and 5
#      inner steps, 5-way and 20-way 1-shot, tasks/s and peak GPU memory; and the cosine of
#      FD to SO on Conv-4 in float32 with TF32 on, with and without FD's IEEE scope;
#   5. a one-device DDP search (strategy ddp_find_unused_parameters_true, NCCL): the process
#      group set-up and the search's broadcasts run once;
#   4. Omniglot 5-way 1-shot meta-training of Conv-4 on the GPU for the time left (~2 min),
#      its validation curve, and eval.py of its best checkpoint on 600 test tasks.
#
# Without a GPU: bash bench/device_check.sh --cpu-dry-run
#   Every step on the CPU at a tiny size (the CUDA tests through METANAS_CUDA_TESTS_ON=cpu):
#   checks the script, the offline install and the commands, and says nothing about CUDA.
#   Results go to $OUT if set, else runs/device_check_dry/.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DRY=0
[ "${1:-}" = "--cpu-dry-run" ] && DRY=1
START=$(date +%s)
DEADLINE=${DEVICE_CHECK_SECONDS:-540}
if [ $DRY = 1 ]; then
  PY=${PYTHON:-.venv/bin/python}
  [ -x "$PY" ] || PY=python3
  OUT=${OUT:-$ROOT/runs/device_check_dry}
else
  PY=${PYTHON:-python3}
  OUT=${OUT:?run this through the device tool (it sets OUT), or use --cpu-dry-run}
fi
mkdir -p "$OUT"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/device_check.XXXXXX")
SUMMARY=$OUT/summary.md
LOG=$OUT/device_check.log
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled PYTHONWARNINGS=ignore
: >"$LOG"
{
  echo "# bench/device_check.sh$([ $DRY = 1 ] && echo ' --cpu-dry-run (CPU only: says nothing about CUDA)')"
  echo
  echo "$(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'), host $(hostname)"
  echo
} >"$SUMMARY"

note() { echo "$*" | tee -a "$SUMMARY" >>"$LOG"; }
left() { echo $((DEADLINE - ($(date +%s) - START))); }

# step NAME CAP_SECONDS COMMAND...: runs it with a timeout of min(CAP, time left - 5 s),
# appends its output to the log and its status to the summary; never stops the script.
step() {
  local name=$1 cap=$2
  shift 2
  local budget
  budget=$(left)
  budget=$((budget - 5 < cap ? budget - 5 : cap))
  if [ "$budget" -lt 15 ]; then
    note "- **$name**: skipped, no time left"
    return 1
  fi
  echo "=== $name (cap ${budget}s): $*" >>"$LOG"
  local t0=$SECONDS
  timeout --kill-after=10 "$budget" "$@" >"$WORK/step.out" 2>&1
  local rc=$?
  cat "$WORK/step.out" >>"$LOG"
  local verdict=ok
  [ $rc = 0 ] || verdict="FAILED (exit $rc$([ $rc = 124 ] && echo ', timed out'))"
  note "- **$name**: $verdict in $((SECONDS - t0)) s"
  return $rc
}

# -- 0. install ---------------------------------------------------------------------------
SITE=$WORK/site
export PY WORK SITE
install() {
  [ -f .device/learn2learn-0.2.0.tar.gz ] || { echo "no .device/: run scripts/prepare_device.sh here and carry .device"; return 1; }
  "$PY" scripts/build_learn2learn.py --sdist .device/learn2learn-0.2.0.tar.gz --find-links .device/wheels "$WORK/l2l" &&
    "$PY" -m pip install --quiet --no-index --no-deps --no-compile --target "$SITE" \
      .device/wheels/jsonargparse-*.whl .device/wheels/docstring_parser-*.whl \
      .device/wheels/typeshed_client-*.whl "$WORK"/l2l/learn2learn-*.whl &&
    PYTHONPATH=$SITE "$PY" -c "import jsonargparse, learn2learn, torch, pytorch_lightning as pl; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '', 'lightning', pl.__version__, 'jsonargparse', jsonargparse.__version__)"
}
export -f install  # step runs it under timeout, in a child bash
note "## Steps"
note
step "0. install (learn2learn built offline, wheels into a --target folder)" 150 bash -c install
export PYTHONPATH=$SITE:$ROOT
note "  - $(grep '^torch ' "$WORK/step.out" | tail -1)"
if [ $DRY = 0 ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >>"$SUMMARY" 2>&1
fi

# -- 1. tests -----------------------------------------------------------------------------
if [ $DRY = 1 ]; then
  export METANAS_CUDA_TESTS_ON=cpu
else
  export CUDA_REQUIRED=1
fi
step "1. tests: CUDA-marked (CUDA vs CPU equalities, FD under TF32, deterministic GPU run, adaptation) + the CPU equality tests" 150 \
  "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_vectorized.py tests/test_meta_gradients.py
note "  - $(grep -E '(passed|failed|error)' "$WORK/step.out" | tail -1)"
grep -E '^(FAILED|ERROR) ' "$WORK/step.out" | head -20 | sed 's/^/  - /' >>"$SUMMARY"
unset METANAS_CUDA_TESTS_ON CUDA_REQUIRED

# -- 2+3. the meta-train step, and FD vs SO under TF32 ------------------------------------
if [ $DRY = 1 ]; then
  BENCH=(--device cpu --meta-batch 4 --batches 2 --reps 1 --steps 1 --ways 5 --agreement-tasks 1)
else
  BENCH=(--device cuda --reps 5 --budget 80 --agreement-tasks 8)
fi
step "2+3. bench/meta_step.py ${BENCH[*]}" 200 \
  "$PY" bench/meta_step.py "${BENCH[@]}" --contenders plain project project-vectorized project-channels-last \
  --json "$OUT/meta_step.json"
{ echo; sed -n '/^machine:/,$p' "$WORK/step.out"; echo; } >>"$SUMMARY"

# -- 5. one-device DDP search (NCCL on a GPU) ---------------------------------------------
ACCEL=$([ $DRY = 1 ] && echo cpu || echo gpu)
SMALL=(--data.dataset=synthetic --data.image_size=14 --data.ways=3 --data.queries=2 --data.meta_batch_size=8
  --data.train_batches=6 --data.val_tasks=6 --data.test_tasks=6 --data.eval_batch_size=3
  --model.search_space.widths=[8,16] --model.search_space.depths=[2,3] --search.population_size=4
  --search.offspring=2 --search.pool_size=6 --search.tournament_size=2 --search.tasks_per_score=4
  --search.predictor.min_archive=6)
step "5. one-device DDP search (ddp_find_unused_parameters_true)" 120 \
  "$PY" train.py --config configs/search_quick.yaml "${SMALL[@]}" --model.tasks_per_arch=4 \
  --trainer.accelerator=$ACCEL --trainer.devices=1 --trainer.strategy=ddp_find_unused_parameters_true \
  --trainer.max_epochs=2 --trainer.enable_progress_bar=false --test=false \
  --trainer.logger.init_args.save_dir="$WORK/runs" --trainer.logger.init_args.name=ddp
generations() { "$PY" -c "import json, sys; print(len(json.load(open(sys.argv[1]))))" "$1" 2>/dev/null || echo 0; }
note "  - $(grep -E 'distributed_backend=' "$WORK/step.out" | head -1); $(generations "$WORK/runs/ddp/version_0/checkpoints/search_history.json") generations in search_history.json"

# -- 4. Omniglot 5-way 1-shot on the GPU, its validation curve, eval.py -------------------
if [ $DRY = 1 ]; then
  TRAIN=(--data.meta_batch_size=4 --data.train_batches=3 --data.val_tasks=10 --trainer.max_epochs=2)
  EVAL=(--test_tasks 20)
  MAX_TIME=00:00:01:00
else
  # the time left after this step's start-up and eval.py, at least a minute
  SECONDS_FOR_TRAINING=$(( $(left) - 75 ))
  [ $SECONDS_FOR_TRAINING -lt 60 ] && SECONDS_FOR_TRAINING=60
  TRAIN=(--data.train_batches=50 --data.val_tasks=100 --trainer.max_epochs=200)
  EVAL=(--test_tasks 600)
  MAX_TIME=$(printf '00:00:%02d:%02d' $((SECONDS_FOR_TRAINING / 60)) $((SECONDS_FOR_TRAINING % 60)))
fi
step "4a. train.py Omniglot 5w1s Conv-4 on $ACCEL, max_time $MAX_TIME" 400 \
  "$PY" train.py --config configs/results/omniglot_5w1s.yaml --model.train_arch=reference "${TRAIN[@]}" \
  --trainer.accelerator=$ACCEL --trainer.devices=1 --trainer.max_time=$MAX_TIME --test=false \
  --trainer.logger.init_args.save_dir="$WORK/runs" --trainer.logger.init_args.name=omniglot
RUN=$WORK/runs/omniglot/version_0
cp "$RUN/metrics.csv" "$OUT/train_metrics.csv" 2>/dev/null
plot() {
  "$PY" - "$RUN/metrics.csv" "$OUT/val_curve.png" <<'EOF'
import csv, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
rows = [r for r in csv.DictReader(open(sys.argv[1])) if r.get("val/acc")]
steps, acc = [int(r["step"]) for r in rows], [100 * float(r["val/acc"]) for r in rows]
ci = [100 * float(r["val/acc_ci95"]) for r in rows]
plt.figure(figsize=(6, 3.5))
plt.errorbar(steps, acc, yerr=ci, marker="o", capsize=2)
plt.xlabel("meta-batches (32 tasks)"); plt.ylabel("validation accuracy, %")
plt.title("Omniglot 5-way 1-shot, Conv-4, first-order MAML")
plt.grid(alpha=0.3); plt.tight_layout(); plt.savefig(sys.argv[2], dpi=100)
for s, a, c in zip(steps, acc, ci):
    print(f"  - step {s}: val/acc {a:.1f}% ± {c:.1f}%")
EOF
}
plot >"$WORK/curve.txt" 2>>"$LOG" && { note "  - validation curve (val_curve.png):"; cat "$WORK/curve.txt" >>"$SUMMARY"; }
BEST=$(ls "$RUN"/checkpoints/epoch*.ckpt 2>/dev/null | head -1)
if [ -n "$BEST" ]; then
  step "4b. eval.py of the best checkpoint ($(basename "$BEST"))" 90 \
    "$PY" eval.py --ckpt_path "$BEST" --accelerator $ACCEL "${EVAL[@]}"
  note "  - $(grep '^meta-test:' "$WORK/step.out" | tail -1)"
else
  note "- **4b. eval.py**: skipped, no checkpoint was written"
fi

note
note "total: $(( $(date +%s) - START )) s"
rm -rf "$WORK"
