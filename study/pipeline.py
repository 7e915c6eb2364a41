"""The study from data to scored replies: prepare, label, train, generate, score.

Each stage reads and writes the store, keyed by the configuration that determines it, so a rerun
with an unchanged configuration reuses everything and a changed field recomputes only what
depends on it.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from study import data as data_mod
from study import generation, labeler, models, prompts, scoring
from study.config import StudyConfig, config_hash, did_you_mean, to_dict
from study.evaluator import accuracy, load_reward_model, rewards, train_reward_model
from study.store import build_dir, cached_json, read_json, write_json
from study.training import (
    SFT_REPLY,
    frozen_states_path,
    load_arm,
    per_device_batch,
    reference_logps,
    train_dpo,
    train_sft,
    training_precision,
    world_size,
)

log = logging.getLogger(__name__)


class Built:
    """Set ``is_new`` inside a timed stage when the stage built its artefact in this run."""

    is_new = False


def seconds_record(artefact: Path) -> Path:
    """The hidden file beside an artefact that keeps how many seconds building it took."""
    return artefact.parent / f".{artefact.name}.seconds"


@dataclass
class Timer:
    """Wall time per stage in this run, and what each stage's artefacts cost to build.

    ``built`` holds, per stage, the seconds its artefacts took when they were built: in this run,
    or in the run that stored them (read from the record beside each artefact), so a rerun that
    reuses the store still reports what a run from an empty store costs. A stage without a
    stored artefact is built in every run. None: a reused artefact has no record.
    """

    stages: dict[str, float] = field(default_factory=dict)
    built: dict[str, float | None] = field(default_factory=dict)
    counted: set[tuple[str, str]] = field(default_factory=set)  # each artefact counts once

    @contextmanager
    def stage(self, name: str, artefact: Path | None = None):
        mark = Built()
        started = time.perf_counter()
        try:
            yield mark
        finally:
            took = time.perf_counter() - started
            self.stages[name] = round(self.stages.get(name, 0.0) + took, 2)
        # Only a stage that finished gets here.
        if artefact is None:
            self._add(name, took)
        elif mark.is_new:
            if is_main_process():
                write_json(seconds_record(artefact), {"seconds": round(took, 2)})
            self.counted.add((name, str(artefact)))
            self._add(name, took)
        else:
            self.reused(name, artefact)

    def reused(self, name: str, artefact: Path) -> None:
        """Count what a stored artefact cost to build, once per run, without running its stage."""
        if (name, str(artefact)) in self.counted:
            return
        self.counted.add((name, str(artefact)))
        record = seconds_record(artefact)
        self._add(name, read_json(record)["seconds"] if record.exists() else None)

    def _add(self, name: str, cost: float | None) -> None:
        before = self.built.get(name, 0.0)
        self.built[name] = None if before is None or cost is None else round(before + cost, 2)


@dataclass
class Context:
    """What every stage needs: config, store, base model, device and precision."""

    cfg: StudyConfig
    store: Path
    base: Path
    device: str
    precision: str
    timer: Timer
    base_hash: str = ""

    def autocast(self):
        return models.autocast(self.device, self.precision)

    def for_inference(self, model):
        """Frozen, on the device, linear weights stored in the autocast dtype (same numbers)."""
        model.requires_grad_(False)
        models.cast_frozen_linears(model, self.precision)
        return model.to(self.device)


# -- keys ---------------------------------------------------------------------------------------

# Bumped when a stage's code changes what it produces, so stored artefacts of the old code are
# not reused.
STAGE_VERSIONS = {"label": 3, "train": 5, "reference": 2, "generate": 4, "evaluator": 2}


# Settings that change how a run proceeds but not what it produces.
OPERATIONAL = {"checkpoint_steps"}


def _train_key(cfg: StudyConfig) -> dict:
    return {k: v for k, v in to_dict(cfg.train).items() if k not in OPERATIONAL}


def _data_key(cfg: StudyConfig, fingerprint: str) -> dict:
    return {"data": to_dict(cfg.data), "fingerprint": fingerprint}


def arm_key(ctx: Context, arm: str, fingerprint: str, base_hash: str) -> str:
    """Hash of exactly what determines an arm's weights."""
    parts = {
        "version": STAGE_VERSIONS["train"],
        "arm": arm,
        "base": ctx.cfg.model.base,
        "base_weights": base_hash,
        **_data_key(ctx.cfg, fingerprint),
        "train": _train_key(ctx.cfg),
        "precision": training_precision(ctx.cfg),  # bf16 and fp32 training give other weights
    }
    if arm.startswith("dpo"):
        parts["dpo"] = to_dict(ctx.cfg.dpo)
    if arm == "dpo-ai":  # its labels: the labeler's settings and the code that applies them
        parts["labeler"] = to_dict(ctx.cfg.labeler)
        parts["label_version"] = STAGE_VERSIONS["label"]
    return config_hash(parts)


# -- stages ---------------------------------------------------------------------------------


def heldout_pairs(ctx: Context, data: data_mod.StudyData) -> pd.DataFrame:
    """Evaluation pairs on which the labeler's and the evaluator's accuracy are measured."""
    n_held = min(ctx.cfg.labeler.heldout_pairs, len(data.eval))
    return data.eval.sample(n=n_held, random_state=ctx.cfg.data.sample_seed)


def label_stage(ctx: Context, data: data_mod.StudyData, base_hash: str) -> dict:
    """AI labels for the training pairs and a held-out set, cached per labeler configuration."""
    cfg = ctx.cfg
    held = heldout_pairs(ctx, data)
    key = config_hash(
        {
            "version": STAGE_VERSIONS["label"],
            "labeler": to_dict(cfg.labeler),
            "labeler_model": cfg.labeler.model or cfg.model.base,
            "base_weights": base_hash,
            **_data_key(cfg, data.summary["fingerprint"]),
        }
    )
    path = ctx.store / "labels" / f"{key}.json"

    def compute():
        spec = cfg.labeler.model
        judge_path = models.resolve_model(spec, ctx.store) if spec else ctx.base
        judge = ctx.for_inference(models.load_model(judge_path))
        tok = models.load_tokenizer(judge_path)
        out = {}
        for name, frame in (("train", data.train), ("heldout", held)):
            labels = labeler.label_pairs(judge, tok, frame, cfg.labeler, ctx.autocast())
            out[name] = labels.assign(
                is_position_bias=labels["is_position_bias"].astype(bool)
            ).to_dict(orient="list")
        return out

    with ctx.timer.stage("label", path) as stage:
        labels, stage.is_new = cached_json(path, compute)
    return labels


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _process_group(device: str):
    """accelerate's view of the launched processes, checked against the launcher's WORLD_SIZE."""
    from accelerate import PartialState

    # Without cpu=True the shared state ignores the launcher's WORLD_SIZE on a CPU-only machine
    # and every process would believe it is the main one.
    state = PartialState(cpu=device == "cpu")
    if state.num_processes != world_size():
        raise RuntimeError(
            f"WORLD_SIZE={world_size()} but the process group has {state.num_processes} "
            "processes; launch with accelerate launch or torchrun."
        )
    return state


def _build_distributed(final: Path, build, device: str) -> tuple[Path, bool]:
    """Every process trains; the main process alone writes and renames the artefact."""
    state = _process_group(device)
    if final.exists():
        return final, False
    tmp = final.parent / f".{final.name}.partial-ddp"
    if state.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    state.wait_for_everyone()
    build(tmp)
    state.wait_for_everyone()
    if state.is_main_process:
        os.rename(tmp, final)
    state.wait_for_everyone()
    return final, True


def reference_stage(ctx: Context, data: data_mod.StudyData) -> tuple[dict, Path | None]:
    """The DPO reference log-probabilities of the training pairs, computed once for both arms.

    Also returns the file of the frozen blocks' states the pass kept (None: not kept).
    """
    cfg = ctx.cfg
    path = reference_path(ctx, data)
    key = path.stem
    workdir = ctx.store / "reference" / f".{key}.work"
    states = frozen_states_path(path.parent, key, cfg)

    def compute():
        try:
            # The states are written before the JSON that marks the stage done; several
            # processes would write them at once, so only a single process keeps them.
            keep = states if world_size() == 1 else None
            return reference_logps(ctx.base, data.train, cfg, workdir, keep)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    with ctx.timer.stage("reference", path) as stage:
        if world_size() > 1:
            stage.is_new = not path.exists()
            return _json_distributed(path, compute, ctx.device), states
        reference, stage.is_new = cached_json(path, compute)
    return reference, states


def reference_path(ctx: Context, data: data_mod.StudyData) -> Path:
    """Where the reference pass of this configuration is stored."""
    cfg = ctx.cfg
    key = config_hash(
        {
            "version": STAGE_VERSIONS["reference"],
            "base_weights": ctx.base_hash,
            "model": to_dict(cfg.model),
            **_data_key(cfg, data.summary["fingerprint"]),
            # what decides the tokens and the batches of the reference pass
            "train": {k: getattr(cfg.train, k) for k in ("max_length", "max_reply_tokens")},
            "batch": per_device_batch(cfg),
        }
    )
    return ctx.store / "reference" / f"{key}.json"


def _json_distributed(path: Path, compute, device: str):
    """Every process computes (collectives need all of them); the main process writes."""
    state = _process_group(device)
    if path.exists():
        return read_json(path)
    value = compute()
    if state.is_main_process:
        write_json(path, value)
    state.wait_for_everyone()
    return value


def train_stage(ctx: Context, arm: str, data: data_mod.StudyData, key: str, labels) -> dict:
    """Train one arm into the store unless an arm with the same key is already there."""
    final = ctx.store / "arms" / f"{arm}-{key}"
    # Checkpoints live under a name fixed by the key, so a rerun finds an interrupted run's.
    checkpoints = ctx.store / "checkpoints" / f"{arm}-{key}"
    # The shared reference pass is timed as its own stage, and only run when an arm needs it.
    reference, states = (None, None)
    if arm not in SFT_REPLY and not final.exists():
        reference, states = reference_stage(ctx, data)
    elif arm not in SFT_REPLY:
        ctx.timer.reused("reference", reference_path(ctx, data))

    def build(tmp: Path):
        log.info("training %s into %s", arm, final.name)
        if arm in SFT_REPLY:
            summary = train_sft(arm, ctx.base, data.train, ctx.cfg, tmp, checkpoints)
        else:
            prefer = None
            if arm == "dpo-ai":
                prefer = pd.Series(labels["train"]["pref_chosen"]) > 0.5
            summary = train_dpo(
                arm, ctx.base, data.train, ctx.cfg, tmp, prefer, checkpoints, reference, states
            )
        summary.update(arm=arm, key=key, config=to_dict(ctx.cfg), n_processes=world_size())
        if is_main_process():
            write_json(tmp / "study_arm.json", summary)
            shutil.rmtree(tmp / "trainer", ignore_errors=True)

    with ctx.timer.stage(f"train/{arm}", final) as stage:
        if world_size() > 1:
            path, is_new = _build_distributed(final, build, ctx.device)
        else:
            path, is_new = build_dir(final, build)
        stage.is_new = is_new
    if is_main_process():
        shutil.rmtree(checkpoints, ignore_errors=True)
    summary = read_json(path / "study_arm.json")
    summary["is_cached"] = not is_new
    summary["path"] = str(path)
    return summary


def evaluator_stage(ctx: Context, data: data_mod.StudyData, base_hash: str) -> dict:
    """Train the independent reward model and measure its held-out accuracy (both cached)."""
    cfg = ctx.cfg
    key = config_hash(
        {
            "version": STAGE_VERSIONS["evaluator"],
            "evaluator": to_dict(cfg.evaluator),
            "train": _train_key(cfg),
            "precision": training_precision(cfg),
            "base_weights": base_hash,
            **_data_key(cfg, data.summary["fingerprint"]),
        }
    )
    n = min(cfg.evaluator.train_pairs, len(data.evaluator))
    pairs = data.evaluator.sample(n=n, random_state=cfg.data.sample_seed)
    final = ctx.store / "evaluator" / f"reward-{key}"

    def build(tmp: Path):
        write_json(tmp / "study_evaluator.json", train_reward_model(ctx.base, pairs, cfg, tmp))
        shutil.rmtree(tmp / "trainer", ignore_errors=True)

    with ctx.timer.stage("evaluator/train", final) as stage:
        path, stage.is_new = build_dir(final, build)

    def measure():
        model, tok = load_reward_model(path, ctx.base)
        model = ctx.for_inference(model)
        return accuracy(model, tok, heldout_pairs(ctx, data), cfg, ctx.autocast())

    scored = path.parent / f"reward-{key}-accuracy.json"
    with ctx.timer.stage("evaluator/accuracy", scored) as stage:
        acc, stage.is_new = cached_json(scored, measure)
    summary = read_json(path / "study_evaluator.json")
    return {**summary, "key": key, "path": str(path), "heldout": acc}


def reward_stage(ctx: Context, evaluator: dict, replies: pd.DataFrame, plist) -> pd.Series:
    """Reward of every sampled q1/held-out reply under the evaluator, cached per input."""
    texts = {p.id: p.text for p in plist}
    mask = (replies["decoding"] == "sampled") & replies["prompt_set"].isin(["q1", "heldout"])
    part = replies[mask]
    key = config_hash(
        {
            "evaluator": evaluator["key"],
            "rows": [part["prompt_id"].tolist(), part["reply"].tolist()],
        }
    )

    def compute():
        model, tok = load_reward_model(Path(evaluator["path"]), ctx.base)
        model = ctx.for_inference(model)
        prompts_ = [texts[i] for i in part["prompt_id"]]
        return rewards(
            model, tok, prompts_, part["reply"].tolist(), ctx.cfg, ctx.autocast()
        ).tolist()

    path = ctx.store / "evaluator" / f"rewards-{key}.json"
    with ctx.timer.stage("evaluator/score", path) as stage:
        values, stage.is_new = cached_json(path, compute)
    out = pd.Series(float("nan"), index=replies.index)
    out[mask] = values
    return out


def eval_prompts(ctx: Context, data: data_mod.StudyData, tokenizer) -> list[prompts.Prompt]:
    """Every evaluation prompt of the configured sets."""
    cfg = ctx.cfg.eval
    out: list[prompts.Prompt] = []
    if "q1" in cfg.prompt_sets:
        out += prompts.q1_prompts()
    if "scenarios" in cfg.prompt_sets:
        out += prompts.scenario_prompts(cfg.scenarios_per_scenario)
    if "heldout" in cfg.prompt_sets:
        lengths = data.eval["prompt"].map(
            lambda p: len(tokenizer(p, add_special_tokens=False)["input_ids"])
        )
        fits = data.eval[lengths <= cfg.heldout_max_prompt_tokens]
        out += prompts.heldout_prompts(fits, cfg.n_heldout, ctx.cfg.seed)
    return out


def decoding_name(p: prompts.Prompt) -> str:
    """Scenario prompts use the notebook's Q2 settings, every other set its Q1 settings."""
    return "q2" if p.prompt_set == "scenarios" else "q1"


def generate_stage(ctx: Context, arm: str, key: str, plist: list[prompts.Prompt]) -> pd.DataFrame:
    """Sampled (k per prompt) and greedy replies of one arm, scored, cached per configuration."""
    cfg = ctx.cfg
    gen_key = config_hash(
        {
            "version": STAGE_VERSIONS["generate"],
            "arm_key": key,
            "eval": to_dict(cfg.eval),
            "seed": cfg.seed,
            "prompts": [(p.id, p.text) for p in plist],
        }
    )
    path = ctx.store / "generations" / f"{arm}-{gen_key}.json"

    def compute():
        if arm == "base":
            model = models.load_model(ctx.base)
        else:
            model = load_arm(ctx.store / "arms" / f"{arm}-{key}", ctx.base)
        model = ctx.for_inference(model)
        tok = models.load_tokenizer(ctx.base)
        rows = []
        for name in ("q1", "q2"):
            chosen = [p for p in plist if decoding_name(p) == name]
            if not chosen:
                continue
            decoding = getattr(cfg.eval, name)
            # A prompt's greedy reply shares its batch, and its prompt's cache, with its samples.
            reqs = []
            for p in chosen:
                reqs += [
                    generation.Request(
                        p.id, p.text, s, generation.sample_seed(cfg.seed, arm, p.id, s)
                    )
                    for s in range(cfg.eval.samples_per_prompt)
                ]
                if p.prompt_set in cfg.eval.greedy_sets:
                    reqs.append(generation.Request(p.id, p.text, 0, 0, greedy=True))
            got = generation.generate(
                model,
                tok,
                reqs,
                decoding,
                batch_size=cfg.eval.batch_size,
                autocast=ctx.autocast(),
                desc=f"{arm} {name}",
            )
            rows += [
                {
                    "prompt_id": r.prompt_id,
                    "sample": r.sample,
                    "decoding": "greedy" if r.greedy else "sampled",
                    **g,
                }
                for r, g in zip(reqs, got)
            ]
        return rows

    with ctx.timer.stage(f"generate/{arm}", path) as stage:
        rows, stage.is_new = cached_json(path, compute)
    frame = pd.DataFrame(rows)
    with ctx.timer.stage("score"):
        scores = scoring.score_replies(frame["reply"].tolist())
    frame = pd.concat([frame.reset_index(drop=True), scores], axis=1)
    meta = pd.DataFrame(
        [(p.id, p.prompt_set, p.scenario, p.severity) for p in plist],
        columns=["prompt_id", "prompt_set", "scenario", "severity"],
    )
    return frame.merge(meta, on="prompt_id", how="left").assign(arm=arm)


# -- the whole study ---------------------------------------------------------------------------


def provenance(ctx: Context, base_hash: str) -> dict:
    """Where the results came from: code version, packages, hardware."""
    import importlib.metadata as md

    def git(*args):
        try:
            return subprocess.run(
                ["git", *args], capture_output=True, text=True, timeout=10, check=False
            ).stdout.strip()
        except OSError:
            return ""

    packages = {}
    for name in (
        "torch",
        "transformers",
        "trl",
        "peft",
        "datasets",
        "accelerate",
        "scipy",
        "statsmodels",
        "vaderSentiment",
        "textblob",
        "alt-profanity-check",
    ):
        try:
            packages[name] = md.version(name)
        except md.PackageNotFoundError:
            packages[name] = None
    return {
        "git_commit": git("rev-parse", "HEAD") or None,
        "is_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "config_hash": config_hash(ctx.cfg),
        "config": to_dict(ctx.cfg),
        "base_model": ctx.cfg.model.base,
        "base_weights_hash": base_hash,
        "device": ctx.device,
        "precision": ctx.precision,
        "packages": packages,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
        f"{torch.get_num_threads()} torch threads",
    }


STAGES = ("label", "train", "evaluate")


def seed_variant(cfg: StudyConfig, index: int) -> StudyConfig:
    """The configuration of repeat ``index``: training and sampling seeds shifted, same data."""
    import dataclasses

    if index == 0:
        return cfg
    return dataclasses.replace(
        cfg,
        seed=cfg.seed + index,
        train=dataclasses.replace(cfg.train, seed=cfg.train.seed + index),
    )


def stability(outcomes_per_seed: list[list[dict]]) -> dict:
    """Each claim's verdict under every seed, and whether they agree."""
    cases = {}
    for outcomes in outcomes_per_seed:
        for o in outcomes:
            cases.setdefault(o["case"], []).append(o["verdict"])
    return {
        "n_seeds": len(outcomes_per_seed),
        "cases": {c: {"verdicts": v, "is_agreed": len(set(v)) == 1} for c, v in cases.items()},
    }


def check_arms(cfg: StudyConfig, arms) -> None:
    """Raise ValueError unless every arm asked for is one of the configuration's arms."""
    for arm in arms or ():
        if arm not in cfg.arms:
            raise ValueError(
                f"unknown arm {arm!r} (--arm).{did_you_mean(arm, cfg.arms)} "
                f"Arms of this configuration: {', '.join(cfg.arms)}."
            )


def run_study(
    cfg: StudyConfig, store: Path | None = None, until: str = "evaluate", arms=None
) -> dict:
    """Run (or reuse) the stages up to ``until`` and return the raw material of the findings.

    Args:
        cfg: the resolved configuration.
        store: artefact store (default ``STUDY_STORE`` or ``.study-store``).
        until: last stage to run: ``label``, ``train`` or ``evaluate``.
        arms: arms to train (default: all of ``cfg.arms``); only with ``until="train"``.

    Returns a dict with ``replies`` (a DataFrame of every scored reply), ``labels``, ``arms``
    (training summaries), ``evaluator``, ``data`` (cleaning counts), ``provenance`` and
    ``timings``; stages not run are absent.
    """
    if until not in STAGES:
        raise ValueError(f"until must be one of {', '.join(STAGES)}; got {until!r}.")
    check_arms(cfg, arms)
    timer = Timer()
    store = Path(store) if store else models.store_root()
    device = models.choose_device(cfg.model.device)
    precision = models.choose_precision(device, cfg.model.precision)
    with timer.stage("prepare"):
        data = data_mod.prepare(cfg.data)
        base = models.resolve_model(cfg.model.base, store)
        base_hash = models.weights_hash(base)
    ctx = Context(cfg, store, base, device, precision, timer, base_hash)
    out = {"data": data.summary, "timings": timer.stages, "built_seconds": timer.built}

    labels = None
    if "dpo-ai" in cfg.arms:
        labels = label_stage(ctx, data, base_hash)
    out["labels"] = labels
    if until == "label":
        return out

    keys = {arm: arm_key(ctx, arm, data.summary["fingerprint"], base_hash) for arm in cfg.arms}
    trained = {"base": {"arm": "base", "key": keys["base"], "n_steps": 0}}
    for arm in arms or cfg.arms:
        if arm != "base":
            trained[arm] = train_stage(ctx, arm, data, keys[arm], labels)
    out["arms"] = trained
    if until == "train":
        return out

    tok = models.load_tokenizer(base)
    plist = eval_prompts(ctx, data, tok)
    frames = [generate_stage(ctx, arm, keys[arm], plist) for arm in cfg.arms]
    replies = pd.concat(frames, ignore_index=True)
    evaluator = evaluator_stage(ctx, data, base_hash)
    replies["reward"] = reward_stage(ctx, evaluator, replies, plist)
    out.update(
        replies=replies,
        evaluator={k: v for k, v in evaluator.items() if k != "path"},
        prompts=[p.__dict__ for p in plist],
        provenance=provenance(ctx, base_hash),
    )
    return out
