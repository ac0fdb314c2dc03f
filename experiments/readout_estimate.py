"""What could a response readout reach, before any training? (docs/training.md, pt_rag_response)

    python experiments/readout_estimate.py [--seeds 0,1,2]

On the embedded synthetic benchmark (simulation seed 0, as ``ptrag demo``), for every few-shot
split (seeds x the four target cell types, fraction 0.3, as ``ptrag experiment cross-celltype``)
and every test perturbation q of the target t, predicts q's observed pseudo-bulk change in t
(mean of its cells minus the mean of t's control cells, log1p expression, all genes) from
training groups only, and prints the mean Pearson correlation with the observed change:

* ``context_mean``: the mean change of t's training perturbations;
* ``gene_knn5``: the mean of the 5 training perturbations of t nearest q by gene-vector cosine;
* ``own_elsewhere``: the mean of q's changes in the other cell types;
* ``agreement_softmax``: a softmax over t's training perturbations c of ``a(q, c) / 0.05``,
  ``a`` the response agreement (mean over the other cell types of cos(shift(q, u), shift(c, u)),
  :meth:`ptrag.nn.responses.ResponseIndex.agreement`);
* ``agreement_own``: ``0.7 * agreement_softmax`` over the 13 entries of t ranked first by gene
  cosine + agreement (``pt_rag_response``'s Stage 1 at K = 16 with 3 own entries)
  ``+ 0.3 * own_elsewhere`` (its readout at initialisation, every candidate selected);
* ``oracle``: the mean of q's ground-truth informative perturbations among t's training ones.
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ptrag.data.splits import fewshot_split
from ptrag.data.synthetic import CONTROL_LABEL, informative_sets, simulate


def _unit(m: np.ndarray) -> np.ndarray:
    return m / (np.linalg.norm(m, axis=-1, keepdims=True) + 1e-12)


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.corrcoef(x, y)[0, 1])


def _softmax(s: np.ndarray, t: float) -> np.ndarray:
    w = np.exp((s - s.max()) / t)
    return w / w.sum()


def estimates(seeds: list[int]) -> pd.DataFrame:
    """One row per (seed, target, test perturbation, estimator) with its Pearson correlation."""
    bench = simulate(seed=0)
    a = bench.adata
    x = a.X.toarray() if sp.issparse(a.X) else np.asarray(a.X)
    gene, ct = a.obs["gene"].astype(str).to_numpy(), a.obs["cell_type"].astype(str).to_numpy()
    cts, perts = sorted(set(ct)), list(bench.perturbations)
    shift = {}
    for t in cts:
        ctrl = x[(ct == t) & (gene == CONTROL_LABEL)].mean(0)
        shift[t] = np.stack([x[(ct == t) & (gene == p)].mean(0) - ctrl for p in perts])
    emb = _unit(np.stack([np.asarray(bench.gene_table[p], float) for p in perts]))
    truth = informative_sets(bench.ground_truth)
    groups = pd.DataFrame([(t, p) for t in cts for p in perts], columns=["cell_type", "perturbation"])
    rows = []
    for seed in seeds:
        for t in cts:
            table = fewshot_split(groups, t, seed=seed).table
            split = table[table["cell_type"] == t].set_index("perturbation")["split"]
            tr = [i for i, p in enumerate(perts) if split[p] == "train"]
            others = [u for u in cts if u != t]
            resp = np.concatenate([_unit(shift[u]) for u in others], axis=1) / np.sqrt(len(others))
            s_tr = shift[t][tr]
            for q in (i for i, p in enumerate(perts) if split[p] == "test"):
                agree, cos = resp[tr] @ resp[q], emb[tr] @ emb[q]
                own = np.mean([shift[u][q] for u in others], axis=0)
                cand = np.argsort(-(cos + agree))[:13]
                good = [j for j, c in enumerate(tr) if perts[c] in set(truth[(t, perts[q])])]
                preds = {
                    "context_mean": s_tr.mean(0),
                    "gene_knn5": s_tr[np.argsort(-cos)[:5]].mean(0),
                    "own_elsewhere": own,
                    "agreement_softmax": _softmax(agree, 0.05) @ s_tr,
                    "agreement_own": 0.7 * (_softmax(agree[cand], 0.05) @ s_tr[cand]) + 0.3 * own,
                    "oracle": s_tr[good].mean(0) if good else s_tr.mean(0),
                }
                rows += [(seed, t, perts[q], k, _pearson(v, shift[t][q])) for k, v in preds.items()]
    return pd.DataFrame(rows, columns=["seed", "target", "perturbation", "estimator", "pearson_delta"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated split seeds")
    args = ap.parse_args()
    df = estimates([int(s) for s in args.seeds.split(",")])
    table = df.groupby("estimator")["pearson_delta"].mean().sort_values(ascending=False)
    print(table.round(3).to_string())


if __name__ == "__main__":
    main()
