"""--residual-base / --calibration auto: the evidence measured on training groups and what it resolves to."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ptrag.train.base_choice import AUTO_MARGIN, TRANSFER_FLOOR, BaseEvidence, base_evidence, resolve_auto
from ptrag.train.baselines import MeanChanges
from ptrag.train.config import TrainConfig


def _changes(rows: list[tuple[str, str, list[float]]]) -> MeanChanges:
    ct, pert, delta = zip(*rows, strict=True)
    return MeanChanges(np.array(ct, dtype=object), np.array(pert, dtype=object), np.array(delta, dtype=np.float64))


def _r(a, b) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def test_evidence_is_leave_one_out_and_same_perturbation_elsewhere():
    t = [[1.0, 2.0, 0.0, -1.0], [2.0, 1.0, 0.5, -1.0], [0.0, 3.0, 1.0, -2.0]]
    other = [[-1.0, 0.0, 2.0, 1.0], [3.0, 0.0, 0.0, 1.0]]
    ch = _changes(
        [
            *[("T", p, row) for p, row in zip("ABC", t, strict=True)],
            ("O", "A", other[0]),
            ("O", "B", other[1]),
            ("O", "Z", [9.0, 9.0, 9.0, 0.0]),  # not one of the target's perturbations: enters neither mean
        ]
    )
    ev = base_evidence(ch, ["T"])
    t = np.array(t)
    shared = np.mean([_r((t.sum(0) - t[i]) / 2, t[i]) for i in range(3)])
    transfer = np.mean([_r(other[0], t[0]), _r(other[1], t[1])])
    assert ev.shared == pytest.approx(shared) and ev.transfer == pytest.approx(transfer)
    assert (ev.n_shared, ev.n_transfer) == (3, 2)


@pytest.mark.parametrize(
    ("shared", "transfer", "choice"),
    [
        (0.5, 0.1, "context_mean"),
        (0.3, 0.3 - AUTO_MARGIN / 2, "none"),  # transfer above the floor, shared within the margin: the paper's
        (0.3 + 2 * AUTO_MARGIN, 0.3, "context_mean"),  # ... ahead by more than the margin
        (0.8, TRANSFER_FLOOR + 0.05, "context_mean"),
        (0.25, TRANSFER_FLOOR + 0.05, "none"),
        (-0.1, TRANSFER_FLOOR - 0.01, "context_mean"),  # the other cell types barely predict it (devel's K562)
        (0.05, -0.4, "context_mean"),  # a negative transfer is below the floor
        (0.4, float("nan"), "context_mean"),  # nothing trains elsewhere
        (float("nan"), 0.0, "none"),  # fewer than two training groups
    ],
)
def test_choice_takes_the_base_unless_the_other_cell_types_transfer(shared, transfer, choice):
    assert BaseEvidence(shared, transfer, 3, 3).choice == choice


def test_resolve_keeps_explicit_options_and_pt_rag_response_uses_no_base():
    explicit = TrainConfig(residual_base="none", calibration="validation")
    assert resolve_auto(explicit, None, None, []) == (explicit, None)
    auto = TrainConfig(model="pt_rag_response", residual_base="auto", calibration="auto")
    cfg, ev = resolve_auto(auto, None, None, [])
    assert (cfg.residual_base, cfg.calibration, ev) == ("none", "fallback", None)
    cfg, _ = resolve_auto(dataclasses.replace(auto, calibration="none"), None, None, [])
    assert (cfg.residual_base, cfg.calibration) == ("none", "none")  # explicit: as given
    cfg, _ = resolve_auto(TrainConfig(residual_base="context_mean", calibration="auto"), None, None, [])
    assert (cfg.residual_base, cfg.calibration) == ("context_mean", "validation")
    assert dataclasses.replace(cfg, calibration="none") == TrainConfig(residual_base="context_mean", calibration="none")


def test_the_synthetic_benchmark_keeps_the_papers_defaults():
    """On the demo's benchmark the other cell types transfer at least as well as the target's
    shared response (every target of seed 0), so auto trains exactly as the paper's none / none."""
    from ptrag.data.io import read_perturbseq
    from ptrag.data.split_makers import fewshot_split
    from ptrag.data.synthetic import simulate
    from ptrag.train.base_choice import _measure

    data = read_perturbseq(simulate(seed=0).adata)
    for target in ("cellA", "cellB", "cellC", "cellD"):
        ev = _measure(data, fewshot_split(data.groups(), target, 0.3, seed=0), list(data.var_names))
        assert ev.n_shared == ev.n_transfer == 36
        assert ev.choice == "none", ev.describe()


def test_resume_takes_auto_as_what_the_run_resolved():
    import dataclasses as dc

    from ptrag.errors import PtragError
    from ptrag.train.resume import resume_config

    run = TrainConfig(residual_base="context_mean", calibration="validation")
    given = dc.asdict(TrainConfig(residual_base="auto", calibration="auto"))  # an experiment resumed with auto
    cfg = resume_config(run, given)
    assert (cfg.residual_base, cfg.calibration) == ("context_mean", "validation")
    with pytest.raises(PtragError, match="--residual-base: the run has 'context_mean', given 'none'"):
        resume_config(run, {"residual_base": "none"})
