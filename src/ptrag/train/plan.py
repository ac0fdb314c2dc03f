"""The Lightning training plan: energy-distance loss (+ sparsity for PT-RAG), AdamW, logging.

The plan owns the :class:`~ptrag.nn.generator.PerturbationModel` and the perturbation table
(the vector of every perturbation the run knows, one-hot or gene embedding), and maps each
perturbation to its row in the retrieval database. All of it is saved in the checkpoint, so a
checkpoint alone predicts: no side files.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import torch
from geomloss import SamplesLoss

from ptrag.nn.generator import ModelConfig, ModelOutput, PerturbationModel


class PerturbationPlan(L.LightningModule):
    """Train a :class:`PerturbationModel` on cell sets.

    Parameters
    ----------
    model_cfg
        :class:`ModelConfig` as a dict.
    n_genes
        Output genes.
    cell_input_dim
        Width of the cell encoder's input.
    pert_names
        Perturbations of the run (rows of the perturbation table).
    pert_dim
        Width of a perturbation vector.
    database_names
        Training perturbations forming the retrieval database (RAG models); a subset of
        ``pert_names``.
    genes
        Output gene names, in order.
    sparsity_weight
        lambda_sparse (PT-RAG).
    lr, weight_decay
        Optimiser settings.
    optimizer
        ``adamw`` (decoupled weight decay) or ``adam`` (L2 added to the gradient).
    """

    def __init__(
        self,
        model_cfg: dict,
        n_genes: int,
        cell_input_dim: int,
        pert_names: Sequence[str],
        pert_dim: int,
        database_names: Sequence[str],
        genes: Sequence[str],
        sparsity_weight: float = 0.1,
        lr: float = 1e-3,
        weight_decay: float = 5e-4,
        pert_vectors: torch.Tensor | None = None,
        optimizer: str = "adamw",
    ) -> None:
        super().__init__()
        # The vectors live in buffers (state_dict), not in the hyper-parameters.
        self.save_hyperparameters(ignore=["pert_vectors"])
        cfg = ModelConfig(**model_cfg)
        self.rag = cfg.conditioning != "none"
        if pert_vectors is None:  # rebuilt from a checkpoint: load_state_dict fills the buffers
            pert_vectors = torch.zeros(len(pert_names), pert_dim)
        pert_vectors = torch.as_tensor(pert_vectors, dtype=torch.float32)
        db_pos = {n: i for i, n in enumerate(database_names)}
        pert_pos = {n: i for i, n in enumerate(pert_names)}
        database = pert_vectors[[pert_pos[n] for n in database_names]] if self.rag else None
        self.model = PerturbationModel(
            cfg,
            n_genes,
            cell_input_dim,
            pert_dim,
            database=database,
            database_names=list(database_names) if self.rag else None,
        )
        self.pert_names = list(pert_names)
        self.register_buffer("pert_table", pert_vectors.clone())
        self.register_buffer(
            "pert_to_db", torch.tensor([db_pos.get(n, -1) for n in pert_names], dtype=torch.long)
        )
        self.energy = SamplesLoss("energy")

    # --------------------------------------------------------------- forward
    def forward(self, batch: dict, pert_vec: torch.Tensor | None = None, query_index: torch.Tensor | None = None) -> ModelOutput:
        """Predict the perturbed sets of a batch.

        ``pert_vec`` / ``query_index`` override the table lookup (unseen perturbations).
        """
        if pert_vec is None:
            pert_vec = self.pert_table[batch["pert_id"]]
            query_index = self.pert_to_db[batch["pert_id"]]
        return self.model(batch["ctrl_expr"], batch["cell_input"], pert_vec, query_index)

    def _loss(self, batch: dict, stage: str) -> torch.Tensor:
        out = self(batch)
        energy = self.energy(out.pred, batch["pert_expr"]).mean()
        loss = energy
        bs = batch["ctrl_expr"].shape[0]
        self.log(f"{stage}/energy", energy, prog_bar=True, batch_size=bs, sync_dist=stage == "val")
        if out.weights is not None:
            frac = out.weights.float().mean()
            loss = loss + self.hparams.sparsity_weight * out.weights.mean()
            self.log(f"{stage}/selected_fraction", frac, batch_size=bs, sync_dist=stage == "val")
            self.log(f"{stage}/selected_contexts", out.weights.float().sum(-1).mean(), batch_size=bs, sync_dist=stage == "val")
        if stage == "val":
            base = self.energy(batch["ctrl_expr"], batch["pert_expr"]).mean()
            self.log("val/energy_control", base, batch_size=bs, sync_dist=True)
        self.log(f"{stage}/loss", loss, batch_size=bs, sync_dist=stage == "val")
        return loss

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self._loss(batch, "train")

    # ------------------------------------------------------------ resuming
    # A run killed between checkpoints and restarted with --resume must end with the weights of
    # an uninterrupted run. Lightning restores weights, optimiser and step counters; the plan
    # adds what it does not: the torch RNG state (Gumbel noise, dropout) and the position in the
    # epoch's sequence of cell sets (the sampler is a function of seed and epoch, so the
    # position is global_step modulo the batches per epoch).
    train_sampler = None  # set by ptrag.train.fit.train: the training SetSampler

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        checkpoint["ptrag_rng"] = rng

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._pending_rng = checkpoint.get("ptrag_rng")
        sampler = self.train_sampler
        if sampler is not None and "global_step" in checkpoint:
            per_epoch = -(-len(sampler) // self._train_batch_size)
            step = int(checkpoint["global_step"])
            sampler.resume(step // per_epoch, (step % per_epoch) * self._train_batch_size)

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        rng = getattr(self, "_pending_rng", None)
        if rng is not None:  # first step after a resume: continue the interrupted random stream
            torch.set_rng_state(rng["torch"])
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
            self._pending_rng = None

    def attach_train_sampler(self, sampler, batch_size: int) -> None:
        """Let :meth:`on_load_checkpoint` put ``sampler`` back where the checkpoint left it."""
        self.train_sampler = sampler
        self._train_batch_size = int(batch_size)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._loss(batch, "val")

    def configure_optimizers(self):
        opt = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}[self.hparams.get("optimizer", "adamw")]
        return opt(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
