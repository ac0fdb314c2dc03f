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
DEFAULT_OUT=selection_ablation
source "$(dirname "$0")/synthetic_sweep.sh"
sweep pt_rag sweep --grid empty_selection=keep,paper,null,best --grid sparsity_weight=0,0.01,0.1,1
echo "table: $OUT/sweep/sweep.md"
