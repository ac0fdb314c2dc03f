#!/usr/bin/env bash
# pt_rag_response's ablation on the synthetic benchmark (docs/training.md): each part of the model
# taken away in turn, on the few-shot split of one target, each run predicted and evaluated beside
# the baselines, with the retrieval precision / recall of Stage 1 and of the selection:
#   candidates  both (the model) | same (the target's entries only) | other (other cell types first)
#   response_context=false   the contexts carry no observed response (selection without response)
#   response_readout=false   the prediction starts from the control cells, not the selected shifts
#   train/eval_selection=all every candidate, no selection (response without selection)
#   response_agreement=false gene-cosine Stage 1, selector alone, uniform readout (no agreement)
#   response_transfer=false  other cell types' shifts read as observed (no cell-type transfer)
#
#   bash experiments/response_ablation.sh [OUT_DIR] [TARGET] [SEED]
#
# About 16 minutes on 2 cores (8 trainings of about 1.5 min, their predictions and evaluations).
DEFAULT_OUT=response_ablation
source "$(dirname "$0")/synthetic_sweep.sh"
sweep pt_rag_response candidates --grid response_candidates=both,same,other
sweep pt_rag_response no_context --grid response_context=false
sweep pt_rag_response no_readout --grid response_readout=false
sweep pt_rag_response no_selection --grid train_selection=all --grid eval_selection=all
sweep pt_rag_response no_agreement --grid response_agreement=false
sweep pt_rag_response no_transfer --grid response_transfer=false
for t in candidates no_context no_readout no_selection no_agreement no_transfer; do echo "table: $OUT/$t/sweep.md"; done
