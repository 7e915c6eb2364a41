"""An evaluator independent of the AI labeler: a reward model trained on human preferences.

It is trained (TRL's RewardTrainer) on human-labelled pairs that share no opening question with
the training pairs or the evaluation prompts, and its accuracy is measured on held-out pairs.
It judges `self-improvement` (does the AI-feedback arm beat `base`?). Its limits: it is no
larger than the policy, it learned from few pairs, and a reward model rewards what resembles
preferred replies, which is not the same as what a person would prefer.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from study import prefix, stats
from study.config import StudyConfig
from study.models import load_tokenizer
from study.preprocess import truncate_prompt_text, truncate_reply_text

log = logging.getLogger(__name__)


def _load_classifier(base: Path):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)  # the new score head starts the same way in every run
    model = AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=1, use_safetensors=True, trust_remote_code=False
    )
    tok = load_tokenizer(base)
    model.config.pad_token_id = tok.pad_token_id
    return model, tok


def _fit(tok, prompt: str, reply: str, cfg: StudyConfig) -> tuple[str, str]:
    budget = cfg.evaluator.max_length - cfg.evaluator.max_reply_tokens
    return (
        truncate_prompt_text(tok, prompt, budget),
        truncate_reply_text(tok, reply, cfg.evaluator.max_reply_tokens),
    )


def train_reward_model(base: Path, pairs: pd.DataFrame, cfg: StudyConfig, out: Path) -> dict:
    """Train the reward model on human-labelled ``pairs`` and save it (LoRA + score head)."""
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    from study.training import GroupedBatches, common_args, lora_config

    class StudyRewardTrainer(GroupedBatches, RewardTrainer):
        pass

    model, tok = _load_classifier(base)
    tok.padding_side = "right"
    rows = []
    for p, c, r in zip(pairs["prompt"], pairs["chosen"], pairs["rejected"]):
        prompt, chosen = _fit(tok, p, c, cfg)
        _, rejected = _fit(tok, p, r, cfg)
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    args = RewardConfig(
        **{
            **common_args(cfg, out / "trainer", cfg.evaluator.learning_rate),
            "num_train_epochs": cfg.evaluator.epochs,
        },
        max_length=cfg.evaluator.max_length + 16,  # slack for tokenisation at the seam
    )
    lora = lora_config(model, cfg, task_type="SEQ_CLS", modules_to_save=["score"])
    trainer = StudyRewardTrainer(
        study_config=cfg,
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tok,
        peft_config=lora,
    )
    started = time.perf_counter()
    trainer.train()
    trainer.model.save_pretrained(out, safe_serialization=True)
    history = [h for h in trainer.state.log_history if "loss" in h]
    return {
        "n_pairs": len(rows),
        "n_steps": trainer.state.global_step,
        "seconds": round(time.perf_counter() - started, 2),
        "final_loss": history[-1]["loss"] if history else None,
        "curve": [{"step": h["step"], "loss": h["loss"]} for h in history],
    }


def load_reward_model(path: Path, base: Path):
    """The trained reward model, adapters merged, in eval mode."""
    from peft import PeftModel

    model, tok = _load_classifier(base)
    model = PeftModel.from_pretrained(model, path).merge_and_unload()
    model.eval()
    return model, tok


@torch.no_grad()
def rewards(model, tok, prompts, replies, cfg: StudyConfig, autocast=None) -> np.ndarray:
    """Scalar reward of each (prompt, reply); each distinct prompt is run once per batch."""
    owner, heads, where = [], [], {}
    tails = []
    for p, r in zip(prompts, replies):
        prompt, reply = _fit(tok, p, r if isinstance(r, str) else "", cfg)
        owner.append(where.setdefault(prompt, len(where)))
        if owner[-1] == len(heads):
            heads.append(prompt)
        tails.append(reply)
    hidden = prefix.last_hidden(
        model.base_model, tok, heads, tails, owner, cfg.eval.batch_size, autocast, "reward"
    )
    ctx = autocast if autocast is not None else contextlib.nullcontext()
    with ctx:
        return model.score(hidden)[:, 0].float().cpu().numpy()


def accuracy(model, tok, pairs: pd.DataFrame, cfg: StudyConfig, autocast=None) -> dict:
    """Share of held-out human pairs where the chosen reply gets the higher reward (95 % CI)."""
    n = len(pairs)
    prompts = [*pairs["prompt"], *pairs["prompt"]]  # one pass: each prompt is run once
    both = rewards(model, tok, prompts, [*pairs["chosen"], *pairs["rejected"]], cfg, autocast)
    chosen, rejected = both[:n], both[n:]
    n_right = int((chosen > rejected).sum())
    low, high = stats.proportion_ci(n_right, n) if n else (0.0, 0.0)
    return {"n": n, "accuracy": n_right / n if n else None, "ci": [low, high]}
