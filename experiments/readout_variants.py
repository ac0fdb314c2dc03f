"""How much of pt_rag_response's mean change is the readout's? (docs/training.md, Readout)

    python experiments/readout_variants.py EXPERIMENT_DIR [DATA.h5ad]

For every trained ``pt_rag_response`` run of a ``ptrag experiment cross-celltype`` folder
(``seed*/<target>/runs/pt_rag_response``), predicts its test groups three ways, without
retraining, and prints the mean Pearson Δ (the pseudo-bulk change from the cell type's control
mean, over the run's genes) of each:

* ``model``: the model as it is;
* ``gated``: the readout weights multiplied by each candidate's selection weight (its mean over
  the set's cells) and renormalised, the readout of the earlier version;
* ``readout_only``: the network silent (its decoder's output zeroed), the readout alone.

``DATA.h5ad`` defaults to ``EXPERIMENT_DIR/data/perturbseq.h5ad`` (the embedded benchmark).
"""

from __future__ import annotations

import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

import ptrag.train.predict as predict_module
from ptrag.nn.generator import PerturbationModel
from ptrag.nn.readout import readout_weights


def _dense(x) -> np.ndarray:
    return x.toarray() if sp.issparse(x) else np.asarray(x)


def _gated_readout(self, ctrl_expr, query_pert, query_ct, out):
    db = self.responses
    own = ~out.same_cell_type & (db.entry_pert[out.candidates] == query_pert[:, None])
    r = readout_weights(own, out.agreement, out.similarity, self.agreement[2].exp(), torch.sigmoid(self.agreement[3]))
    r = r * out.weights.mean(1)
    r = r / r.sum(-1, keepdim=True).clamp_min(1e-6)
    mean = torch.einsum("bk,bkg->bg", r, db.shift[out.candidates])[:, None]
    return mean + db.set_centring(ctrl_expr, query_ct)


def _pearson_delta(pred: ad.AnnData, data: ad.AnnData) -> float:
    x = _dense(data[:, list(pred.var_names)].X)
    gene, ct = data.obs["gene"].astype(str).to_numpy(), data.obs["cell_type"].astype(str).to_numpy()
    px = _dense(pred.X)
    pg, pc = pred.obs["perturbation"].astype(str).to_numpy(), pred.obs["cell_type"].astype(str).to_numpy()
    rs = []
    for t, p in sorted(set(zip(pc, pg, strict=True))):
        if p == "non-targeting":
            continue
        ctrl = x[(ct == t) & (gene == "non-targeting")].mean(0)
        observed, predicted = x[(ct == t) & (gene == p)].mean(0) - ctrl, px[(pc == t) & (pg == p)].mean(0) - ctrl
        rs.append(np.corrcoef(observed, predicted)[0, 1])
    return float(np.mean(rs))


def _predict(run: Path, data_path: Path, variant: str) -> ad.AnnData:
    original_load, original_readout = predict_module.load_plan, PerturbationModel._readout

    def load(run_dir, checkpoint="best"):
        plan = original_load(run_dir, checkpoint)
        if variant == "readout_only":
            for p in plan.model.decoder.net[-1].parameters():
                torch.nn.init.zeros_(p)
        return plan

    predict_module.load_plan = load
    if variant == "gated":
        PerturbationModel._readout = _gated_readout
    try:
        return predict_module.predict(run, data_path, split="test").adata
    finally:
        predict_module.load_plan, PerturbationModel._readout = original_load, original_readout


def main(argv: list[str]) -> None:
    exp = Path(argv[0])
    data_path = Path(argv[1]) if len(argv) > 1 else exp / "data" / "perturbseq.h5ad"
    data = ad.read_h5ad(data_path)
    rows = []
    for run in sorted(exp.glob("seed*/*/runs/pt_rag_response")):
        for variant in ("model", "gated", "readout_only"):
            r = _pearson_delta(_predict(run, data_path, variant), data)
            rows.append((run.parts[-4], run.parts[-3], variant, r))
            print(*rows[-1], flush=True)
    table = pd.DataFrame(rows, columns=["seed", "target", "variant", "pearson_delta"])
    print(table.groupby("variant")["pearson_delta"].mean().round(3).to_string())


if __name__ == "__main__":
    main(sys.argv[1:])
