# Sourced by the synthetic ablation scripts: OUT, TARGET, SEED from their arguments (OUT defaults
# to $DEFAULT_OUT), the embedded benchmark simulated into OUT/data and one target's few-shot split
# in OUT/split.toml (both kept for a second call), and `sweep MODEL NAME [--grid ...]`, which runs
# `ptrag experiment sweep` on that split into OUT/NAME with the ground truth.
set -euo pipefail
OUT=${1:-$DEFAULT_OUT}
TARGET=${2:-cellA}
SEED=${3:-0}
mkdir -p "$OUT"
[ -f "$OUT/data/perturbseq.h5ad" ] || ptrag simulate --out "$OUT/data"
[ -f "$OUT/split.toml" ] || ptrag split --data "$OUT/data/perturbseq.h5ad" --target-cell-type "$TARGET" --seed "$SEED" --out "$OUT/split.toml"
sweep() {
    local model=$1 name=$2
    shift 2
    ptrag experiment sweep --data "$OUT/data/perturbseq.h5ad" --split "$OUT/split.toml" --genes "$OUT/data/genept.pkl" \
        --ground-truth "$OUT/data/ground_truth.csv" --model "$model" --seed "$SEED" --out "$OUT/$name" "$@"
}
