"""Preference pairs: loading, transcript splitting, cleaning, seeded sampling, evaluation split.

Two layouts are accepted:

* rm-static: ``prompt`` (ending in ``Assistant:``), ``chosen`` and ``rejected`` replies;
* HH transcripts: ``chosen`` and ``rejected`` whole conversations, split here at their longest
  common prefix that ends in ``\\n\\nAssistant:``.
"""

from __future__ import annotations

import difflib
import gzip
import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from study.config import DataConfig
from study.prompts import ASSISTANT, HUMAN

log = logging.getLogger(__name__)

DATA_SUFFIXES = (".parquet", ".jsonl", ".json", ".jsonl.gz", ".json.gz")
LAYOUTS = (
    "rm-static layout: columns prompt, chosen, rejected (replies only)",
    "HH transcript layout: columns chosen, rejected (whole conversations)",
)
DROP_REASONS = ("non_string", "no_assistant_turn", "empty_reply", "equal_replies")
REQUIRED_COLUMNS = ("chosen", "rejected")
JSON_ROW_EXAMPLE = '{"chosen": "...", "rejected": "..."}'


class DataError(ValueError):
    """Input data that the study cannot use, with the place and the fix in the message."""


@dataclass
class Pairs:
    """Cleaned preference pairs and what cleaning removed."""

    frame: pd.DataFrame  # pair_id, subset, kind, prompt, chosen, rejected
    n_raw: int
    dropped: dict[str, int] = field(default_factory=dict)
    source: str = ""
    fingerprint: str = ""


# -- transcripts ------------------------------------------------------------------------------


def split_transcript(text: str) -> tuple[str, str] | None:
    """Split one transcript at its LAST ``\\n\\nAssistant:``; None if it has no such turn."""
    if not isinstance(text, str):
        return None
    idx = text.rfind(ASSISTANT)
    if idx < 0:
        return None
    cut = idx + len(ASSISTANT)
    return text[:cut], text[cut:]


def split_pair(chosen: str, rejected: str) -> tuple[str, str, str] | None:
    """Split two transcripts at their longest common prefix ending in ``\\n\\nAssistant:``.

    Returns (prompt, chosen reply, rejected reply), or None when the transcripts share no
    assistant turn or either is not a string.
    """
    if not (isinstance(chosen, str) and isinstance(rejected, str)):
        return None
    common = os.path.commonprefix([chosen, rejected])
    idx = common.rfind(ASSISTANT)
    if idx < 0:
        return None
    cut = idx + len(ASSISTANT)
    return chosen[:cut], chosen[cut:], rejected[cut:]


def first_human_turn(prompt: str) -> str:
    """The opening question of a transcript, used to keep repeated questions on one side."""
    start = prompt.find(HUMAN)
    body = prompt[start + len(HUMAN) :] if start >= 0 else prompt
    end = body.find(ASSISTANT)
    return (body[:end] if end >= 0 else body).strip().lower()


# -- loading ----------------------------------------------------------------------------------


def _data_files(path: Path) -> list[Path]:
    if path.is_file():
        if not path.name.endswith(DATA_SUFFIXES):
            raise DataError(
                f"{path}: unsupported file type; expected a file ending in "
                f"{', '.join(DATA_SUFFIXES)}. Convert it, e.g. a CSV with pandas: "
                "pd.read_csv(PATH).to_json('pairs.jsonl', orient='records', lines=True)."
            )
        return [path]
    files = sorted(p for p in path.iterdir() if p.name.endswith(DATA_SUFFIXES))
    skipped = sorted(
        p.name
        for p in path.iterdir()
        if p.is_file()
        and p not in files
        and not p.name.startswith((".", "README", "LICENSE"))
        and not p.name.lower().endswith((".md", ".txt", ".rst"))
    )
    if files and skipped:
        log.warning(
            "%s: ignored %d file(s) that are not data files: %s (the study reads files ending "
            "in %s, in lower case)",
            path,
            len(skipped),
            ", ".join(skipped[:5]),
            ", ".join(DATA_SUFFIXES),
        )
    if not files:
        others = sorted(p.name for p in path.iterdir())
        found = f"it holds {', '.join(others[:5])}" if others else "it is empty"
        raise DataError(
            f"data.source={str(path)!r} is a folder with no data files ({found}); expected files "
            f"ending in {', '.join(DATA_SUFFIXES)}."
        )
    return files


def _subset_name(path: Path) -> str:
    name = path.name
    for suffix in sorted(DATA_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _opener(path: Path):
    return gzip.open if path.name.endswith(".gz") else open


def _check_text_file(path: Path) -> None:
    """Raise a DataError for an unreadable, non-UTF-8 or empty JSON file.

    The JSON reader accepts invalid UTF-8 and fails only when the rows are used, far from the
    file, and it reports an empty file as unparseable; both are caught here with their place.
    """
    if path.name.endswith(".gz"):
        where, example = " of the decompressed text", f"zcat {path.name} | iconv -f latin1 -t utf-8"
    else:
        where, example = "", f"iconv -f latin1 -t utf-8 {path.name}"
    offset, has_text = 0, False
    try:
        with _opener(path)(path, "rb") as fh:
            for lineno, line in enumerate(fh, 1):
                try:
                    text = line.decode("utf-8")
                except UnicodeDecodeError as err:
                    raise DataError(
                        f"{path}: not UTF-8 text: byte {offset + err.start}{where} (line "
                        f"{lineno}) is 0x{line[err.start]:02x}. Re-save the file as UTF-8, e.g. "
                        f"{example}, for text that was Latin-1."
                    ) from err
                has_text = has_text or bool(text.strip().strip("\ufeff"))
                offset += len(line)
    except (OSError, EOFError) as err:  # a damaged gzip stream raises either
        raise DataError(f"{path}: cannot be read ({err}); replace the file.") from err
    if not has_text:
        raise DataError(
            f"{path}: the file is empty; add one JSON object per line, e.g. {JSON_ROW_EXAMPLE}, "
            "or remove the file."
        )


def _check_parquet_file(path: Path) -> None:
    """Raise a DataError for an empty or unreadable parquet file.

    The reader reports both only as a failed dataset generation, which names neither.
    """
    import pyarrow.parquet as pq

    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty; write the pairs to it or remove it.")
    try:
        n_rows = pq.ParquetFile(path).metadata.num_rows
    except Exception as err:  # pyarrow raises several types for damaged files
        raise DataError(f"{path}: cannot be read as parquet ({err}); rewrite the file.") from err
    if n_rows == 0:
        raise DataError(f"{path}: the file has no rows; write the pairs to it or remove it.")


def _json_kind(value) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def _describe_json_error(path: Path) -> str:
    """Where and why a JSON file fails to parse, and what it should hold instead."""
    lines_fix = f"Each line must be one JSON object, e.g. {JSON_ROW_EXAMPLE}"
    # Only reached once the reader has failed, so reading the whole text is affordable.
    with _opener(path)(path, "rt", encoding="utf-8-sig") as fh:
        text = fh.read()
    if text.lstrip().startswith("["):
        array_fix = f"A JSON array must hold objects, e.g. [{JSON_ROW_EXAMPLE}]"
        try:
            items = json.loads(text)
        except json.JSONDecodeError as err:
            return f"line {err.lineno}, column {err.colno}: {err.msg}. {array_fix}"
        for number, item in enumerate(items, 1):
            if not isinstance(item, dict):
                return (
                    f"item {number} of the array is {_json_kind(item)}, not an object. {array_fix}"
                )
        return f"the array could not be read as rows. {array_fix}"
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            return f"line {lineno}, column {err.colno}: {err.msg}. {lines_fix}; fix or remove it"
        if not isinstance(row, dict):
            return f"line {lineno} is {_json_kind(row)}, not an object. {lines_fix}"
    return f"could not be parsed as JSON Lines or a JSON array of objects. {lines_fix}"


def _read_file(path: Path) -> pd.DataFrame:
    import datasets

    kind = "parquet" if path.name.endswith(".parquet") else "json"
    if kind == "json":
        _check_text_file(path)
    else:
        _check_parquet_file(path)
    try:
        ds = datasets.load_dataset(kind, data_files=str(path), split="train")
    except Exception as err:  # the datasets library wraps parse errors in several types
        if kind == "json":
            raise DataError(f"{path}: {_describe_json_error(path)}.") from err
        raise DataError(f"{path}: cannot be read as parquet ({err}); rewrite the file.") from err
    frame = ds.to_pandas()
    if frame.empty:
        raise DataError(f"{path}: the file has no rows; write the pairs to it or remove it.")
    return frame


def _near_column(name: str, found) -> str | None:
    """The found column that ``name`` was probably meant to be, compared without case."""
    by_lower = {str(c).strip().lower(): str(c) for c in found}
    close = difflib.get_close_matches(name, list(by_lower), n=1)
    return by_lower[close[0]] if close else None


def _check_columns(columns, origin: str) -> None:
    """Raise a DataError naming ``origin`` unless ``columns`` fit one of the ``LAYOUTS``."""
    found = [str(c) for c in columns if c != "subset"]
    missing = [c for c in REQUIRED_COLUMNS if c not in found]
    layouts = f"Accepted layouts: {'; '.join(LAYOUTS)}."
    if missing:
        hints, spare = [], [c for c in found if c not in REQUIRED_COLUMNS]
        for name in missing:
            near = _near_column(name, spare)
            if near:
                spare.remove(near)
                hints.append(f" Column {near!r}: did you mean {name!r}? Rename it to {name!r}.")
        raise DataError(
            f"{origin}: missing column{'s' if len(missing) > 1 else ''} "
            f"{', '.join(map(repr, missing))}; found {sorted(found)}.{''.join(hints)} {layouts}"
        )
    # Without an exact ``prompt`` column the replies are read as whole transcripts, so a
    # differently cased one would silently drop every row.
    if "prompt" not in found:
        cased = [c for c in found if c.strip().lower() == "prompt"]
        if cased:
            raise DataError(
                f"{origin}: column {cased[0]!r}: did you mean 'prompt'? Rename it to 'prompt'; "
                f"as it is, the replies would be read as whole transcripts. {layouts}"
            )


def _read_hub(source: str, split: str) -> pd.DataFrame:
    import datasets

    try:
        return datasets.load_dataset(source, split=split).to_pandas()
    except Exception as err:
        raise DataError(
            f"data.source={source!r} is not a local file or folder and could not be loaded from "
            f"the Hugging Face hub ({type(err).__name__}). Offline, point the study at local "
            "data: --dataset PATH or STUDY_DATASET=PATH (a parquet/jsonl/json file or a folder "
            "of them), e.g. STUDY_DATASET=../shared/data/hh-rlhf."
        ) from err


def load_raw(source: str, split: str = "train") -> pd.DataFrame:
    """Load raw rows from a hub id, a file or a folder of files, with a ``subset`` column."""
    if source == "synthetic":
        return synthetic_pairs(64)
    path = Path(source).expanduser()
    if path.exists():
        frames, with_prompt, without_prompt = [], [], []
        for file in _data_files(path):
            frame = _read_file(file)
            _check_columns(frame.columns, str(file))
            (with_prompt if "prompt" in frame.columns else without_prompt).append(file.name)
            frame.insert(0, "subset", _subset_name(file))
            frames.append(frame)
        # Concatenating both layouts would leave the transcripts without a prompt and drop them.
        if with_prompt and without_prompt:
            raise DataError(
                f"data.source={str(path)!r}: its files mix the two layouts: {with_prompt[0]} has a "
                f"'prompt' column, {without_prompt[0]} has none. Keep files of one layout in the "
                f"folder. Accepted layouts: {'; '.join(LAYOUTS)}."
            )
        return pd.concat(frames, ignore_index=True)
    frame = _read_hub(source, split)
    frame.insert(0, "subset", f"{source.split('/')[-1]}-{split}")
    return frame


def to_pairs_frame(raw: pd.DataFrame, origin: str) -> tuple[pd.DataFrame, dict[str, int]]:
    """Bring either layout to (pair_id, subset, kind, prompt, chosen, rejected) and clean it.

    Rows that cannot be used are dropped and counted by reason (``DROP_REASONS``).
    """
    _check_columns(raw.columns, origin)
    columns = set(raw.columns)
    has_prompt = "prompt" in columns
    subsets = raw["subset"] if "subset" in columns else pd.Series(["data"] * len(raw))
    dropped = dict.fromkeys(DROP_REASONS, 0)
    rows, counters = [], {}
    for subset, prompt, chosen, rejected in zip(
        subsets,
        raw["prompt"] if has_prompt else [None] * len(raw),
        raw["chosen"],
        raw["rejected"],
    ):
        counters[subset] = counters.get(subset, -1) + 1
        row_no = counters[subset]
        texts = (prompt, chosen, rejected) if has_prompt else (chosen, rejected)
        if not all(isinstance(t, str) for t in texts):
            dropped["non_string"] += 1
            continue
        if has_prompt:
            if ASSISTANT.strip() not in prompt:
                dropped["no_assistant_turn"] += 1
                continue
            reply_c, reply_r = chosen, rejected
        else:
            split = split_pair(chosen, rejected)
            if split is None:
                dropped["no_assistant_turn"] += 1
                continue
            prompt, reply_c, reply_r = split
        if not reply_c.strip() or not reply_r.strip():
            dropped["empty_reply"] += 1
            continue
        if reply_c.strip() == reply_r.strip():
            dropped["equal_replies"] += 1
            continue
        kind = "harmless" if "harmless" in str(subset) else "helpful"
        rows.append((f"{subset}-{row_no:05d}", subset, kind, prompt, reply_c, reply_r))
    frame = pd.DataFrame(
        rows, columns=["pair_id", "subset", "kind", "prompt", "chosen", "rejected"]
    )
    return frame, dropped


def fingerprint(frame: pd.DataFrame) -> str:
    """Content hash of pairs, independent of how they were loaded."""
    h = hashlib.sha256()
    for row in frame[["prompt", "chosen", "rejected"]].itertuples(index=False):
        for text in row:
            h.update(text.encode("utf-8"))
            h.update(b"\x00")
    return h.hexdigest()[:16]


def load_pairs(source: str, split: str = "train") -> Pairs:
    """Load and clean preference pairs from any accepted source and layout."""
    raw = load_raw(source, split)
    frame, dropped = to_pairs_frame(raw, source)
    for reason, n in dropped.items():
        if n:
            log.warning("dropped %d pairs from %s: %s", n, source, reason)
    if frame.empty:
        near = None if "prompt" in raw.columns else _near_column("prompt", raw.columns)
        hint = f" If {near!r} holds the prompts, rename it to 'prompt'." if near else ""
        raise DataError(
            f"data.source={source!r}: no usable pairs after cleaning ({len(raw)} rows read, "
            f"dropped {dropped}). Check that the chosen and rejected replies are non-empty "
            f"strings that differ and follow a '{ASSISTANT.strip()}' turn.{hint}"
        )
    return Pairs(frame, len(raw), dropped, source, fingerprint(frame))


# -- sampling and splits ----------------------------------------------------------------------


def seeded_sample(frame: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """The rows ``frame.sample(n=n, random_state=seed)`` selects, in that order.

    ``DataFrame.sample`` without replacement takes a prefix of a seeded permutation, so this
    equals pandas' own call on the same frame, in any process and with any hash seed.
    """
    if n > len(frame):
        raise DataError(
            f"data.sample_size={n} but only {len(frame)} valid training pairs are available; "
            "lower data.sample_size or add data."
        )
    order = np.random.RandomState(seed).permutation(len(frame))[:n]
    return frame.iloc[order]


def question_position(question: str) -> float:
    """A number in [0, 1) fixed by the opening question alone (no order, no hash seed)."""
    digest = hashlib.sha256(question.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@dataclass
class StudyData:
    """Training pairs, evaluation pairs and the evaluator's pairs, pairwise disjoint."""

    train: pd.DataFrame
    eval: pd.DataFrame
    evaluator: pd.DataFrame
    summary: dict


def prepare(cfg: DataConfig) -> StudyData:
    """Load, clean, split and sample according to ``cfg``.

    With an evaluation split (a hub dataset's ``test``), it is used as is. Otherwise the rows are
    divided by a hash of their opening question, so repeated questions fall on one side and the
    division does not depend on row order or process.
    """
    pool = load_pairs(cfg.source, cfg.train_split)
    summary = {
        "source": cfg.source,
        "n_raw": pool.n_raw,
        "dropped": pool.dropped,
        "n_clean": len(pool.frame),
        "fingerprint": pool.fingerprint,
    }
    is_local = cfg.source == "synthetic" or Path(cfg.source).expanduser().exists()
    if cfg.eval_split and not is_local:
        # The training rows stay exactly the split's; the held-out split feeds evaluation and
        # the evaluator.
        held = load_pairs(cfg.source, cfg.eval_split)
        train_pool = pool.frame
        pos = held.frame["prompt"].map(first_human_turn).map(question_position)
        share = cfg.evaluator_fraction / (cfg.heldout_fraction + cfg.evaluator_fraction)
        eval_frame, evaluator = held.frame[pos >= share], held.frame[pos < share]
        summary["eval_dropped"] = held.dropped
        summary["eval_fingerprint"] = held.fingerprint
    else:
        pos = pool.frame["prompt"].map(first_human_turn).map(question_position)
        is_eval = pos < cfg.heldout_fraction
        is_evaluator = ~is_eval & (pos < cfg.heldout_fraction + cfg.evaluator_fraction)
        train_pool = pool.frame[~is_eval & ~is_evaluator]
        eval_frame, evaluator = pool.frame[is_eval], pool.frame[is_evaluator]
    if cfg.sample_size > len(train_pool):
        raise DataError(
            f"data.sample_size={cfg.sample_size} but data.source={cfg.source!r} has only "
            f"{len(train_pool)} valid training pairs ({len(pool.frame)} usable of {pool.n_raw} "
            f"rows read, before the evaluation share is set aside); lower data.sample_size to "
            f"at most {len(train_pool)} or add data."
        )
    train = seeded_sample(train_pool.reset_index(drop=True), cfg.sample_size, cfg.sample_seed)
    # Prompts seen in training never serve as evaluation prompts.
    seen = set(train["prompt"])
    overlap = eval_frame["prompt"].isin(seen)
    eval_frame = eval_frame[~overlap].reset_index(drop=True)
    seen |= set(eval_frame["prompt"])
    evaluator = evaluator[~evaluator["prompt"].isin(seen)].reset_index(drop=True)
    summary.update(
        n_train_pool=len(train_pool),
        n_train=len(train),
        n_eval=len(eval_frame),
        n_eval_dropped_overlap=int(overlap.sum()),
        n_evaluator=len(evaluator),
        train_kinds=train["kind"].value_counts().to_dict(),
        eval_kinds=eval_frame["kind"].value_counts().to_dict(),
    )
    return StudyData(train.reset_index(drop=True), eval_frame, evaluator, summary)


# -- synthetic rows for the smoke profile and tests --------------------------------------------

_TOPICS = ["tea", "rain", "music", "books", "sleep", "work", "cats", "bread", "trains", "maps"]


def synthetic_pairs(n: int, seed: int = 0) -> pd.DataFrame:
    """HH-layout transcripts with a polite chosen and a curt rejected reply (no downloads)."""
    rng = np.random.RandomState(seed)
    rows = []
    for i in range(n):
        topic = _TOPICS[rng.randint(len(_TOPICS))]
        prompt = f"{HUMAN} Tell me about {topic} number {i}.{ASSISTANT}"
        if i % 3 == 0:  # a few multi-turn conversations
            prompt = f"{HUMAN} Hi, a question on {topic} {i}.{ASSISTANT} Sure, go on.{prompt}"
        subset = "harmless-synthetic" if i % 4 == 0 else "helpful-synthetic"
        chosen = f" Happy to help: {topic} is lovely and {math.floor(i * 1.5)} facts exist."
        rejected = f" No. I hate {topic}."
        rows.append((subset, prompt + chosen, prompt + rejected))
    return pd.DataFrame(rows, columns=["subset", "chosen", "rejected"])
