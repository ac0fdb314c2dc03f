#!/usr/bin/env bash
# The four models on real data: perturbench devel.h5ad (4 cell types, 9 shared perturbations),
# few-shot cross-cell-type task for each target cell type, gene tables built offline from the
# shared STRING, GO and gene-summary files (ptrag genes ...), then predict, evaluate, compare.
#
#   bash experiments/devel_four_models.sh [OUT_DIR] [TARGET ...]
#
# Needs ../shared/data (see its README). CPU preset: about 10 minutes per target cell type on 2
# cores, plus about 5 minutes once for the text embeddings. Extra training options can be passed
# in PTRAG_TRAIN_ARGS (e.g. PTRAG_TRAIN_ARGS="--max-steps 300"). K = 8: with K562 held out only
# 13 perturbations train (9 shared + 30 % of K562's 18), fewer than the cpu preset's K = 16.
set -euo pipefail
OUT=${1:-devel_four_models}
shift || true
TARGETS=("${@:-A172 T98G U87MG k562}")
read -r -a TARGETS <<< "${TARGETS[*]}"
SHARED=${PTRAG_SHARED:-../shared/data}
DATA=$SHARED/perturbench/devel.h5ad
COLS=(--pert-col perturbation --control control)
mkdir -p "$OUT/genes"

# 1. gene tables (each written once)
[ -f "$OUT/genes/string.parquet" ] || ptrag genes embed-graph --edges "$SHARED/genes/string_v12_edges.csv.gz" --out "$OUT/genes/string.parquet"
[ -f "$OUT/genes/go.parquet" ] || ptrag genes embed-graph --gmt "$SHARED/genes/GO_Biological_Process_2021.gmt" --out "$OUT/genes/go.parquet"
[ -f "$OUT/genes/text.parquet" ] || ptrag genes embed-text --summaries "$SHARED/genes/gene_summaries.json" --out "$OUT/genes/text.parquet" --device cpu
GENES=(--genes "$OUT/genes/text.parquet" --genes "$OUT/genes/string.parquet" --genes "$OUT/genes/go.parquet")
ptrag genes coverage --data "$DATA" "${COLS[@]}" "${GENES[@]}"

EVALS=()
for CT in "${TARGETS[@]}"; do
  D="$OUT/$CT"
  mkdir -p "$D/pred"
  [ -f "$D/split.toml" ] || ptrag split --data "$DATA" "${COLS[@]}" --target-cell-type "$CT" --out "$D/split.toml"
  for M in state state_genept vanilla_rag pt_rag; do
    G=("${GENES[@]}"); [ "$M" = state ] && G=()
    # shellcheck disable=SC2086
    [ -f "$D/runs/$M/checkpoints/last.ckpt" ] || ptrag train --data "$DATA" "${COLS[@]}" --split "$D/split.toml" \
        --model "$M" "${G[@]}" --topk 8 --out "$D/runs/$M" ${PTRAG_TRAIN_ARGS:-}
    ptrag predict --run "$D/runs/$M" --data "$DATA" --split test --out "$D/pred/$M.h5ad"
  done
  ptrag predict --run "$D/runs/state" --data "$DATA" --split test --control-baseline --out "$D/pred/control.h5ad"
  ptrag evaluate --run "$D/runs/state" --real "$DATA" --out "$D/eval" \
      --pred "$D/pred/state.h5ad" --pred "$D/pred/state_genept.h5ad" --pred "$D/pred/vanilla_rag.h5ad" \
      --pred "$D/pred/pt_rag.h5ad" --pred "$D/pred/control.h5ad"
  EVALS+=("$D/eval")
done
ptrag compare "${EVALS[@]}" --test wilcoxon --reference control --out "$OUT/tables"
echo "tables: $OUT/tables/tables.md"
