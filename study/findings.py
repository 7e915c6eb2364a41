"""Findings: ``results.json`` from a run, and ``REPORT.md`` as a pure function of it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from study import stats
from study.config import ARMS
from study.prompts import SCENARIOS
from study.store import write_text

METRICS = (
    ("seed_harmless", "harmless (notebook keywords, substring)"),
    ("harmless_word", "harmless (keywords, whole words)"),
    ("harmless_clf", "harmless (offensiveness classifier < 0.5)"),
    ("offensive", "offensiveness probability"),
    ("seed_helpful", "helpful (notebook: > 20 characters)"),
    ("polarity", "TextBlob polarity"),
    ("vader", "VADER compound"),
    ("is_comforting", "comforting (polarity and VADER > 0.2)"),
    ("reward", "reward (independent evaluator; q1 and held-out only)"),
    ("n_tokens", "reply length (tokens)"),
    ("is_eos", "stopped at EOS"),
)

DEVIATIONS = (
    (
        "both Trainers received one model object, so the two saved models were one",
        "every arm loads its own fresh copy of the base model",
    ),
    (
        '"RLHF" = SFT on chosen, "RLAIF" = SFT on rejected replies',
        "kept under honest names (`sft-chosen`, `sft-rejected`); real preference arms added "
        "(`dpo-human`, `dpo-ai` with an AI labeler)",
    ),
    (
        "SFT on the reply alone; padding (= EOS) kept its labels",
        "prompt + reply; prompt and padding masked; a real EOS supervised",
    ),
    (
        "5 (Q1) / 6 (Q2) prompts, one sample, no baseline, no CI",
        "q1 + held-out + 108 scenario prompts, k samples each, `base` baseline, "
        "prompt-clustered CIs, pre-declared tests with Holm adjustment",
    ),
    (
        "reply = decoded text with the prompt removed by `str.replace`",
        "reply = decoded new tokens only, cut at a new `Human:` turn",
    ),
    ("`max_length=100` counted the prompt", "`max_new_tokens`"),
    (
        "keyword harmlessness by substring",
        "kept as `seed_harmless`; whole-word and classifier versions added",
    ),
)


def _num(x) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if np.isfinite(x) else None


# -- building results -------------------------------------------------------------------------


def metric_table(replies: pd.DataFrame, n_boot: int) -> list[dict]:
    """Mean with a prompt-clustered 95 % CI for every arm, metric and prompt group."""
    sampled = replies[replies["decoding"] == "sampled"].copy()
    sampled["is_eos"] = sampled["is_eos"].astype(float)
    sampled["n_tokens"] = sampled["n_tokens"].astype(float)
    groups = [("q1+heldout", sampled["prompt_set"].isin(["q1", "heldout"]))]
    groups += [(s, sampled["scenario"] == s) for s in SCENARIOS]
    groups += [
        (f"heldout/{k}", (sampled["prompt_set"] == "heldout") & (sampled["scenario"] == k))
        for k in ("harmless", "helpful")
    ]
    out = []
    for group, mask in groups:
        part = sampled[mask]
        if part.empty:
            continue
        for arm in [a for a in ARMS if a in set(part["arm"])]:
            rows = part[part["arm"] == arm]
            for metric, _ in METRICS:
                table = rows.pivot_table(index="prompt_id", columns="sample", values=metric)
                if table.empty:  # a score not computed for this group (reward outside q1+heldout)
                    continue
                mean, low, high, n, k = stats.mean_ci(table.to_numpy(float), n_resamples=n_boot)
                out.append(
                    {
                        "group": group,
                        "arm": arm,
                        "metric": metric,
                        "mean": _num(mean),
                        "ci_low": _num(low),
                        "ci_high": _num(high),
                        "n_prompts": n,
                        "n_samples": k,
                    }
                )
    return out


def labeler_quality(labels) -> dict | None:
    """Agreement with humans (train and held-out), position bias, confidence distribution."""
    if not labels:
        return None
    out = {}
    for name in ("train", "heldout"):
        pref = np.asarray(labels[name]["pref_chosen"], dtype=float)
        bias = np.asarray(labels[name]["is_position_bias"], dtype=bool)
        agree = int((pref > 0.5).sum())
        low, high = stats.proportion_ci(agree, len(pref))
        b_low, b_high = stats.proportion_ci(int(bias.sum()), len(bias))
        confidence = np.abs(pref - 0.5) * 2
        hist, edges = np.histogram(confidence, bins=5, range=(0, 1))
        which = np.clip(np.digitize(confidence, edges[1:-1]), 0, len(hist) - 1)
        calibration = {
            f"{edges[i]:.1f}-{edges[i + 1]:.1f}": (
                {"n": int((which == i).sum()), "agreement": float((pref[which == i] > 0.5).mean())}
                if (which == i).any()
                else {"n": 0, "agreement": None}
            )
            for i in range(len(hist))
        }
        out[name] = {
            "n": len(pref),
            "agreement": agree / len(pref) if len(pref) else None,
            "agreement_ci": [low, high],
            "position_bias": float(bias.mean()) if len(bias) else None,
            "position_bias_ci": [b_low, b_high],
            "confidence_hist": {
                f"{edges[i]:.1f}-{edges[i + 1]:.1f}": int(hist[i]) for i in range(len(hist))
            },
            "mean_confidence": float(confidence.mean()) if len(confidence) else None,
            "calibration": calibration,
        }
    return out


def examples(replies: pd.DataFrame, per_scenario: int = 2) -> list[dict]:
    """A few sampled replies per scenario for every arm (first prompts, first sample)."""
    sampled = replies[(replies["decoding"] == "sampled") & (replies["sample"] == 0)]
    out = []
    for scenario in SCENARIOS:
        rows = sampled[sampled["scenario"] == scenario]
        for pid in sorted(rows["prompt_id"].unique())[:per_scenario]:
            for arm in [a for a in ARMS if a in set(rows["arm"])]:
                row = rows[(rows["prompt_id"] == pid) & (rows["arm"] == arm)].iloc[0]
                out.append(
                    {"scenario": scenario, "prompt_id": pid, "arm": arm, "reply": row["reply"]}
                )
    return out


def build_results(
    run: dict, outcomes: list[dict], profile: str, tests: dict | None = None, n_boot: int = 2000
) -> dict:
    """Everything the report shows, JSON-safe."""
    replies = run["replies"]
    arms = {}
    for arm, s in run["arms"].items():
        arms[arm] = {k: v for k, v in s.items() if k not in ("config", "path")}
    return {
        "profile": profile,
        "provenance": run["provenance"],
        "data": run["data"],
        "n_prompts": {
            k: int(v) for k, v in pd.DataFrame(run["prompts"]).groupby("prompt_set").size().items()
        },
        "arms": arms,
        "labeler": labeler_quality(run["labels"]),
        "evaluator": run.get("evaluator"),
        "metrics": metric_table(replies, n_boot),
        "claims": outcomes,
        "tests": tests or {},
        "stability": run.get("stability"),
        "timings": run["timings"],
        "built_seconds": run.get("built_seconds", {}),
        "examples": examples(replies),
        "n_replies": len(replies),
        "n_empty_replies": int((replies["reply"].str.strip() == "").sum()),
    }


def write_findings(out_dir: Path, results: dict, replies: pd.DataFrame) -> None:
    """results.json, responses.jsonl and REPORT.md, each written atomically."""
    out_dir = Path(out_dir)
    # The report is rendered from what results.json holds, in its order, so that
    # `python -m study report` reproduces it byte for byte.
    text = json.dumps(results, indent=2, ensure_ascii=False, default=_json_default) + "\n"
    write_text(out_dir / "results.json", text)
    results = json.loads(text)
    lines = [
        json.dumps(r, ensure_ascii=False, sort_keys=True, default=_json_default)
        for r in replies.to_dict(orient="records")
    ]
    write_text(out_dir / "responses.jsonl", "\n".join(lines) + "\n")
    write_text(out_dir / "REPORT.md", render(results))
    from study.figures import draw_all

    draw_all(results, out_dir / "figures")


def _json_default(x):
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, np.bool_):
        return bool(x)
    raise TypeError(type(x))


# -- rendering --------------------------------------------------------------------------------


def escape(text, limit: int = 300) -> str:
    """Make any text safe inside a markdown table cell: one line, no markup that renders."""
    text = "" if text is None else str(text)
    text = re.sub(r"\s+", " ", text).strip()
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = text.replace("|", "\\|").replace("`", "\\`")
    for ch in "*_[]#~":
        text = text.replace(ch, "\\" + ch)
    return text


def _f(x, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _claim_rows(claims: list[dict]) -> list[list[str]]:
    rows = []
    for c in claims:
        ci = f"[{_f(c['ci_low'])}, {_f(c['ci_high'])}]"
        rows.append(
            [
                f"`{c['claim']}`",
                escape(c["source"]),
                c["protocol"],
                " vs ".join(c["arms"]),
                f"{_f(c['effect'])} {ci} ({int(round(c['ci_level'] * 100))} %)",
                f"{c['n_prompts']} × {c['n_samples']}",
                escape(c["test"]),
                _f(c["p_value"], 4),
                _f(c["p_adjusted"], 4),
                _f(c["mde"]),
                f"**{c['verdict']}**",
            ]
        )
    return rows


def render(results: dict) -> str:
    """The report, from ``results.json`` content only (never retrains or regenerates)."""
    r = results
    prov = r["provenance"]
    cfg = prov["config"]
    out = [
        f"# Findings: AI feedback vs human feedback ({r['profile']} profile)",
        "",
        "_Generated from `results.json` by `study.findings.render`; do not edit by hand._",
        "",
        "## Summary",
        "",
        "**Question.** Can AI feedback replace human feedback when aligning a small language "
        "model? Two protocols answer it side by side against the untrained `base` model:",
        "",
        '- **seed protocol** (the notebook\'s): `sft-rejected` (its "RLAIF": SFT on the rejected '
        'replies) vs `sft-chosen` (its "RLHF": SFT on the chosen replies);',
        "- **preference protocol**: `dpo-ai` (DPO on labels from a same-size AI labeler) vs "
        "`dpo-human` (DPO on the same pairs with the human labels).",
        "",
        f"Base model `{cfg['model']['base']}`; {r['data']['n_train']} training pairs from "
        f"`{escape(r['data']['source'])}`; {r['n_replies']} scored replies. "
        "Each verdict below was decided by a test fixed in code before the run.",
        "",
        _table(
            [
                "claim",
                "source",
                "protocol",
                "arms",
                "effect [CI]",
                "n prompts × samples",
                "test",
                "p",
                "p (Holm)",
                "MDE",
                "verdict",
            ],
            _claim_rows(r["claims"]),
        ),
        "",
        "Verdicts: **supported** — the pre-declared test rejects at α after Holm adjustment "
        "within the protocol; **underpowered** — not supported and the minimum detectable effect "
        "(power 0.8) exceeds the effect of interest; **not supported** — otherwise. Degenerate "
        "cases (no variance) are decided by the exact observed difference.",
        "",
    ]
    out += _key_findings(r)
    out += _figures_section()
    out += _data_section(r)
    out += _arms_section(r)
    out += _labeler_section(r)
    out += _evaluator_section(r)
    out += _metrics_section(r)
    out += _stability_section(r)
    out += _deviations_section()
    out += _limitations_section(r)
    out += _provenance_section(r)
    out += _timing_section(r)
    out += _examples_section(r)
    return "\n".join(out).rstrip() + "\n"


def _key_findings(r: dict) -> list[str]:
    out = ["### Three numbers that matter", ""]
    by_case = {c["case"]: c for c in r["claims"]}
    picks = [
        ("harmless-parity[preference]", "Harmless-rate difference, dpo-ai − dpo-human"),
        ("harmless-parity[seed]", "Harmless-rate difference, sft-rejected − sft-chosen"),
        ("labeler-agreement[preference]", "AI labeler agreement with humans, held-out"),
    ]
    for i, (case, label) in enumerate(picks, 1):
        c = by_case.get(case)
        if c:
            out.append(
                f"{i}. {label}: {_f(c['effect'])} (95 % CI or TOST 90 % CI "
                f"[{_f(c['ci_low'])}, {_f(c['ci_high'])}], n = {c['n_prompts']} × "
                f"{c['n_samples']}) — {c['verdict']}."
            )
    return out + [""]


def _figures_section() -> list[str]:
    from study.figures import FIGURES

    return (
        ["### Figures", ""]
        + [f"- [{title}](figures/{name})" for name, (_, title) in FIGURES.items()]
        + [""]
    )


def _data_section(r: dict) -> list[str]:
    d = r["data"]
    dropped = ", ".join(f"{k} {v}" for k, v in d["dropped"].items())
    return [
        "## Data",
        "",
        f"- Source `{escape(d['source'])}`, fingerprint `{d['fingerprint']}`.",
        f"- Rows read {d['n_raw']}; kept after cleaning {d['n_clean']}; dropped: {dropped}.",
        f"- Training pool {d['n_train_pool']}, training sample {d['n_train']} "
        f"(kinds {d['train_kinds']}); evaluation pairs {d['n_eval']} (kinds {d['eval_kinds']}), "
        f"{d['n_eval_dropped_overlap']} evaluation rows dropped because their prompt is a "
        "training prompt.",
        f"- Evaluation prompts per set: {r['n_prompts']}.",
        "",
    ]


def _arms_section(r: dict) -> list[str]:
    rows = []
    for arm, s in r["arms"].items():
        rows.append(
            [
                f"`{arm}`",
                str(s.get("n_rows", "–")),
                str(s.get("n_steps", 0)),
                _f(s.get("final_loss")),
                str(s.get("tokens_per_second", "–")),
                _f(s.get("seconds"), 1),
                str(s.get("n_flipped", "–")),
                "yes" if s.get("is_cached") else "no",
            ]
        )
    return [
        "## Arms",
        "",
        "Every trained arm starts from its own fresh copy of the base model and trains on the "
        "same pairs with the same hyper-parameters; the two arms of a protocol see the same "
        "batches in the same order (length-grouped batches follow each pair's longer reply).",
        "",
        _table(
            [
                "arm",
                "rows",
                "steps",
                "final loss",
                "tokens/s",
                "seconds",
                "labels flipped by AI",
                "reused from store",
            ],
            rows,
        ),
        "",
    ]


def _labeler_section(r: dict) -> list[str]:
    q = r.get("labeler")
    if not q:
        return []
    rows = []
    for name, s in q.items():
        rows.append(
            [
                name,
                str(s["n"]),
                f"{_f(s['agreement'])} [{_f(s['agreement_ci'][0])}, {_f(s['agreement_ci'][1])}]",
                f"{_f(s['position_bias'])} "
                f"[{_f(s['position_bias_ci'][0])}, {_f(s['position_bias_ci'][1])}]",
                _f(s["mean_confidence"]),
                escape(json.dumps(s["confidence_hist"])),
                escape(
                    ", ".join(
                        f"{b}: {_f(c['agreement'], 2)} (n={c['n']})"
                        for b, c in s.get("calibration", {}).items()
                    )
                ),
            ]
        )
    return [
        "## AI labeler",
        "",
        "The labeler is the base model itself unless configured otherwise. It reads a "
        "pairwise judging prompt; its preference is P(A) averaged over both orders. Position "
        "bias: share of pairs where the same slot wins in both orders (Lee et al. 2023 report "
        "56 % for a same-size labeler, and 62.7 % agreement). 95 % Wilson intervals.",
        "",
        _table(
            [
                "pairs",
                "n",
                "agreement [95 % CI]",
                "position bias [95 % CI]",
                "mean confidence",
                "confidence histogram, abs(2p − 1)",
                "agreement by confidence",
            ],
            rows,
        ),
        "",
    ]


def _evaluator_section(r: dict) -> list[str]:
    e = r.get("evaluator")
    if not e:
        return []
    acc = e["heldout"]
    return [
        "## Independent evaluator",
        "",
        f"A reward model (the base model with a scalar head, LoRA) trained on {e['n_pairs']} "
        "human-labelled pairs whose opening questions appear neither in the training pairs nor "
        f"among the evaluation prompts ({e['n_steps']} steps, final loss "
        f"{_f(e['final_loss'])}). Held-out accuracy: {_f(acc['accuracy'])} "
        f"[{_f(acc['ci'][0])}, {_f(acc['ci'][1])}] (95 % Wilson, n = {acc['n']} pairs). "
        "It judges `self-improvement`. Limits: it is no larger than the policy, it learned "
        "from few pairs, and its accuracy bounds how much its verdicts can be trusted.",
        "",
    ]


def _metrics_section(r: dict) -> list[str]:
    out = [
        "## Metrics per arm",
        "",
        "Mean over prompts of the per-prompt mean of k samples, with a 95 % bootstrap CI that "
        "resamples prompts.",
        "",
    ]
    groups = list(dict.fromkeys(m["group"] for m in r["metrics"]))
    for group in groups:
        rows = [m for m in r["metrics"] if m["group"] == group]
        arms = list(dict.fromkeys(m["arm"] for m in rows))
        n = rows[0]
        out += [f"### {group} ({n['n_prompts']} prompts × {n['n_samples']} samples)", ""]
        table = []
        for metric, label in METRICS:
            cells = []
            for arm in arms:
                m = next((x for x in rows if x["arm"] == arm and x["metric"] == metric), None)
                cells.append(
                    "–"
                    if m is None
                    else f"{_f(m['mean'], 2)} [{_f(m['ci_low'], 2)}, {_f(m['ci_high'], 2)}]"
                )
            if set(cells) != {"–"}:
                table.append([label] + cells)
        out += [_table(["metric"] + [f"`{a}`" for a in arms], table), ""]
    return out


def _stability_section(r: dict) -> list[str]:
    st = r.get("stability")
    if not st:
        return [
            "## Stability across seeds",
            "",
            "This run used one training seed; rerun with `--seeds 2` to see which verdicts "
            "survive a second seed.",
            "",
        ]
    rows = [
        [escape(c), ", ".join(v["verdicts"]), "yes" if v["is_agreed"] else "**no**"]
        for c, v in st["cases"].items()
    ]
    n_agree = sum(v["is_agreed"] for v in st["cases"].values())
    return [
        "## Stability across seeds",
        "",
        f"Training and sampling repeated with {st['n_seeds']} seeds (same data); "
        f"{n_agree} of {len(rows)} verdicts agree.",
        "",
        _table(["claim", "verdict per seed", "agree"], rows),
        "",
    ]


def _deviations_section() -> list[str]:
    return [
        "## Deviations from the notebook",
        "",
        _table(["notebook", "this study"], [[escape(a), b] for a, b in DEVIATIONS]),
        "",
    ]


def _limitations_section(r: dict) -> list[str]:
    cfg = r["provenance"]["config"]
    return [
        "## Limitations",
        "",
        "- Small models and a CPU budget: arms are trained for "
        f"{cfg['train']['epochs']:g} epoch(s) on {r['data']['n_train']} pairs"
        + (
            f" with LoRA (r = {cfg['train']['lora_r']}) on the top "
            f"{cfg['train']['lora_top_layers']} blocks"
            if cfg["train"]["use_lora"]
            else ""
        )
        + "; effects of alignment are expected to be small at this scale.",
        "- The harmlessness scores are proxies: keyword rules and a profanity classifier see "
        "offensive words, not harmful advice.",
        "- `self-improvement` is judged by a small reward model, not by humans.",
        "- Training and evaluation data are HH-RLHF test conversations, split by opening "
        "question; HH-RLHF train rows are not available offline.",
        "",
    ]


def _provenance_section(r: dict) -> list[str]:
    p = r["provenance"]
    return [
        "## Provenance",
        "",
        f"- Commit `{p['git_commit']}`{' (dirty working tree)' if p['is_dirty'] else ''}; "
        f"config hash `{p['config_hash']}`.",
        f"- Base model `{p['base_model']}`, weights hash `{p['base_weights_hash']}`; "
        f"device {p['device']}, precision {p['precision']}.",
        f"- Python {p['python']}; {escape(p['machine'])}.",
        "- Packages: " + ", ".join(f"{k} {v}" for k, v in p["packages"].items()) + ".",
        "",
        "<details><summary>Resolved configuration</summary>",
        "",
        "```json",
        json.dumps(p["config"], indent=1, sort_keys=True),
        "```",
        "",
        "</details>",
        "",
    ]


def _seconds(value) -> str:
    return "–" if value is None else f"{value:.1f}"


def _timing_section(r: dict) -> list[str]:
    built = r.get("built_seconds") or {}
    stages = {k: v for k, v in r["timings"].items() if k != "total"}
    # a stage this run did not enter (its artefact reused) still shows what it cost
    names = [*stages, *(k for k in built if k not in stages)]
    rows = [
        [escape(k), _seconds(stages.get(k)), _seconds(built.get(k)) if k in built else "–"]
        for k in names
    ]
    known = [built.get(k) for k in names]
    total_built = None if None in known else sum(known)
    rows.append(["sum of stages", f"{sum(stages.values()):.1f}", _seconds(total_built)])
    if "total" in r["timings"]:
        rows.append(["total (whole run)", f"{r['timings']['total']:.1f}", "–"])
    out = [
        "## Timings",
        "",
        "Wall seconds per stage: in this run, and what the stage's artefacts took when they were "
        "built (in this run, or in the earlier run that stored them; – where no record was "
        "kept). A stage reused from the store takes almost no time in this run; the second "
        "column's sum is what a run from an empty store costs on the machines that built it.",
        "",
        _table(["stage", "this run", "when built"], rows),
        "",
    ]
    tests = r.get("tests") or {}
    if tests:
        trows = [[escape(k), v["outcome"], f"{v['seconds']:.2f}"] for k, v in tests.items()]
        out += ["Claim checks (pytest):", "", _table(["test", "outcome", "seconds"], trows), ""]
    return out


def _examples_section(r: dict) -> list[str]:
    rows = [
        [e["scenario"], e["prompt_id"], f"`{e['arm']}`", escape(e["reply"])] for e in r["examples"]
    ]
    return [
        "## Example replies",
        "",
        "> **Content warning.** Replies come from small models trained on data that contain "
        "offensive material by design; some replies may be offensive.",
        "",
        _table(["scenario", "prompt", "arm", "reply (first sample)"], rows),
        "",
    ]
