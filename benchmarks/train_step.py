"""What does a training step cost, per model, and how close is it to the machine's peak?

For each preset (``cpu``, ``paper``) and each of the five models, side by side in one run:

* milliseconds per training step (forward + energy loss + backward + AdamW step) on random
  data of the preset's shape (batch x S cells x G genes, a retrieval database of N training
  perturbations with D-dim gene vectors; one-hot N-dim for STATE), median of ``--steps`` steps
  after ``--warmup``;
* model FLOPs per step (forward + backward, ``torch.utils.flop_counter``) and per cell;
* the ratio of each model's step time to STATE's: the median over rounds of the ratio within a round
  (the models' steps are interleaved round by round, so a drift hits both sides of a ratio);
* for the backbone alone (the Llama set transformer, forward + backward): achieved FLOP/s
  against a float32 matmul peak measured in the same run;
* PT-RAG with its scorer block as torch operations (``pt_rag (torch)``) beside the compiled
  CPU loop that computes it by default (:mod:`ptrag.nn.scorer_cpu`; float32 on the CPU only,
  so on a GPU or under ``--bf16`` both rows run the same torch code);
* PT-RAG with the naive (materialised ``B x S x K x 3H`` triplets) computation beside the
  fused one, to show what the fused maths saves;
* the data loader: sets per second read from an in-memory synthetic Perturb-seq file, against
  the sets per second the fastest model consumes.

    python benchmarks/train_step.py                    # both presets, CPU
    python benchmarks/train_step.py --preset paper --device cuda --bf16
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import statistics
import time

import torch
from geomloss import SamplesLoss

from ptrag.nn.generator import PRESETS, PerturbationModel, count_parameters
from ptrag.nn.responses import ResponseIndex
from ptrag.nn.selector import torch_scorer
from ptrag.train.config import MODEL_KINDS
from ptrag.train.config import PRESETS as TRAIN_PRESETS
from ptrag.train.cost import count_flops, interleaved_times, matmul_peak, paired_ratio, time_interleaved

MODELS = ("state", "state_genept", "vanilla_rag", "pt_rag", "pt_rag_response")
N_CELL_TYPES = 4  # pt_rag_response: the paper's four cell types, every perturbation trains in each


def response_db(n_db: int, emb_dim: int, n_genes: int) -> ResponseIndex:
    """A response database of the paper's size: ``n_db`` perturbations x 4 cell types."""
    gen = torch.Generator().manual_seed(2)
    e = n_db * N_CELL_TYPES
    vec = torch.randn(n_db, emb_dim, generator=gen)
    pert = torch.arange(n_db).repeat(N_CELL_TYPES)
    ct = torch.arange(N_CELL_TYPES).repeat_interleave(n_db)
    shift = 0.1 * torch.randn(e, n_genes, generator=gen)
    return ResponseIndex(vec[pert], pert, ct, shift, torch.randn(e, 51, generator=gen))


def build(model: str, preset: str, n_genes: int, n_db: int, emb_dim: int, fused: bool, device):
    conditioning, kind = MODEL_KINDS[model]
    cfg = dataclasses.replace(PRESETS[preset], conditioning=conditioning, fused_triplets=fused)
    pert_dim = n_db if kind == "onehot" else emb_dim
    db = torch.randn(n_db, pert_dim) if conditioning in ("vanilla_rag", "pt_rag") else None
    responses = response_db(n_db, pert_dim, n_genes) if conditioning == "pt_rag_response" else None
    torch.manual_seed(0)
    m = PerturbationModel(cfg, n_genes, n_genes, pert_dim, database=db, responses=responses).to(device)
    return m, cfg, pert_dim


def batch(b: int, s: int, g: int, pert_dim: int, n_db: int, device):
    gen = torch.Generator().manual_seed(1)
    ctrl = torch.rand(b, s, g, generator=gen).to(device)
    target = torch.rand(b, s, g, generator=gen).to(device)
    pert = torch.randn(b, pert_dim, generator=gen).to(device)
    qidx = torch.randint(0, n_db, (b,), generator=gen).to(device)
    qct = torch.randint(0, N_CELL_TYPES, (b,), generator=gen).to(device)
    return ctrl, target, pert, qidx, qct


def step_fn(m, opt, energy, data, bf16: bool, device, torch_block: bool = False):
    ctrl, target, pert, qidx, qct = data

    def step():
        with torch_scorer() if torch_block else contextlib.nullcontext():  # forward and backward
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                out = m(ctrl, ctrl, pert, qidx, query_cell_type=qct)
                loss = energy(out.pred.float(), target).mean()
                if out.weights is not None:
                    loss = loss + 0.1 * out.weights.mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
        opt.step()

    return step


def loader_rate(n_sets: int, s: int, g: int, batch_size: int) -> float:
    """Sets per second a DataLoader over ptrag's SetDataset delivers from an in-memory file."""
    import tempfile
    from pathlib import Path

    from ptrag.data.io import read_perturbseq
    from ptrag.data.sets import SetDataset, SetSampler
    from ptrag.data.synthetic import simulate

    bench = simulate(n_genes=g, n_perturbations=120, cells_per_perturbation=max(s, 64))
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "x.h5ad"
        bench.adata.write_h5ad(path)
        data = read_perturbseq(path)
        groups = data.groups()
        groups = groups[~groups["perturbation"].eq("non-targeting")]
        sampler = SetSampler(data.obs, groups, s, mode="train", seed=0)
        names = sorted(groups["perturbation"].unique())
        ds = SetDataset(data, list(data.var_names), {n: i for i, n in enumerate(names)})
        sets = sampler.plan(0)[: n_sets + batch_size]
        # what training iterates: a DataLoader (batched read + collate), in the main process;
        # steady state (a training reads thousands of batches): the median of three passes,
        # each after a warm-up batch (the first builds the gene-restricted matrix, once)
        loader = torch.utils.data.DataLoader(ds, sampler=sets, batch_size=batch_size)
        rates = []
        for _ in range(3):
            it = iter(loader)
            next(it)
            t = time.perf_counter()
            n = sum(len(b["pert_id"]) for b in it)
            rates.append(n / (time.perf_counter() - t))
        return statistics.median(rates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=("cpu", "paper", "both"), default="both")
    ap.add_argument("--genes", type=int, default=2000)
    ap.add_argument("--database", type=int, default=2009, help="training perturbations (paper: 2,009)")
    ap.add_argument("--emb-dim", type=int, default=1536, help="gene-vector width (GenePT: 1536)")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast")
    ap.add_argument("--no-naive", action="store_true", help="skip the naive PT-RAG reference")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    energy = SamplesLoss("energy")
    peak = matmul_peak(device, torch.bfloat16 if args.bf16 else torch.float32)
    print(
        f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"matmul peak {peak / 1e9:.1f} GFLOP/s ({'bf16' if args.bf16 else 'fp32'})"
    )
    presets = ("cpu", "paper") if args.preset == "both" else (args.preset,)
    demand = {}
    for preset in presets:
        tp = TRAIN_PRESETS[preset]
        b, s = tp["batch_size"], tp["cell_set_size"]
        print(
            f"\n## preset {preset}: batch {b} x S {s} cells x G {args.genes} genes, K {PRESETS[preset].topk}, "
            f"hidden {PRESETS[preset].hidden}, {PRESETS[preset].n_layers} blocks"
        )
        print(
            f"{'model':<20}{'params':>12}{'ms/step':>10}{'x state':>9}"
            f"{'GFLOP/step':>12}{'MFLOP/cell':>12}{'GFLOP/s':>9}"
        )
        # pt_rag once more with its scorer block as torch operations (the compiled CPU loop's
        # reference), and with the naive materialised triplets unless --no-naive
        rows = [(m, "fused") for m in MODELS] + [("pt_rag", "torch")] + ([] if args.no_naive else [("pt_rag", "naive")])
        built = []
        for model, variant in rows:
            fused = variant != "naive"
            m, cfg, pert_dim = build(model, preset, args.genes, args.database, args.emb_dim, fused, device)
            opt = torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=5e-4)
            data = batch(b, s, args.genes, pert_dim, args.database, device)
            if m.responses is not None:  # as in training: a query carries its perturbation's own gene vector
                data = (*data[:2], m.responses.raw[m.responses.pert_row[data[3]]], *data[3:])
            fn = step_fn(m, opt, energy, data, args.bf16, device, torch_block=variant == "torch")
            for _ in range(args.warmup):
                fn()
            built.append((model, variant, m, fn))
        # interleaved: one step of every model per round, so drifts of a shared machine hit all alike
        times = interleaved_times([fn for *_, fn in built], args.steps, 0, device)
        secs = [statistics.median(t) for t in times]
        for i, (model, variant, m, fn) in enumerate(built):
            sec = secs[i]
            fl = count_flops(fn)
            name = model if variant == "fused" else f"pt_rag ({variant})"
            print(
                f"{name:<20}{count_parameters(m):>12,}{sec * 1e3:>10.1f}"
                f"{paired_ratio(times[i], times[0]):>9.2f}{fl / 1e9:>12.2f}"
                f"{fl / (b * s) / 1e6:>12.2f}{fl / sec / 1e9:>9.1f}"
            )
            if variant == "fused":  # the most demanding consumer: the fastest model
                demand[preset] = max(demand.get(preset, 0.0), b / sec)
        del built
        # the backbone alone
        m, cfg, _ = build("state", preset, args.genes, args.database, args.emb_dim, True, device)
        z = torch.randn(b, s, cfg.hidden, device=device, requires_grad=True)

        def backbone_step(m=m, z=z):  # bound now: `m` and `z` are rebound on every preset
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
                m.backbone(z).float().sum().backward()

        sec = time_interleaved([backbone_step], args.steps, args.warmup, device)[0]
        fl = count_flops(backbone_step)
        print(
            f"backbone (fwd+bwd): {sec * 1e3:.1f} ms, {fl / 1e9:.2f} GFLOP, {fl / sec / 1e9:.1f} GFLOP/s = "
            f"{100 * fl / sec / peak:.0f}% of the matmul peak"
        )
    print("\n## data loader (SetDataset, in memory, 2,000 genes)")
    for preset in presets:
        s = TRAIN_PRESETS[preset]["cell_set_size"]
        rate = loader_rate(16 * TRAIN_PRESETS[preset]["batch_size"], s, args.genes, TRAIN_PRESETS[preset]["batch_size"])
        need = demand[preset]
        print(
            f"preset {preset}: {rate:.0f} sets/s read (one process); the fastest model consumes {need:.1f} sets/s "
            f"-> {rate / need:.1f}x"
        )


if __name__ == "__main__":
    main()
