"""The study's configuration: frozen dataclasses whose defaults are the notebook's protocol.

A profile lists only the fields it changes. ``resolve`` applies a profile and user overrides and
validates the result; ``config_hash`` gives a stable fingerprint that keys every stored artefact.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass
from typing import Any

ARMS = ("base", "sft-chosen", "sft-rejected", "dpo-human", "dpo-ai")
TRAINED_ARMS = ARMS[1:]
PROTOCOLS = {
    # protocol: (AI-feedback arm, human-feedback arm), compared side by side against `base`.
    "seed": ("sft-rejected", "sft-chosen"),
    "preference": ("dpo-ai", "dpo-human"),
}


@dataclass(frozen=True)
class DataConfig:
    """Where the preference pairs come from and how the training rows are drawn."""

    source: str = "Dahoas/rm-static"  # notebook: load_dataset("Dahoas/rm-static")
    train_split: str = "train"  # notebook: dataset["train"]
    eval_split: str | None = "test"  # held-out prompts; None or absent split: carve from the pool
    heldout_fraction: float = 0.2  # share of rows kept for evaluation when no eval split exists
    evaluator_fraction: float = 0.15  # share kept for the independent reward model's training
    sample_size: int = 5000  # notebook: sample_size = 5000
    sample_seed: int = 42  # notebook: random_seed = 42 (DataFrame.sample(random_state=42))


@dataclass(frozen=True)
class ModelConfig:
    """The base model every arm starts from."""

    base: str = "EleutherAI/gpt-neo-125m"  # notebook: AutoModelForCausalLM.from_pretrained(...)
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto | fp32 | bf16 | fp16


@dataclass(frozen=True)
class TrainConfig:
    """Shared by every trained arm; only the data (and, for DPO, the label direction) differ."""

    epochs: float = 3.0  # notebook: num_train_epochs=3
    batch_size: int = 4  # notebook: per_device_train_batch_size=4
    learning_rate: float = 5e-5  # Trainer default, which the notebook kept
    weight_decay: float = 0.0  # Trainer default
    warmup_ratio: float = 0.0  # Trainer default
    max_length: int = 128  # notebook: max_length=128 in the tokenizer call
    max_reply_tokens: int = 96  # reply budget inside max_length; the prompt is cut from the left
    seed: int = 42  # Trainer default seed
    use_lora: bool = False  # the notebook fine-tuned all weights
    lora_r: int = 16
    lora_alpha: int = 32
    lora_top_layers: int | None = None  # LoRA on the top N blocks only (None: every block)
    logging_steps: int = 10  # notebook: logging_steps=10
    checkpoint_steps: int = 200  # a killed run resumes from its latest checkpoint (0: none)
    # Batches of similar length (less padding); False: uniformly shuffled, as the notebook.
    group_by_length: bool = False


@dataclass(frozen=True)
class DPOSettings:
    """Direct preference optimisation (Rafailov et al. 2023) for `dpo-human` and `dpo-ai`."""

    beta: float = 0.1  # the DPO paper's value for dialogue
    learning_rate: float = 5e-6  # full fine-tuning; LoRA profiles raise it


@dataclass(frozen=True)
class LabelerConfig:
    """The AI labeler that replaces the human preference in `dpo-ai`."""

    model: str | None = None  # None: the base model itself (same size, same checkpoint)
    max_context_tokens: int = 96  # conversation kept (from the end) in the judging prompt
    max_reply_tokens: int = 48  # each reply's budget in the judging prompt
    batch_size: int = 16
    heldout_pairs: int = 200  # evaluation pairs labelled to measure agreement out of sample


@dataclass(frozen=True)
class EvaluatorConfig:
    """The reward model that judges `self-improvement`, trained on its own human pairs."""

    train_pairs: int = 600
    epochs: float = 1.0
    learning_rate: float = 2e-4
    max_length: int = 128
    max_reply_tokens: int = 64


@dataclass(frozen=True)
class Decoding:
    """Sampling settings for one prompt family."""

    temperature: float = 0.7
    top_k: int = 50
    top_p: float = 0.9
    repetition_penalty: float = 1.5
    max_new_tokens: int = 64


@dataclass(frozen=True)
class EvalConfig:
    """Prompt sets, decoding and sample counts."""

    prompt_sets: tuple[str, ...] = ("q1", "scenarios", "heldout")
    samples_per_prompt: int = 3
    q1: Decoding = Decoding()  # notebook Q1: temperature 0.7, top_k 50, top_p 0.9, rep. 1.5
    q2: Decoding = Decoding(repetition_penalty=1.2, max_new_tokens=48)  # notebook Q2 prompts
    n_heldout: int = 200
    heldout_max_prompt_tokens: int = 192
    batch_size: int = 32
    greedy_sets: tuple[str, ...] = ("q1", "scenarios")  # greedy replies for `differentiation`
    scenarios_per_scenario: int | None = None  # None: every prompt of the set


@dataclass(frozen=True)
class StudyConfig:
    """Everything that determines the study's results."""

    profile: str = "seed"
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    dpo: DPOSettings = DPOSettings()
    labeler: LabelerConfig = LabelerConfig()
    evaluator: EvaluatorConfig = EvaluatorConfig()
    eval: EvalConfig = EvalConfig()
    seed: int = 42  # run seed: generation samples derive their seeds from it
    arms: tuple[str, ...] = ARMS
    bootstrap_resamples: int = 2000


# Each profile lists only what it changes from the notebook's protocol.
PROFILES: dict[str, dict[str, Any]] = {
    "seed": {},
    "cpu": {
        "data": {
            "source": "../shared/data/hh-rlhf",
            "eval_split": None,
            "sample_size": 1000,
        },
        "model": {"base": "smollm2-135m-instruct"},
        "train": {
            "epochs": 1.0,
            "batch_size": 8,
            "learning_rate": 2e-4,
            "use_lora": True,
            "lora_top_layers": 8,
            "group_by_length": True,
        },
        "dpo": {"learning_rate": 5e-5},
        "labeler": {"heldout_pairs": 200},
        "eval": {"n_heldout": 200, "batch_size": 96},
    },
    "smoke": {
        "data": {"source": "synthetic", "eval_split": None, "sample_size": 16},
        "model": {"base": "tiny-gpt-neo", "precision": "fp32"},
        "train": {
            "epochs": 1.0,
            "batch_size": 4,
            "learning_rate": 1e-3,
            "max_length": 64,
            "max_reply_tokens": 32,
            "logging_steps": 1,
        },
        "dpo": {"learning_rate": 1e-3},
        "labeler": {"heldout_pairs": 8, "max_context_tokens": 32, "max_reply_tokens": 16},
        "evaluator": {
            "train_pairs": 8,
            "learning_rate": 1e-3,
            "max_length": 64,
            "max_reply_tokens": 32,
        },
        "eval": {
            "samples_per_prompt": 3,
            "q1": {"max_new_tokens": 8},
            "q2": {"max_new_tokens": 8},
            "n_heldout": 6,
            "batch_size": 16,
            "scenarios_per_scenario": 4,
        },
        "bootstrap_resamples": 200,
    },
}


def did_you_mean(value: str, choices) -> str:
    close = difflib.get_close_matches(value, list(choices), n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def _apply(obj, changes: dict[str, Any], where: str):
    """Return a copy of dataclass ``obj`` with nested ``changes`` applied."""
    names = {f.name: f for f in dataclasses.fields(obj)}
    updates = {}
    for key, value in changes.items():
        if key not in names:
            raise ValueError(
                f"unknown setting '{where}{key}'.{did_you_mean(key, names)} "
                f"Known settings: {', '.join(sorted(names))}."
            )
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            value = _apply(current, value, f"{where}{key}.")
        elif isinstance(current, tuple) and isinstance(value, list):
            value = tuple(value)
        updates[key] = value
    return dataclasses.replace(obj, **updates)


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def resolve(
    profile: str = "cpu", dataset: str | None = None, overrides: dict | None = None
) -> StudyConfig:
    """Build the configuration of a profile.

    Args:
        profile: one of ``PROFILES``.
        dataset: hub id, file or directory replacing the profile's data source.
        overrides: nested mapping of further changes, e.g. ``{"train": {"epochs": 2}}``.

    Raises:
        ValueError: unknown profile, unknown setting or an invalid value, naming the fix.
    """
    if profile not in PROFILES:
        raise ValueError(
            f"unknown profile {profile!r}.{did_you_mean(profile, PROFILES)} "
            f"Choose one of: {', '.join(PROFILES)} (option --profile or STUDY_PROFILE)."
        )
    changes = _merge(PROFILES[profile], overrides or {})
    if dataset:
        changes = _merge(changes, {"data": {"source": dataset}})
    config = _apply(StudyConfig(profile=profile), changes, "")
    validate(config)
    return config


def _positive(name: str, value, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if (
        not isinstance(value, (int, float))
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"{name} must be a positive number, got {value!r}.")


def _at_least_zero(name: str, value) -> None:
    if value < 0:
        raise ValueError(f"{name} must be zero or more, got {value!r}.")


def _is_type(value, hint) -> bool:
    """Whether a setting's value has the type its field declares (int is a valid float)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_is_type(value, a) for a in args)
    if hint is type(None):
        return value is None
    if typing.get_origin(hint) is tuple:
        return isinstance(value, tuple) and all(_is_type(v, args[0]) for v in value)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        return is_number and math.isfinite(value)
    return isinstance(value, hint)


def _check_types(obj, where: str = "") -> None:
    """Every setting has its declared type: a clear error instead of a failure mid-run."""
    hints = typing.get_type_hints(type(obj))
    for field in dataclasses.fields(obj):
        value, hint = getattr(obj, field.name), hints[field.name]
        name = f"{where}{field.name}"
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, hint):
                raise ValueError(
                    f"{name} is a section of settings; set one of its fields, e.g. "
                    f"--set {name}.{dataclasses.fields(hint)[0].name}=VALUE."
                )
            _check_types(value, f"{name}.")
        elif not _is_type(value, hint):
            words = {float: "a finite number", int: "an integer", bool: "true or false"}
            words.update({str: "a string", type(None): "null"})
            if typing.get_origin(hint) is tuple:
                shown = 'a list of strings, e.g. \'["a", "b"]\''
            else:
                shown = " or ".join(words[a] for a in typing.get_args(hint) or (hint,))
            raise ValueError(f"{name} must be {shown}; got {value!r}.")


def _check_budget(where: str, section) -> None:
    """A section's token budget: positive sizes, and room for some prompt beside the reply."""
    for name in ("max_length", "max_reply_tokens"):
        _positive(f"{where}.{name}", getattr(section, name))
    if section.max_reply_tokens >= section.max_length:
        raise ValueError(
            f"{where}.max_reply_tokens must be smaller than {where}.max_length so that some "
            f"prompt fits; got {section.max_reply_tokens} >= {section.max_length}."
        )


def validate(config: StudyConfig) -> None:
    """Raise ValueError for settings that cannot run, naming the setting and the fix."""
    _check_types(config)
    for name in ("sample_size",):
        _positive(f"data.{name}", getattr(config.data, name))
    fractions = (config.data.heldout_fraction, config.data.evaluator_fraction)
    if not (0 < fractions[0] < 1 and 0 < fractions[1] < 1 and sum(fractions) < 1):
        raise ValueError(
            "data.heldout_fraction and data.evaluator_fraction must lie in (0, 1) and sum to "
            f"less than 1, got {fractions}."
        )
    _positive("evaluator.train_pairs", config.evaluator.train_pairs)
    train_sizes = ("epochs", "batch_size", "learning_rate", "lora_r", "lora_alpha", "logging_steps")
    for name in train_sizes:
        _positive(f"train.{name}", getattr(config.train, name))
    _check_budget("train", config.train)
    _positive("train.lora_top_layers", config.train.lora_top_layers, allow_none=True)
    _positive("dpo.beta", config.dpo.beta)
    _positive("dpo.learning_rate", config.dpo.learning_rate)
    for name in ("samples_per_prompt", "n_heldout", "batch_size", "heldout_max_prompt_tokens"):
        _positive(f"eval.{name}", getattr(config.eval, name))
    for name in ("q1", "q2"):
        d = getattr(config.eval, name)
        _positive(f"eval.{name}.max_new_tokens", d.max_new_tokens)
        _positive(f"eval.{name}.temperature", d.temperature)
        _positive(f"eval.{name}.repetition_penalty", d.repetition_penalty)
        _at_least_zero(f"eval.{name}.top_k", d.top_k)
        if not 0 < d.top_p <= 1:
            raise ValueError(f"eval.{name}.top_p must lie in (0, 1], got {d.top_p!r}.")
    for name in ("heldout_pairs", "batch_size", "max_context_tokens", "max_reply_tokens"):
        _positive(f"labeler.{name}", getattr(config.labeler, name))
    for name in ("weight_decay", "warmup_ratio", "checkpoint_steps"):
        _at_least_zero(f"train.{name}", getattr(config.train, name))
    for name in ("epochs", "learning_rate"):
        _positive(f"evaluator.{name}", getattr(config.evaluator, name))
    _check_budget("evaluator", config.evaluator)
    _positive("eval.scenarios_per_scenario", config.eval.scenarios_per_scenario, allow_none=True)
    _positive("bootstrap_resamples", config.bootstrap_resamples)
    for name, value in (
        ("seed", config.seed),
        ("data.sample_seed", config.data.sample_seed),
        ("train.seed", config.train.seed),
    ):
        _at_least_zero(name, value)
    if config.model.device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"model.device must be auto, cpu or cuda; got {config.model.device!r}.")
    if config.model.precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ValueError(
            f"model.precision must be auto, fp32, bf16 or fp16; got {config.model.precision!r}."
        )
    for arm in config.arms:
        if arm not in ARMS:
            raise ValueError(
                f"unknown arm {arm!r} in arms.{did_you_mean(arm, ARMS)} "
                f"Known arms: {', '.join(ARMS)}."
            )
    if "base" not in config.arms:
        raise ValueError("arms must include 'base': every protocol is reported against it.")
    from study.prompts import PROMPT_SETS  # local import: prompts imports nothing from here

    for name in config.eval.prompt_sets:
        if name not in PROMPT_SETS:
            raise ValueError(
                f"unknown prompt set {name!r} in eval.prompt_sets."
                f"{did_you_mean(name, PROMPT_SETS)} Known sets: {', '.join(PROMPT_SETS)}."
            )


def to_dict(config) -> dict:
    """JSON-safe nested dict of a config (tuples become lists)."""
    out = dataclasses.asdict(config)
    return json.loads(json.dumps(out))


def config_hash(obj) -> str:
    """Stable short hash of a config, a sub-config, or any JSON-able value."""
    data = to_dict(obj) if dataclasses.is_dataclass(obj) else obj
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
