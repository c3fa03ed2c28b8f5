#!/usr/bin/env bash
# A further seed of one setting of the RESULTS.md table: both arms side by side, as
# bench/results_table.sh runs them, with every seed set to SEED.
#   bash bench/results_seed.sh 5w1s 1
set -u
LANE_A="$1:search" LANE_B="$1:conv4" SEED="$2" exec bash "$(dirname "$0")/results_table.sh"
