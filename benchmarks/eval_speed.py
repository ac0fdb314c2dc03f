"""How long does evaluation take at the paper's scale?

Computes every metric of ``ptrag evaluate`` (ptrag mode by default) for 1,635 test
perturbations x 4 models on synthetic sets of 64 cells over 2,000 genes: the PCA-50 fit on
training cells, control statistics per cell type, one Welch DEG test per perturbation (shared by
the models) and, per model, correlations, mean errors, PCA projection and the four set
distances (exact OT for W1 and W2², energy, MMD). It runs the same functions as
``ptrag.eval.evaluate`` (``welch_degs`` + ``group_metrics``); cell generation is timed apart.

Target: at most 5 minutes on 2 cores.

    python benchmarks/eval_speed.py                      # paper scale
    python benchmarks/eval_speed.py --perturbations 100  # quick look
    python benchmarks/eval_speed.py --mode gge           # gge-eval compatibility mode
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from ptrag.data.pca import PCASpace
from ptrag.eval.gge import GGEReference, gge_group_metrics
from ptrag.eval.metrics import GroupStats, MetricOptions
from ptrag.eval.scoring import ControlSet, score_cell_type


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--perturbations", type=int, default=1635)
    ap.add_argument("--models", type=int, default=9, help="predictors (4 models + 5 baselines)")
    ap.add_argument("--no-cell-eval", action="store_true", help="ptrag's metrics only (no cell-eval metrics)")
    ap.add_argument("--cells", type=int, default=64, help="cells per predicted and per observed set")
    ap.add_argument("--genes", type=int, default=2000)
    ap.add_argument("--cell-types", type=int, default=4)
    ap.add_argument("--controls", type=int, default=2000, help="observed control cells per cell type")
    ap.add_argument("--train-cells", type=int, default=50_000, help="cells of the PCA fit")
    ap.add_argument("--mode", choices=("ptrag", "gge"), default="ptrag")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    rng = np.random.default_rng(args.seed)
    G, S = args.genes, args.cells
    # a low-rank "biology": cell-type means, perturbation effects on a few genes, cell noise
    ct_mean = rng.gamma(2.0, 0.5, size=(args.cell_types, G)).astype(np.float32)
    loadings = rng.normal(0, 0.3, size=(10, G)).astype(np.float32)

    def draw(ct: int, effect: np.ndarray, n: int, noise: float = 1.0) -> np.ndarray:
        z = rng.standard_normal((n, 10), dtype=np.float32)
        e = rng.standard_normal((n, G), dtype=np.float32) * (0.3 * noise)
        return np.maximum(ct_mean[ct] + effect + z @ loadings + e, 0.0)

    def effect() -> np.ndarray:
        f = np.zeros(G, dtype=np.float32)
        idx = rng.choice(G, 40, replace=False)
        f[idx] = rng.normal(0, 1.0, size=40)
        return f

    t_gen = 0.0
    t = time.perf_counter()
    train = np.concatenate(
        [draw(i % args.cell_types, effect() if i % 3 else 0.0, 500) for i in range(max(1, args.train_cells // 500))]
    )
    controls = [draw(c, 0.0, args.controls) for c in range(args.cell_types)]
    t_gen += time.perf_counter() - t

    t0 = time.perf_counter()
    pca = PCASpace.fit(train, n_components=50) if args.mode == "ptrag" else None
    t_pca = time.perf_counter() - t0
    t_metrics = 0.0
    ref = None
    if args.mode == "gge":
        t = time.perf_counter()
        first = draw(0, effect(), S)
        pooled = GroupStats.of_chunks(controls)
        ref = GGEReference.fit(first, pooled, condition="first")
        t_metrics += time.perf_counter() - t

    models = [f"model{i}" for i in range(args.models)]
    genes = [f"g{i}" for i in range(G)]
    n_rows = 0
    if args.mode == "ptrag":
        t = time.perf_counter()
        controls_set = [ControlSet.of(c, cell_eval=not args.no_cell_eval) for c in controls]
        t_metrics += time.perf_counter() - t
        gen = {"t": 0.0}

        def groups(ct: int):
            for k in range(ct, args.perturbations, args.cell_types):
                t = time.perf_counter()
                eff = effect()
                real = draw(ct, eff, S)
                preds = {m: draw(ct, eff * (1 - 0.2 * j), S, noise=1 + 0.1 * j) for j, m in enumerate(models)}
                gen["t"] += time.perf_counter() - t
                yield genes[k % G], real, preds

        options = MetricOptions(cell_eval=not args.no_cell_eval)
        for ct in range(args.cell_types):
            t = time.perf_counter()
            g0 = gen["t"]
            rows = score_cell_type(f"ct{ct}", controls_set[ct], genes, pca, groups(ct), options)
            t_metrics += time.perf_counter() - t - (gen["t"] - g0)
            n_rows += len(rows)
            print(f"  cell type {ct + 1}/{args.cell_types}: {n_rows} rows, metrics {t_metrics:.1f} s", flush=True)
        t_gen += gen["t"]
    else:
        for k in range(args.perturbations):
            ct = k % args.cell_types
            t = time.perf_counter()
            eff = effect()
            real = draw(ct, eff, S)
            preds = {m: draw(ct, eff * (1 - 0.2 * j), S, noise=1 + 0.1 * j) for j, m in enumerate(models)}
            t_gen += time.perf_counter() - t
            t = time.perf_counter()
            out = gge_group_metrics(preds, real, ref)
            t_metrics += time.perf_counter() - t
            n_rows += len(out)

    total = t_pca + t_metrics
    print(
        f"mode={args.mode}: {args.perturbations} perturbations x {args.models} models "
        f"({n_rows} rows), sets of {S} cells, {G} genes"
    )
    print(f"  PCA-50 fit on {len(train)} cells: {t_pca:.1f} s")
    print(f"  DEGs + metrics:                 {t_metrics:.1f} s ({1000 * t_metrics / max(n_rows, 1):.1f} ms per row)")
    print(f"  total evaluation time:          {total:.1f} s ({total / 60:.2f} min; target <= 5 min)")
    print(f"  (synthetic data generation, not counted: {t_gen:.1f} s)")


if __name__ == "__main__":
    main()
