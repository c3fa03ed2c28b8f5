#!/usr/bin/env bash
# The four-setting table of RESULTS.md: Conv-4 (MAML baseline) vs searched architecture at
# equal meta-training budget, Omniglot 5w1s, 5w5s, 20w1s, 20w5s, seed 0. Two lanes of runs side
# by side, one torch thread each (2-core machine); each lane runs its four in turn. Every run
# is the command written in its configs/results/omniglot_*.yaml header; logs go to
# runs/results_logs/, results to runs/results_<setting>_<arm>/version_N/test_result.json.
#   bash bench/results_table.sh              # ~65 minutes here
#   .venv/bin/python bench/results_table.py  # the markdown table from the newest runs
# SEED=N sets seed_everything and the model's, data's and search's seeds, and names the runs
# results_<setting>_<arm>_seedN (bench/results_seed.sh runs one setting that way).
set -u
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
SEED=${SEED:-}
mkdir -p runs/results_logs
export OMP_NUM_THREADS=1 PYTHONWARNINGS=ignore WANDB_MODE=disabled

arm() {  # setting arm
  local setting=$1 arm=$2 extra=() seeds=() name="${1}_$2"
  if [ "$arm" = search ]; then
    # the searched arm's flags, from the config's header line
    read -r -a extra <<<"$(grep '^#   searched:' "configs/results/omniglot_$setting.yaml" \
      | sed 's/.*--config configs\/results\/omniglot_[0-9a-z]*\.yaml //; s/ --trainer.logger.*//')"
    [ -n "$SEED" ] && extra+=(--search.seed="$SEED")
  else
    extra=(--model.train_arch=reference)
  fi
  if [ -n "$SEED" ]; then
    seeds=(--seed_everything="$SEED" --model.seed="$SEED" --data.seed="$SEED")
    name="${name}_seed$SEED"
  fi
  local start=$SECONDS
  "$PY" train.py --config "configs/results/omniglot_$setting.yaml" "${extra[@]}" "${seeds[@]}" \
    --trainer.logger.init_args.name="results_$name" >"runs/results_logs/$name.log" 2>&1
  echo "$setting ${name#${setting}_} rc=$? wall_s=$((SECONDS - start))" | tee -a runs/results_logs/walltimes.txt
}

lane() { for run in "$@"; do arm ${run/:/ }; done; }

lane ${LANE_A:-20w5s:search 5w1s:search 5w5s:conv4 20w1s:conv4} &
lane ${LANE_B:-20w5s:conv4 20w1s:search 5w5s:search 5w1s:conv4} &
wait
