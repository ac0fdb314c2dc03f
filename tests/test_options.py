"""Each training option is declared once (a :class:`TrainConfig` field's metadata); ``ptrag
train``'s flags and the options table of docs/training.md are generated from it."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import typer

from ptrag.cli import app, main
from ptrag.train.config import TrainConfig
from ptrag.train.options import DOCS_BEGIN, DOCS_END, cli_options, options_markdown, train_options

DOCS = Path(__file__).resolve().parents[1] / "docs" / "training.md"

#: ``ptrag train``'s flags before they were generated: none may be lost or renamed.
TRAIN_FLAGS = set(
    """--data --out --model --genes --gene-aliases --split --config --preset --task --target-cell-type
    --fewshot --max-steps --val-every --batch-size --cell-set-size --hidden --n-layers --n-heads --ffn
    --topk --tau --sparsity-weight --sparsity-scale --residual-base --calibration --empty-selection
    --aggregation --train-selection --identity-init --no-identity-init --eval-selection --optimizer --lr
    --weight-decay --n-genes --cell-encoder --cell-obsm-key --missing-genes --match-batch --no-match-batch
    --early-stopping --seed --accelerator --devices --strategy --precision --num-workers --pert-col
    --cell-type-col --batch-col --control --layer --obsm-key --backed --in-memory --resume""".split()  # noqa: SIM905
)

#: The options without a flag (set in a --config TOML); ``data`` has the shared data flags.
TOML_ONLY = {
    "cell_encoder_layers",
    "dropout",
    "grad_clip",
    "response_candidates",
    "response_context",
    "response_readout",
    "response_agreement",
    "response_transfer",
    "response_flat",
    "data",
}


def _train_command():
    return typer.main.get_command(app).commands["train"]


def _flags() -> set[str]:
    return {o for p in _train_command().params for o in (*p.opts, *p.secondary_opts)} - {"-h", "--help"}


def test_the_docs_table_is_the_generated_one():
    text = DOCS.read_text(encoding="utf-8")
    assert text.count(DOCS_BEGIN) == 1 and text.count(DOCS_END) == 1
    section = text.split(DOCS_BEGIN)[1].split(DOCS_END)[0]
    assert section.strip("\n") == options_markdown().strip("\n"), (
        "docs/training.md's options table is stale: replace the section between the markers with "
        "ptrag.train.options.options_markdown()"
    )


def test_every_field_is_a_flag_or_toml_only():
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    flagged = {o.name for o in cli_options()}
    assert flagged | TOML_ONLY == names and not flagged & TOML_ONLY
    flags = _flags()
    for o in cli_options():
        assert o.flag in flags, o.name
    rows = {o.name: row for o, row in zip(train_options(), options_markdown().splitlines()[2:], strict=True)}
    for name in TOML_ONLY - {"data"}:
        assert rows[name].startswith("| TOML only | `" + name + "`"), rows[name]
    assert all(f.metadata.get("help") for f in dataclasses.fields(TrainConfig))


def test_no_flag_is_lost_or_renamed():
    assert _flags() == TRAIN_FLAGS


def test_help_shows_choices_and_preset_defaults(capsys):
    for o in cli_options():
        for choice in o.choices:
            assert re.search(rf"(^|[^\w-]){re.escape(choice)}([^\w-]|$)", o.help), (o.name, choice)
    assert main(["train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.replace("│", " ").split())
    assert "[default: cpu preset 1500, paper preset 50000]" in text
    assert "[default: cpu preset 64, paper preset 128]" in text and "[default: adamw]" in text
    assert "[default: yes]" in text and "[default: no]" in text and "[data] table" in text
    boolean = {p.name: p for p in _train_command().params if p.name in ("identity_init", "match_batch")}
    assert boolean["identity_init"].secondary_opts == ["--no-identity-init"] and boolean["match_batch"].default is None


@pytest.fixture
def trained(monkeypatch):
    """``ptrag train`` with a fake trainer: the resolved configurations it was given."""
    import ptrag.train.fit as fit

    seen = []

    def fake(cfg, *args, **kwargs):
        seen.append(cfg)
        return SimpleNamespace(n_parameters=1, val_energy=None, val_energy_control=None, val_selected_contexts=None)

    monkeypatch.setattr(fit, "train", fake)
    return seen


def test_defaults_preset_config_then_flags(tmp_path, trained):
    toml = tmp_path / "c.toml"
    toml.write_text('hidden = 32\nn_heads = 2\ndropout = 0.1\n[data]\npert_col = "guide"\ncontrol = "NTC"\n')
    base = ["train", "--data", str(tmp_path / "d.h5ad"), "--out", str(tmp_path / "run")]
    assert main([*base, "--preset", "paper", "--config", str(toml), "--n-heads", "4", "--control", "ctl"]) == 0
    cfg = trained[-1]
    assert (cfg.preset, cfg.n_layers, cfg.hidden, cfg.n_heads, cfg.dropout) == ("paper", 4, 32, 4, 0.1)
    assert cfg.data["pert_col"] == "guide" and cfg.data["control"] == "ctl" and cfg.data["batch_col"] == "gem_group"
    assert main([*base, "--no-identity-init", "--match-batch", "--cell-type-col", ""]) == 0
    cfg = trained[-1]
    assert (cfg.preset, cfg.hidden, cfg.max_steps, cfg.identity_init, cfg.match_batch) == ("cpu", 64, 1500, False, True)
    assert cfg.data["cell_type_col"] == "" and cfg.data["pert_col"] == "gene"


def test_response_transfer_takes_true_false_or_auto_from_a_config_file(tmp_path, trained, capsys):
    """A ``bool | Literal`` option: TOML booleans and the named choice pass, anything else is one
    error line naming the file, the key and the choices; a run's config.toml round-trips it."""
    base = ["train", "--data", str(tmp_path / "d.h5ad"), "--out", str(tmp_path / "run")]
    toml = tmp_path / "c.toml"
    for text, value in (("false", False), ("true", True), ('"auto"', "auto")):
        toml.write_text(f"response_transfer = {text}\n")
        assert main([*base, "--config", str(toml)]) == 0
        got = trained[-1].response_transfer
        assert got == value and type(got) is type(value)  # false stays a bool, not 0 or "false"
    assert TrainConfig().response_transfer is False
    for bad in ('"sometimes"', "1"):
        toml.write_text(f"response_transfer = {bad}\n")
        assert main([*base, "--config", str(toml)]) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert "c.toml: response_transfer" in err and "true, false, auto" in err and "Traceback" not in err
    path = tmp_path / "config.toml"
    dataclasses.replace(TrainConfig(), response_transfer=False).to_toml(path)
    assert "response_transfer = false" in path.read_text()


def test_resume_keeps_the_run_options(tmp_path, trained, capsys):
    run = tmp_path / "run"
    run.mkdir()
    dataclasses.replace(TrainConfig(), max_steps=10).to_toml(run / "config.toml")
    base = ["train", "--data", str(tmp_path / "d.h5ad"), "--out", str(run), "--resume"]
    assert main([*base, "--max-steps", "20"]) == 0 and trained[-1].max_steps == 20
    assert main([*base, "--hidden", "32", "--pert-col", "guide"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "--hidden: the run has 64, given 32" in err and "--data" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--model", "gpt"], ["'gpt'", "--model", "pt_rag_response"]),
        (["--eval-selection", "best"], ["--eval-selection", "expected, threshold, sample, all"]),
        (["--n-heads", "3"], ["--n-heads (3) must divide --hidden (64)"]),
        (["--hidden", "0"], ["--hidden must be an integer >= 1"]),
    ],
)
def test_bad_values_name_the_flag(tmp_path, trained, capsys, args, words):
    assert main(["train", "--data", str(tmp_path / "d.h5ad"), "--out", str(tmp_path / "run"), *args]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "Traceback" not in err and not trained
    for word in words:
        assert word in err, (word, err)


def test_toml_only_options_are_checked_by_the_model_config(tmp_path, trained, capsys):
    toml = tmp_path / "c.toml"
    toml.write_text("cell_encoder_layers = 0\n")
    assert main(["train", "--data", "d.h5ad", "--out", str(tmp_path / "run"), "--config", str(toml)]) == 2
    assert "config key cell_encoder_layers must be an integer >= 1" in " ".join(capsys.readouterr().err.split())


def test_data_columns_override_mode_passes_only_the_given_flags():
    from typer.testing import CliRunner

    from ptrag.cli.options import with_data_columns

    seen = {}

    @with_data_columns(overrides=True)
    def cmd(spec) -> None:
        seen.update(spec)

    app_ = typer.Typer()
    app_.command()(cmd)
    app_.command("other")(lambda: None)
    res = CliRunner().invoke(app_, ["cmd", "--control", "ctl", "--batch-col", ""])
    assert res.exit_code == 0, res.output
    assert seen == {"control": "ctl", "batch_col": ""}
