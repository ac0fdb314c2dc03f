#!/usr/bin/env bash
# PT-RAG's aggregation x sparsity ablation on the synthetic benchmark (docs/experiments.md):
# empty-selection rule {keep, paper, null, best} x lambda {0, 0.01, 0.1, 1}, cpu preset, on the
# few-shot split of one target, each run predicted and evaluated beside the control baseline,
# with the retrieval precision / recall of Stage 1 and of the selection against the simulator's
# ground truth (sweep.md / sweep.csv, plots in sweep.png).
#
#   bash experiments/selection_ablation.sh [OUT_DIR] [TARGET] [SEED]
#
# About 15 minutes on 2 cores (16 trainings of about 45 s, their predictions and evaluations).
set -euo pipefail
OUT=${1:-selection_ablation}
TARGET=${2:-cellA}
SEED=${3:-0}
mkdir -p "$OUT"
[ -f "$OUT/data/perturbseq.h5ad" ] || ptrag simulate --out "$OUT/data"
[ -f "$OUT/split.toml" ] || ptrag split --data "$OUT/data/perturbseq.h5ad" --target-cell-type "$TARGET" --seed "$SEED" --out "$OUT/split.toml"
ptrag experiment sweep --data "$OUT/data/perturbseq.h5ad" --split "$OUT/split.toml" --genes "$OUT/data/genept.pkl" \
    --ground-truth "$OUT/data/ground_truth.csv" --model pt_rag --seed "$SEED" --out "$OUT/sweep" \
    --grid empty_selection=keep,paper,null,best --grid sparsity_weight=0,0.01,0.1,1
echo "table: $OUT/sweep/sweep.md"
