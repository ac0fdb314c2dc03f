#!/usr/bin/env bash
# pt_rag_response's ablation on the synthetic benchmark (docs/training.md): each part of the model
# taken away in turn, on the few-shot split of one target, each run predicted and evaluated beside
# the baselines, with the retrieval precision / recall of Stage 1 and of the selection:
#   candidates  both (the model) | same (the target's entries only) | other (other cell types first)
#   response_context=false   the contexts carry no observed response (selection without response)
#   response_readout=false   the prediction starts from the control cells, not the selected shifts
#   train/eval_selection=all every candidate, no selection (response without selection)
#
#   bash experiments/response_ablation.sh [OUT_DIR] [TARGET] [SEED]
#
# About 12 minutes on 2 cores (6 trainings of about 1.5 min, their predictions and evaluations).
set -euo pipefail
OUT=${1:-response_ablation}
TARGET=${2:-cellA}
SEED=${3:-0}
mkdir -p "$OUT"
[ -f "$OUT/data/perturbseq.h5ad" ] || ptrag simulate --out "$OUT/data"
[ -f "$OUT/split.toml" ] || ptrag split --data "$OUT/data/perturbseq.h5ad" --target-cell-type "$TARGET" --seed "$SEED" --out "$OUT/split.toml"
sweep() {
    local name=$1; shift
    ptrag experiment sweep --data "$OUT/data/perturbseq.h5ad" --split "$OUT/split.toml" --genes "$OUT/data/genept.pkl" \
        --ground-truth "$OUT/data/ground_truth.csv" --model pt_rag_response --seed "$SEED" --out "$OUT/$name" "$@"
}
sweep candidates --grid response_candidates=both,same,other
sweep no_context --grid response_context=false
sweep no_readout --grid response_readout=false
sweep no_selection --grid train_selection=all --grid eval_selection=all
for t in candidates no_context no_readout no_selection; do echo "table: $OUT/$t/sweep.md"; done
