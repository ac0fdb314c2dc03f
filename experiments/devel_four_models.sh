#!/usr/bin/env bash
# The paper's four models and pt_rag_response on real data: perturbench devel.h5ad (4 cell types,
# 9 shared perturbations),
# few-shot cross-cell-type task for each target cell type, gene tables built offline from the
# shared STRING, GO and gene-summary files (ptrag genes ...), then predict, evaluate, compare.
#
#   bash experiments/devel_four_models.sh [OUT_DIR] [TARGET ...]
#
# Needs ../shared/data (see its README). CPU preset: about 10 minutes per target cell type on 2
# cores, plus about 5 minutes once for the text embeddings. Extra training options can be passed
# in PTRAG_TRAIN_ARGS (e.g. PTRAG_TRAIN_ARGS="--max-steps 300"; the options of `ptrag experiment`). K = 8: with K562 held out only
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

# 2. the few-shot protocol for each target: split, train, predict, control baseline, evaluate,
#    tables, retrieval analysis, cost, report (OUT/exp/report.md); a second call resumes
# shellcheck disable=SC2086
ptrag experiment cross-celltype --data "$DATA" "${COLS[@]}" "${GENES[@]}" --cell-types "$(IFS=,; echo "${TARGETS[*]}")" \
    --topk 8 --out "$OUT/exp" ${PTRAG_TRAIN_ARGS:-}
echo "report: $OUT/exp/report.md (and report.html)"
