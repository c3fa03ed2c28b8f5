#!/usr/bin/env bash
# A further seed of one setting of the RESULTS.md table (both arms side by side, one torch
# thread each): seed_everything, the model's, the data's and the search's seed all set to SEED.
#   bash bench/results_seed.sh 5w1s 1
set -u
cd "$(dirname "$0")/.."
setting=$1 seed=$2
PY=${PY:-.venv/bin/python}
mkdir -p runs/results_logs
export OMP_NUM_THREADS=1 PYTHONWARNINGS=ignore WANDB_MODE=disabled
seeds=(--seed_everything="$seed" --model.seed="$seed" --data.seed="$seed")
config="configs/results/omniglot_$setting.yaml"
read -r -a search <<<"$(grep '^#   searched:' "$config" \
  | sed 's/.*--config configs\/results\/omniglot_[0-9a-z]*\.yaml //; s/ --trainer.logger.*//')"

arm() {  # arm flags...
  local arm=$1 start=$SECONDS; shift
  "$PY" train.py --config "$config" "$@" "${seeds[@]}" \
    --trainer.logger.init_args.name="results_${setting}_${arm}_seed$seed" \
    >"runs/results_logs/${setting}_${arm}_seed$seed.log" 2>&1
  echo "$setting ${arm}_seed$seed rc=$? wall_s=$((SECONDS - start))" | tee -a runs/results_logs/walltimes.txt
}

arm search "${search[@]}" --trainer.callbacks.init_args.seed="$seed" &
arm conv4 --model.train_arch=reference &
wait
