"""The training options as declared by :class:`ptrag.train.config.TrainConfig`'s fields.

Each field's ``metadata`` holds its help text, whether ``ptrag train`` has a flag for it and the
flag; :func:`train_options` reads them with the field's type, choices and preset defaults.
``ptrag train``'s flags (:mod:`ptrag.cli.train_options`) and the table of every training
option in docs/training.md (:func:`options_markdown`) are generated from it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, get_type_hints

from ptrag.data.io import ColumnSpec
from ptrag.model_checks import option_choices
from ptrag.train.config import PRESETS, TrainConfig

#: The marker comments around the generated table in docs/training.md.
DOCS_BEGIN, DOCS_END = "<!-- options:begin -->", "<!-- options:end -->"


@dataclass(frozen=True)
class TrainOption:
    """One :class:`TrainConfig` option: its field, flag, type, choices, defaults and help."""

    name: str
    flag: str | None  # None: a --config TOML key only
    type: type
    choices: tuple[str, ...]  # a Literal's values, else ()
    default: Any
    cpu: Any
    paper: Any
    help: str

    @property
    def default_text(self) -> str:
        """``[default: X]``, ``[default: cpu preset X, paper preset Y]``, or ``""`` for an empty
        string default."""
        cpu, paper = _show(self.cpu), _show(self.paper)
        if cpu == "":
            return ""
        return f"[default: {cpu}]" if cpu == paper else f"[default: cpu preset {cpu}, paper preset {paper}]"


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def train_options() -> list[TrainOption]:
    """Every :class:`TrainConfig` option, in field order."""
    hints = get_type_hints(TrainConfig)
    base = TrainConfig()
    out = []
    for f in fields(TrainConfig):
        meta, t = f.metadata, hints[f.name]
        choices = tuple(str(c).lower() if isinstance(c, bool) else c for c in option_choices(t) or ())  # true, false
        default = getattr(base, f.name)
        flag = (meta.get("flag") or "--" + f.name.replace("_", "-")) if meta.get("cli", True) else None
        out.append(
            TrainOption(
                name=f.name,
                flag=flag,
                type=type(default) if choices else (dict if f.name == "data" else t),
                choices=choices,
                default=default,
                cpu=PRESETS["cpu"].get(f.name, default),
                paper=PRESETS["paper"].get(f.name, default),
                help=meta["help"],
            )
        )
    return out


def cli_options() -> list[TrainOption]:
    """The options ``ptrag train`` has a flag for."""
    return [o for o in train_options() if o.flag is not None]


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _default_cell(o: TrainOption, value: Any) -> str:
    if o.name == "data":
        return "the data flags' defaults"
    # TOML spellings: "text", true / false
    return f'`"{value}"`' if isinstance(value, str) else f"`{str(value).lower() if isinstance(value, bool) else value}`"


def options_markdown() -> str:
    """The table of every training option (flag, TOML key, type or choices, cpu and paper
    defaults, help) that docs/training.md holds between :data:`DOCS_BEGIN` and :data:`DOCS_END`."""
    data_flags = ", ".join(f"`--{c.replace('_', '-')}`" for c in ColumnSpec.__dataclass_fields__)
    rows = [
        "| flag | TOML key | type / choices | cpu preset | paper preset | help |",
        "|---|---|---|---|---|---|",
    ]
    for o in train_options():
        if o.name == "data":
            flag, key, kind = data_flags, "`[data]` table", "table"
        else:
            flag = f"`{o.flag}`" if o.flag else "TOML only"
            key, kind = f"`{o.name}`", " \\| ".join(f"`{c}`" for c in o.choices) or o.type.__name__
        cpu, paper = _default_cell(o, o.cpu), _default_cell(o, o.paper)
        rows.append(f"| {flag} | {key} | {kind} | {cpu} | {paper} | {_cell(o.help)} |")
    return "\n".join(rows) + "\n"
