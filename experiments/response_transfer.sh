#!/usr/bin/env bash
# pt_rag_response with and without the cell-type transfer of the readout (response_transfer,
# docs/training.md) on the synthetic benchmark: the few-shot split of each of the four targets
# for one seed, both settings trained on the same split, predicted and evaluated beside the
# baselines (OUT/TARGET/transfer/sweep.md per target).
#
#   bash experiments/response_transfer.sh [OUT_DIR] [SEED]
#
# About 15 minutes on 2 cores (8 trainings).
set -euo pipefail
ROOT=${1:-response_transfer}
SEED=${2:-0}
DEFAULT_OUT=$ROOT
for target in cellA cellB cellC cellD; do
    set -- "$ROOT/$target" "$target" "$SEED"
    # shellcheck source=experiments/synthetic_sweep.sh
    source "$(dirname "$0")/synthetic_sweep.sh"
    sweep pt_rag_response transfer --grid response_transfer=true,false
    echo "table: $OUT/transfer/sweep.md"
done
