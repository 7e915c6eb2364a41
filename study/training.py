"""Training of the arms: SFT (transformers Trainer) and DPO (TRL), each from a fresh base copy."""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from study import frozen, head
from study.config import StudyConfig
from study.models import (
    cast_frozen_linears,
    choose_device,
    choose_precision,
    load_model,
    load_tokenizer,
)
from study.preprocess import PadCollator, sft_example, truncate_prompt_text

log = logging.getLogger(__name__)

SFT_REPLY = {"sft-chosen": "chosen", "sft-rejected": "rejected"}
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
GPT_NEO_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "c_fc", "c_proj"]


def lora_config(model, cfg: StudyConfig, task_type: str = "CAUSAL_LM", modules_to_save=None):
    """LoRA adapters on every linear layer of the top ``train.lora_top_layers`` blocks."""
    from peft import LoraConfig

    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    targets = [t for t in LORA_TARGETS + GPT_NEO_TARGETS if t in names]
    n_layers = model.config.num_hidden_layers
    top = cfg.train.lora_top_layers
    return LoraConfig(
        r=cfg.train.lora_r,
        lora_alpha=cfg.train.lora_alpha,
        target_modules=targets,
        layers_to_transform=list(range(max(0, n_layers - top), n_layers)) if top else None,
        lora_dropout=0.0,
        modules_to_save=modules_to_save,
        task_type=task_type,
    )


def _lora(model, cfg: StudyConfig):
    """Wrap ``model`` in LoRA adapters the same way for every arm.

    The adapters' random initialisation is seeded from ``train.seed``: without it, it would
    depend on whatever the process drew from the global generator before, so the first arm of a
    run would start differently from one run to the next.
    """
    from peft import get_peft_model

    torch.manual_seed(cfg.train.seed)
    return get_peft_model(model, lora_config(model, cfg))


def _trainable(base: Path, cfg: StudyConfig):
    """A fresh base copy ready to train: LoRA adapters if configured, frozen weights pre-cast."""
    model = load_model(base)
    if cfg.train.use_lora:
        model = _lora(model, cfg)
    cast_frozen_linears(model, training_precision(cfg))
    model.train()
    return model


def world_size() -> int:
    """Number of training processes (``accelerate launch`` / torchrun set WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def per_device_batch(cfg: StudyConfig) -> int:
    """Split the global batch over the processes so that the global batch is unchanged."""
    n = world_size()
    if cfg.train.batch_size % n:
        raise ValueError(
            f"train.batch_size={cfg.train.batch_size} cannot be split over {n} processes; "
            "choose a batch size divisible by the number of processes."
        )
    return cfg.train.batch_size // n


def training_precision(cfg: StudyConfig) -> str:
    return choose_precision(choose_device(cfg.model.device), cfg.model.precision)


def common_args(cfg: StudyConfig, checkpoints: Path, learning_rate: float) -> dict:
    device = choose_device(cfg.model.device)
    precision = training_precision(cfg)
    every = cfg.train.checkpoint_steps
    return dict(
        output_dir=str(checkpoints),
        per_device_train_batch_size=per_device_batch(cfg),
        average_tokens_across_devices=True,
        ddp_find_unused_parameters=False,
        num_train_epochs=cfg.train.epochs,
        learning_rate=learning_rate,
        weight_decay=cfg.train.weight_decay,
        warmup_steps=cfg.train.warmup_ratio,  # a float below 1 is a ratio of all steps
        logging_steps=cfg.train.logging_steps,
        seed=cfg.train.seed,
        data_seed=cfg.train.seed,
        report_to="none",
        # Checkpoints let a killed run resume; only the latest is kept.
        save_strategy="steps" if every else "no",
        save_steps=every or 500,
        save_total_limit=1,
        save_only_model=False,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=device == "cpu",
        dataloader_num_workers=0,
        # TRL turns this on by default; with frozen lower blocks it only makes every step
        # recompute activations and send gradients through the whole model.
        gradient_checkpointing=False,
        remove_unused_columns=False,
        disable_tqdm=False,
    )


def example_lengths(dataset) -> list[int]:
    """Length of each training example by which batches are grouped.

    A pair's length is that of its longer reply with the prompt, so that arms trained on the
    same pairs (both SFT arms, both DPO arms) group them into the same batches. SFT rows carry
    it as ``pair_length``.
    """
    cols = set(dataset.column_names)
    if "pair_length" in cols:
        return list(dataset["pair_length"])
    if "input_ids" in cols:
        return [len(ids) for ids in dataset["input_ids"]]
    # DPO rows keep the prompt apart; reward-model rows hold it in each reply's ids.
    prompt = dataset["prompt_ids"] if "prompt_ids" in cols else [[]] * len(dataset)
    return [
        len(p) + max(len(c), len(r))
        for p, c, r in zip(prompt, dataset["chosen_ids"], dataset["rejected_ids"])
    ]


def grouped_sampler(lengths: list[int], cfg: StudyConfig):
    """Shuffled batches of similar length (transformers' length-grouped order), seeded.

    Batches are formed at the global batch size, so every process count trains on the same
    batches; the order depends only on ``train.seed`` and the epoch, so a resumed run replays it.
    """
    from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices

    class Sampler(LengthGroupedSampler):
        epoch = 0

        def set_epoch(self, epoch: int) -> None:
            self.epoch = epoch

        def __iter__(self):
            generator = torch.Generator().manual_seed(cfg.train.seed + self.epoch)
            return iter(
                get_length_grouped_indices(self.lengths, self.batch_size, generator=generator)
            )

    return Sampler(cfg.train.batch_size, lengths=list(lengths))


class GroupedBatches:
    """Trainer mixin: length-grouped batches when ``train.group_by_length`` is set.

    Takes the study configuration as the keyword ``study_config``.
    """

    def __init__(self, *args, study_config: StudyConfig, **kwargs):
        self.study_config = study_config
        super().__init__(*args, **kwargs)

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if not self.study_config.train.group_by_length:
            return super()._get_train_sampler(train_dataset)
        return grouped_sampler(example_lengths(dataset), self.study_config)


def last_complete_checkpoint(folder: Path) -> Path | None:
    """The newest checkpoint whose trainer state was written (the Trainer writes it last).

    A checkpoint cut short by a killed process lacks it and is removed.
    """
    import json

    found = []
    for path in folder.glob("checkpoint-*") if folder.is_dir() else []:
        try:
            json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
            found.append((int(path.name.rsplit("-", 1)[-1]), path))
        except (OSError, ValueError):
            log.warning("removing incomplete checkpoint %s", path)
            shutil.rmtree(path, ignore_errors=True)
    return max(found)[1] if found else None


def _fit(trainer, checkpoints: Path) -> int | None:
    """Train, resuming from the latest complete checkpoint of an interrupted run if any.

    Returns the step resumed from, or None for a fresh start.
    """
    last = last_complete_checkpoint(checkpoints)
    if last:
        log.warning("resuming from %s after an interrupted run", last)
    trainer.train(resume_from_checkpoint=str(last) if last else None)
    return int(last.name.rsplit("-", 1)[-1]) if last else None


def _summary(trainer, started: float, n_rows: int, n_tokens: int) -> dict:
    history = [
        {"step": h["step"], "loss": h["loss"]} for h in trainer.state.log_history if "loss" in h
    ]
    elapsed = time.perf_counter() - started
    return {
        "n_rows": n_rows,
        "n_steps": trainer.state.global_step,
        "n_tokens": n_tokens,
        "seconds": round(elapsed, 2),
        "tokens_per_second": round(n_tokens / elapsed, 1) if elapsed else None,
        "final_loss": history[-1]["loss"] if history else None,
        "curve": history,
    }


def _save(trainer, tokenizer, out: Path) -> None:
    """Save adapters when LoRA was used (small), else the whole model; main process only."""
    if trainer.is_world_process_zero():
        trainer.model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)


class CountingCollator:
    """Wraps a collator and counts the rows this process was given."""

    def __init__(self, inner):
        self.inner = inner
        self.n_rows = 0

    def __call__(self, rows):
        self.n_rows += len(rows)
        return self.inner(rows)


def rows_per_process(n_rows: int) -> list[int]:
    """Rows each training process saw, gathered from all of them."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [n_rows]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, n_rows)
    return out


def train_sft(
    arm: str,
    base: Path,
    rows: pd.DataFrame,
    cfg: StudyConfig,
    out: Path,
    checkpoints: Path | None = None,
) -> dict:
    """Supervised fine-tuning on prompt + the arm's reply column.

    Args:
        arm: ``sft-chosen`` or ``sft-rejected``.
        base: folder of the base model; the arm loads its own fresh copy.
        rows: training pairs (``prompt``, ``chosen``, ``rejected``).
        cfg: the study configuration.
        out: folder receiving the trained weights (adapters when LoRA is used).
        checkpoints: folder for resumable checkpoints (default: inside ``out``).
    """
    checkpoints = checkpoints or out / "trainer"
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    tok = load_tokenizer(base)

    def encode(column):
        return [
            sft_example(tok, p, r, cfg.train.max_length, cfg.train.max_reply_tokens)
            for p, r in zip(rows["prompt"], rows[column])
        ]

    examples = encode(SFT_REPLY[arm])
    if cfg.train.group_by_length:  # both SFT arms group the pairs alike
        pair = zip(encode("chosen"), encode("rejected"))
        for e, (c, r) in zip(examples, pair):
            e["pair_length"] = max(len(c["input_ids"]), len(r["input_ids"]))
    n_tokens = sum(len(e["input_ids"]) for e in examples)
    model = _trainable(base, cfg)
    get_base = getattr(model, "get_base_model", None)  # PEFT wraps the model
    install_label_head(get_base() if get_base else model)
    args = TrainingArguments(**common_args(cfg, checkpoints, cfg.train.learning_rate))
    collator = CountingCollator(PadCollator(tok.pad_token_id))

    class StudyTrainer(GroupedBatches, Trainer):
        pass

    trainer = StudyTrainer(
        study_config=cfg,
        model=model,
        args=args,
        train_dataset=Dataset.from_list(examples),
        data_collator=collator,
    )
    started = time.perf_counter()
    resumed = _fit(trainer, checkpoints)
    summary = _summary(trainer, started, len(examples), int(n_tokens * cfg.train.epochs))
    summary["resumed_from_step"] = resumed
    summary["rows_per_process"] = rows_per_process(collator.n_rows)
    _save(trainer, tok, out)
    return summary


def preference_rows(
    rows: pd.DataFrame, prefer_first: pd.Series | None, tokenizer, cfg: StudyConfig
) -> list[dict]:
    """DPO rows; ``prefer_first`` (AI labels) decides which reply is chosen, else the human label.

    Prompts are cut from the left here so that the trainer's right truncation never removes a
    reply.
    """
    budget = cfg.train.max_length - cfg.train.max_reply_tokens
    out = []
    for i, (p, c, r) in enumerate(zip(rows["prompt"], rows["chosen"], rows["rejected"])):
        if prefer_first is not None and not bool(prefer_first.iloc[i]):
            c, r = r, c
        out.append(
            {"prompt": truncate_prompt_text(tokenizer, p, budget), "chosen": c, "rejected": r}
        )
    return out


def install_label_head(model) -> bool:
    """Compute the SFT loss from the output head on labelled positions only; True if installed.

    The model's own loss projects every position, prompt and padding included, onto the
    vocabulary and upcasts those logits before discarding the unlabelled ones. This forward
    projects only the positions whose next token carries a label, a block at a time
    (``study/head.py``), and returns the same loss: the summed cross-entropy over
    ``num_items_in_batch`` when the Trainer gives it, else the mean.
    """
    from transformers.modeling_outputs import CausalLMOutput

    if getattr(model, "_study_label_head", False):
        return False
    own = model.forward

    def forward(*args, labels=None, num_items_in_batch=None, **kwargs):
        if labels is None:
            return own(*args, **kwargs)
        kwargs["use_cache"] = False
        hidden = model.base_model(*args, **kwargs).last_hidden_state[:, :-1]
        targets = labels[:, 1:]
        mask = targets != -100
        log_probs, _ = head.token_logprobs(
            hidden[mask], model.get_output_embeddings(), targets[mask]
        )
        n = num_items_in_batch if num_items_in_batch is not None else mask.sum().clamp(min=1)
        return CausalLMOutput(loss=-log_probs.sum() / n)

    model.forward = forward
    model._study_label_head = True
    return True


def install_logprob_head(model) -> bool:
    """On devices without Triton, score DPO's next tokens with a plain head; True if installed.

    TRL projects every position through the output head in vocabulary tiles and, where Triton is
    missing (the CPU), folds each tile with a chain of elementwise torch operations forward and
    backward; on this study's CPU that head takes about three quarters of a DPO step. This head
    keeps TRL's calling convention (``fused_lm_head=True`` returns per-token log-probabilities
    and the statistics TRL logs) but projects only the positions that carry a label, a block of
    positions at a time (``study/head.py``); on CUDA TRL's kernel stays.
    """
    from trl.trainer.utils import FusedCausalLMOutput

    device = next(model.parameters()).device
    if device.type == "cuda" or getattr(model, "_study_logprob_head", False):
        return False
    unfused = model.forward  # TRL's patched forward: the model's own one unless fused_lm_head

    def forward(*args, fused_lm_head=False, labels=None, **kwargs):
        if not fused_lm_head:
            return unfused(*args, labels=labels, **kwargs)
        if kwargs.pop("shift_labels", None) is not None:
            raise ValueError("the study's log-prob head does not take pre-shifted labels")
        kwargs.pop("num_items_in_batch", None)
        kwargs["use_cache"] = False
        hidden = model.base_model(*args, **kwargs).last_hidden_state[:, :-1]
        labels = labels[:, 1:]
        mask = labels != -100
        # The statistics TRL logs are left out where only log-probabilities are read (the
        # reference pass).
        log_probs, stats = head.token_logprobs(
            hidden[mask],
            model.get_output_embeddings(),
            labels[mask],
            stats=getattr(model, "_study_logprob_stats", True),
        )

        def spread(values):
            return values.new_zeros(mask.shape).masked_scatter(mask, values)

        per_token = spread(log_probs)
        return FusedCausalLMOutput(
            loss=-per_token.sum() / mask.sum().clamp(min=1),
            log_probs=per_token,
            label_mask=mask,
            **{name: spread(values) for name, values in (stats or {}).items()},
        )

    model.forward = forward
    model._study_logprob_head = True
    return True


def _dpo_trainer_class():
    from trl import DPOTrainer

    class StudyDPOTrainer(GroupedBatches, DPOTrainer):
        """TRL's DPO trainer with the study's CPU head, taking a reference computed once.

        The reference log-probabilities come from ``reference`` (see ``reference_logps``) when
        given, else from TRL's own pass with the same head as training, so a policy equal to the
        reference scores exactly the reference's values. A reference computed in a separate pass
        leaves the random state of the training run alone: an arm trains the same whether its
        reference was computed just before or read from the store.
        """

        def __init__(self, *args, reference: dict | None = None, **kwargs):
            self._shared_reference = reference
            super().__init__(*args, **kwargs)
            self._install_head()

        def _install_head(self):
            get_base = getattr(self.model, "get_base_model", None)  # PEFT wraps the model
            install_logprob_head(get_base() if get_base else self.model)

        def _precompute_ref_logps(self, dataset, name, batch_size):
            self._install_head()  # runs inside TRL's __init__, after TRL patched its head
            if self._shared_reference is not None:
                return attach_reference(dataset, self._shared_reference)
            # Pairs of similar length share a batch (less padding); each pair's values are the
            # same up to rounding, and the dataset keeps its order.
            order = np.argsort(example_lengths(dataset), kind="stable")
            get_base = getattr(self.model, "get_base_model", None)
            model = get_base() if get_base else self.model
            model._study_logprob_stats = False
            try:
                done = super()._precompute_ref_logps(dataset.select(order), name, batch_size)
            finally:
                model._study_logprob_stats = True
            return done.select(np.argsort(order))

    return StudyDPOTrainer


REFERENCE_COLUMNS = ("prompt", "chosen", "rejected", "ref_chosen_logps", "ref_rejected_logps")


def attach_reference(dataset, reference: dict):
    """Add the reference log-probabilities of each row's replies, looked up by (prompt, reply).

    ``reference`` holds the columns of ``REFERENCE_COLUMNS`` from a pass over the same pairs in
    any label direction; a pair whose replies are swapped gets its values swapped.
    """
    logp = {}
    for p, c, r, lc, lr in zip(*(reference[k] for k in REFERENCE_COLUMNS)):
        logp[(p, c)] = lc
        logp[(p, r)] = lr
    chosen, rejected, missing = [], [], 0
    for p, c, r in zip(dataset["prompt"], dataset["chosen"], dataset["rejected"]):
        if (p, c) not in logp or (p, r) not in logp:
            missing += 1
            continue
        chosen.append(logp[(p, c)])
        rejected.append(logp[(p, r)])
    if missing:
        raise ValueError(
            f"the shared reference log-probabilities lack {missing} of {len(dataset)} training "
            "pairs: they were computed on other data. Delete the store's reference/ entry."
        )
    return dataset.add_column("ref_chosen_logps", chosen).add_column("ref_rejected_logps", rejected)


def _dpo_args(cfg: StudyConfig, checkpoints: Path, **overrides):
    from trl import DPOConfig

    return DPOConfig(
        **{**common_args(cfg, checkpoints, cfg.dpo.learning_rate), **overrides},
        beta=cfg.dpo.beta,
        max_length=cfg.train.max_length,
        precompute_ref_log_probs=True,
        precompute_ref_batch_size=4 * per_device_batch(cfg),
    )


def frozen_states_path(folder: Path, name: str, cfg: StudyConfig) -> Path | None:
    """Where the reference pass keeps the states entering the lowest trained block.

    None when every block trains. The name carries the number of trained blocks, which decides
    the block whose input is kept.
    """
    if not cfg.train.use_lora or not cfg.train.lora_top_layers:
        return None
    return folder / f"{name}.states-top{cfg.train.lora_top_layers}.safetensors"


def _body(model):
    get_base = getattr(model, "get_base_model", None)  # PEFT wraps the model
    return (get_base() if get_base else model).base_model


def reference_logps(
    base: Path, rows: pd.DataFrame, cfg: StudyConfig, workdir: Path, states: Path | None = None
) -> dict:
    """Log-probabilities of both replies of every pair under the base model (the DPO reference).

    Computed once and shared by `dpo-human` and `dpo-ai`, whose pairs differ only in direction.
    Returns the columns of ``REFERENCE_COLUMNS`` as lists. With ``states`` (and LoRA on the top
    blocks only), the hidden states entering the lowest trained block are written there for the
    DPO arms to start from (``study/frozen.py``).
    """
    from datasets import Dataset

    tok = load_tokenizer(base)
    tok.padding_side = "right"
    model = load_model(base)
    model.requires_grad_(False)
    cast_frozen_linears(model, training_precision(cfg))
    n_frozen = frozen.n_frozen_blocks(model, cfg.train.lora_top_layers if cfg.train.use_lora else 0)
    memo: dict = {}
    if states is not None and n_frozen:
        frozen.install(_body(model), n_frozen, memo, record=True)
    trainer = _dpo_trainer_class()(
        study_config=cfg,
        model=model,
        args=_dpo_args(cfg, workdir),
        train_dataset=Dataset.from_list(preference_rows(rows, None, tok, cfg)),
        processing_class=tok,
    )
    ds = trainer.train_dataset
    if memo:
        tmp = states.with_name(states.name + ".partial")
        frozen.save(memo, tmp)
        os.replace(tmp, states)  # the states file is whole or absent
        log.info("kept the frozen blocks' states of %d sequences in %s", len(memo), states.name)
    return {k: list(ds[k]) for k in REFERENCE_COLUMNS}


def train_dpo(
    arm: str,
    base: Path,
    rows: pd.DataFrame,
    cfg: StudyConfig,
    out: Path,
    prefer_first: pd.Series | None = None,
    checkpoints: Path | None = None,
    reference: dict | None = None,
    states: Path | None = None,
) -> dict:
    """DPO from a fresh base copy; only the label direction differs between the DPO arms.

    ``prefer_first`` holds the AI labels (True: the human-chosen reply is preferred); None
    trains on the human labels. ``reference`` is the output of ``reference_logps`` on the same
    rows (None: computed here); ``states`` the frozen blocks' states it kept, if any. Other
    arguments as in ``train_sft``.
    """
    checkpoints = checkpoints or out / "trainer"
    import tempfile

    from datasets import Dataset

    if reference is None:
        with tempfile.TemporaryDirectory() as workdir:
            reference = reference_logps(base, rows, cfg, Path(workdir))

    tok = load_tokenizer(base)
    tok.padding_side = "right"
    data = preference_rows(rows, prefer_first, tok, cfg)
    n_tokens = sum(
        len(tok(d["prompt"] + d["chosen"])["input_ids"])
        + len(tok(d["prompt"] + d["rejected"])["input_ids"])
        for d in data
    )
    model = _trainable(base, cfg)
    stand_in = None
    n_frozen = frozen.n_frozen_blocks(model, cfg.train.lora_top_layers if cfg.train.use_lora else 0)
    if states is not None and states.exists() and n_frozen:
        stand_in = frozen.install(_body(model), n_frozen, frozen.load(states))
    trainer = _dpo_trainer_class()(
        study_config=cfg,
        model=model,
        args=_dpo_args(cfg, checkpoints),
        train_dataset=Dataset.from_list(data),
        processing_class=tok,
        reference=reference,
    )
    started = time.perf_counter()
    resumed = _fit(trainer, checkpoints)
    summary = _summary(
        trainer,
        started,
        len(data),
        int(min(n_tokens, 2 * len(data) * cfg.train.max_length) * cfg.train.epochs),
    )
    summary["resumed_from_step"] = resumed
    if stand_in is not None:  # sequences whose frozen blocks were read, not run
        summary["frozen_states"] = {"read": stand_in.hits, "run": stand_in.misses}
    summary["n_flipped"] = 0 if prefer_first is None else int((~prefer_first.astype(bool)).sum())
    tok.padding_side = "left"
    _save(trainer, tok, out)
    return summary


def load_arm(path: Path, base: Path, dtype: torch.dtype = torch.float32):
    """A trained arm ready for inference: LoRA adapters merged into a fresh base copy."""
    if (path / "adapter_config.json").exists():
        from peft import PeftModel

        model = PeftModel.from_pretrained(load_model(base, dtype), path).merge_and_unload()
        model.eval()
        return model
    return load_model(path, dtype)
