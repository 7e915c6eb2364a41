"""Evaluation prompt sets with stable ids, all framed the same way for every arm."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources

import pandas as pd

HUMAN = "\n\nHuman:"
ASSISTANT = "\n\nAssistant:"
SCENARIOS = ("emotional_support", "sensitive_question", "mental_health")
PROMPT_SETS = ("q1", "scenarios", "heldout")


@dataclass(frozen=True)
class Prompt:
    """One evaluation prompt; ``text`` is already in transcript form, ending in ``Assistant:``."""

    id: str
    prompt_set: str
    text: str
    scenario: str = ""  # scenario name, or "harmless"/"helpful" for held-out prompts
    severity: str = ""


def frame(user_turn: str) -> str:
    """Frame a single user turn as an HH transcript ready for the assistant's reply."""
    return f"{HUMAN} {user_turn.strip()}{ASSISTANT}"


def _packaged(name: str) -> list[dict]:
    path = resources.files("study").joinpath("prompt_sets", f"{name}.json")
    return json.loads(path.read_text(encoding="utf-8"))


def q1_prompts() -> list[Prompt]:
    """The notebook's five Q1 prompts."""
    return [Prompt(r["id"], "q1", frame(r["text"])) for r in _packaged("q1")]


def scenario_prompts(per_scenario: int | None = None) -> list[Prompt]:
    """The notebook's six Q2 prompts plus the written ones, at most ``per_scenario`` each."""
    out, counts = [], {}
    for r in _packaged("scenarios"):
        counts[r["scenario"]] = counts.get(r["scenario"], 0) + 1
        if per_scenario is None or counts[r["scenario"]] <= per_scenario:
            out.append(Prompt(r["id"], "scenarios", frame(r["text"]), r["scenario"], r["severity"]))
    return out


def heldout_prompts(eval_df: pd.DataFrame, n: int, seed: int) -> list[Prompt]:
    """Draw ``n`` evaluation-split prompts, harmless and helpful in their pool's proportions.

    Args:
        eval_df: cleaned evaluation pairs (``prompt``, ``kind``, ``pair_id`` columns).
        n: number of prompts wanted.
        seed: sampling seed.
    """
    pool = eval_df.drop_duplicates("prompt")
    if len(pool) < n:
        raise ValueError(
            f"eval.n_heldout={n} but the evaluation split has only {len(pool)} distinct prompts "
            "that fit; lower eval.n_heldout or raise eval.heldout_max_prompt_tokens."
        )
    parts = [
        group.sample(
            n=min(len(group), max(1, round(n * len(group) / len(pool)))), random_state=seed
        )
        for _, group in sorted(pool.groupby("kind"), key=lambda kv: kv[0])
    ]
    picked = pd.concat(parts).sort_values("pair_id").head(n)
    if len(picked) < n:  # rounding fell short: top up deterministically
        rest = pool[~pool["pair_id"].isin(picked["pair_id"])].sample(
            n=n - len(picked), random_state=seed
        )
        picked = pd.concat([picked, rest]).sort_values("pair_id")
    return [
        Prompt(f"heldout-{pid}", "heldout", text, kind)
        for pid, text, kind in zip(picked["pair_id"], picked["prompt"], picked["kind"])
    ]
