"""Our way against the notebook's way, measured side by side in one run (``make bench``).

1. training throughput (tokens/s) and MFU of the SFT recipe;
2. the DPO step (the study's output head against TRL's; the frozen lower blocks' states read
   against run), the shared reference pass, and the padding saved by length-grouped batches;
3. greedy generation of 48 scenario prompts, batched against one prompt at a time, and sampled
   held-out replies with the study's KV cache against the stock one;
4. AI labeling with the judge's instructions run once, against once per batch;
5. scoring throughput (replies/s).

Each test times our way with pytest-benchmark (one round: a run is long) and its baseline with
``time.perf_counter`` in the same process, then records both, the ratio and the target for
``findings/benchmarks.md`` (see ``conftest.py`` and ``report.py``).
"""

from __future__ import annotations

import cProfile
import gc
import importlib.util
import io
import pstats
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback


def _report_module():
    """``report.py`` under the stable name the conftest registered it with."""
    name = "benchmarks_report"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).parent / "report.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


report = _report_module()
record = report.RESULTS.append

pytestmark = pytest.mark.bench

NOTEBOOK_BATCH = 4  # notebook: per_device_train_batch_size=4
NOTEBOOK_MAX_LENGTH = 128  # notebook: tokenizer(..., padding=True, truncation=True, max_length=128)
NOTEBOOK_MAP_BATCH = 1000  # datasets.map(batched=True) default batch_size: pad to its longest row
NOTEBOOK_LR = 5e-5  # Trainer default, which the notebook kept

TRAIN_TARGET = 2.5
MFU_TARGET = 0.40
GEN_TARGET = 8.0
SCORE_TARGET = 1000.0


# -- model FLOPs --------------------------------------------------------------------------------


def matmul_flops_per_token(model) -> dict[str, float]:
    """Model FLOPs per token of one training step, counted on every ``nn.Linear`` call.

    One forward with hooks sees each linear layer (LoRA's A and B included, the tied LM head
    included) with its input. Per token and per weight matrix W (|W| entries):

    * forward: 2|W|;
    * backward, gradient of the input: 2|W| only if that input requires a gradient (below the
      lowest trainable weight nothing does, so the frozen lower blocks cost no backward);
    * backward, gradient of the weight: 2|W| only if W is trained.

    Full fine-tuning gives the usual 6N. Attention-score matmuls (QK^T, AV: about 3 % at 128
    tokens) and element-wise work are not counted, so the MFU is slightly understated.
    """
    counts = {"forward": 0.0, "input_grad": 0.0, "weight_grad": 0.0}
    handles = []

    def hook(module, inputs, output):
        n_tokens = inputs[0].numel() // inputs[0].shape[-1]
        w = module.weight.numel()
        counts["forward"] += 2 * w * n_tokens
        if inputs[0].requires_grad:
            counts["input_grad"] += 2 * w * n_tokens
        if module.weight.requires_grad:
            counts["weight_grad"] += 2 * w * n_tokens

    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            handles.append(m.register_forward_hook(hook))
    was_training = model.training
    model.train()
    ids = torch.ones((1, 8), dtype=torch.long)
    try:
        # autocast as in training: frozen weights may be stored in bf16
        with torch.enable_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            model(input_ids=ids, attention_mask=torch.ones_like(ids))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    per_token = {k: v / ids.numel() for k, v in counts.items()}
    per_token["total"] = sum(per_token.values())
    return per_token


# -- training -----------------------------------------------------------------------------------


class _StepClock(TrainerCallback):
    """Trainer callback: the time at the end of every optimizer step."""

    def __init__(self):
        self.ends: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())


class _CountingCollator:
    """Wraps a collator and records each batch's real (attended) and padded token counts."""

    def __init__(self, inner):
        self.inner = inner
        self.real: list[int] = []
        self.padded: list[int] = []
        self.labelled: list[int] = []

    def __call__(self, rows):
        batch = self.inner(rows)
        mask = batch["attention_mask"]
        self.real.append(int(mask.sum()))
        self.padded.append(int(mask.numel()))
        self.labelled.append(int((batch["labels"][:, 1:] != -100).sum()))
        return batch


def _timed_training(model, args, dataset, collator, warmup: int, steps: int) -> dict:
    """Run ``warmup + steps`` optimizer steps with the Trainer; time and count the last steps."""
    from transformers import Trainer

    clock = _StepClock()
    counter = _CountingCollator(collator)
    # The dtype the LM head computes in inside the Trainer: proves autocast is (or is not) on.
    head = model.get_output_embeddings()
    dtypes: list[torch.dtype] = []
    handle = head.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=counter,
        callbacks=[clock],
    )
    try:
        trainer.train()
    finally:
        handle.remove()
    assert len(clock.ends) == warmup + steps, (len(clock.ends), warmup, steps)
    seconds = clock.ends[-1] - clock.ends[warmup - 1]
    real = sum(counter.real[warmup : warmup + steps])
    padded = sum(counter.padded[warmup : warmup + steps])
    return {
        "seconds": seconds,
        "real_tokens": real,
        "padded_tokens": padded,
        "labelled_tokens": sum(counter.labelled[warmup : warmup + steps]),
        "tokens_per_s": real / seconds,
        "padded_tokens_per_s": padded / seconds,
        "steps": steps,
        "matmul_dtype": str(dtypes[-1]).replace("torch.", "") if dtypes else "unknown",
    }


# What the benchmark sets on top of either recipe: a fixed number of steps, no checkpoints or
# progress bars, and the same row order for both recipes so that both time the same rows.
def _bench_overrides(out, max_steps: int) -> dict:
    return dict(
        output_dir=str(out),
        max_steps=max_steps,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        train_sampling_strategy="sequential",
    )


def _study_trainer_args(cfg, out) -> dict:
    """The study's own TrainingArguments (public ``common_args``, formerly ``_common_args``)."""
    from study import training

    make = getattr(training, "common_args", None) or training._common_args
    return make(cfg, out, cfg.train.learning_rate)


def _study_lora(model, cfg):
    """The study's LoRA wrapping (``training._lora``, else ``lora_config`` + peft)."""
    from study import training

    if hasattr(training, "_lora"):
        return training._lora(model, cfg)
    from peft import get_peft_model

    return get_peft_model(model, training.lora_config(model, cfg))


def _study_trainable(model_path, cfg):
    """The study's fresh trainable copy (LoRA, frozen weights pre-cast); older code: LoRA only."""
    from study import training
    from study.models import load_model

    if hasattr(training, "_trainable"):
        return training._trainable(model_path, cfg)
    model = load_model(model_path)
    if cfg.train.use_lora:
        model = _study_lora(model, cfg)
    model.train()
    return model


def _our_training(model_path, cfg, rows, warmup: int, steps: int, out) -> dict:
    """The study's SFT recipe: sft_example rows, PadCollator, bf16 autocast, LoRA on top blocks."""
    from datasets import Dataset
    from transformers import TrainingArguments

    from study import training
    from study.models import load_tokenizer
    from study.preprocess import PadCollator, sft_example

    tok = load_tokenizer(model_path)
    examples = [
        sft_example(tok, p, r, cfg.train.max_length, cfg.train.max_reply_tokens)
        for p, r in zip(rows["prompt"], rows["chosen"])
    ]
    model = _study_trainable(model_path, cfg)
    flops = matmul_flops_per_token(model)
    install = getattr(training, "install_label_head", None)  # absent in older code
    label_head = bool(install) and install(
        model.get_base_model() if hasattr(model, "get_base_model") else model
    )
    args = {**_study_trainer_args(cfg, out), **_bench_overrides(out, warmup + steps)}
    got = _timed_training(
        model,
        TrainingArguments(**args),
        Dataset.from_list(examples),
        PadCollator(tok.pad_token_id),
        warmup,
        steps,
    )
    if label_head:
        # The head then runs (forward and input gradient) on labelled positions only.
        head = 4 * model.get_output_embeddings().weight.numel()
        unused = head * (1 - got["labelled_tokens"] / got["real_tokens"])
        flops = {**flops, "forward": flops["forward"] - unused / 2}
        flops["input_grad"] -= unused / 2
        flops["total"] -= unused
    got["flops_per_token"] = flops
    got["label_head"] = label_head
    got["batch_size"] = cfg.train.batch_size
    got["precision"] = "bf16" if args["bf16"] else "fp32"
    got["trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_layers = model.config.num_hidden_layers
    got["frozen_blocks"] = n_layers - min(n_layers, cfg.train.lora_top_layers or n_layers)
    return got


def notebook_dataset(tokenizer, rows):
    """The notebook's tokenisation: prompt + reply, one 1,000-row map batch padded to its longest
    row (truncated to 128), labels = input_ids with nothing masked."""
    from datasets import Dataset

    def tokenize(batch):
        enc = tokenizer(
            batch["text"], padding=True, truncation=True, max_length=NOTEBOOK_MAX_LENGTH
        )
        enc["labels"] = [list(ids) for ids in enc["input_ids"]]
        return dict(enc)

    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()
    texts = [p + c for p, c in zip(rows["prompt"], rows["chosen"])]
    return Dataset.from_dict({"text": texts}).map(
        tokenize, batched=True, batch_size=NOTEBOOK_MAP_BATCH, remove_columns=["text"]
    )


def _notebook_training(model_path, rows, picked: list[int], warmup: int, steps: int, out) -> dict:
    """The notebook's recipe: fp32, batch 4, full fine-tuning, Trainer's default collator."""
    from transformers import AutoTokenizer, TrainingArguments, default_data_collator

    from study.models import load_model

    tok = AutoTokenizer.from_pretrained(model_path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token  # notebook: tokenizer.pad_token = tokenizer.eos_token
    tok.padding_side = "right"
    dataset = notebook_dataset(tok, rows)  # all rows in one map batch, as the notebook did
    padded_to = len(dataset[0]["input_ids"])
    dataset = dataset.select(picked)
    model = load_model(model_path)  # fp32, every weight trained
    model.train()
    flops = matmul_flops_per_token(model)
    args = dict(  # the notebook's Trainer: defaults but for these
        per_device_train_batch_size=NOTEBOOK_BATCH,
        learning_rate=NOTEBOOK_LR,
        logging_steps=10,
        use_cpu=True,
        bf16=False,
        dataloader_num_workers=0,
        seed=42,
        data_seed=42,
        **_bench_overrides(out, warmup + steps),
    )
    got = _timed_training(
        model, TrainingArguments(**args), dataset, default_data_collator, warmup, steps
    )
    got["flops_per_token"] = flops
    got["batch_size"] = NOTEBOOK_BATCH
    got["precision"] = "fp32"
    got["padded_to"] = padded_to
    got["trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return got


def profile_our_step(model_path, cfg, rows, top: int = 8) -> list[str]:
    """Where one training step of our recipe spends its time (torch.profiler, self CPU time).

    The step is the Trainer's: forward under bf16 autocast, backward, AdamW on the LoRA weights,
    on one batch of ``rows`` padded by the study's collator.
    """
    from torch.profiler import ProfilerActivity, profile

    from study.models import load_tokenizer
    from study.preprocess import PadCollator, sft_example

    tok = load_tokenizer(model_path)
    batch = PadCollator(tok.pad_token_id)(
        [
            sft_example(tok, p, r, cfg.train.max_length, cfg.train.max_reply_tokens)
            for p, r in zip(rows["prompt"], rows["chosen"])
        ]
    )
    model = _study_trainable(model_path, cfg)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()

    step()  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1
    groups = {
        "matmuls (aten::mm/addmm/bmm)": ("aten::mm", "aten::addmm", "aten::bmm"),
        "attention (scaled_dot_product, forward + backward)": ("scaled_dot_product",),
        "dtype casts and copies (aten::copy_, aten::_to_copy)": ("aten::copy_", "aten::_to_copy"),
        "log-softmax over the vocabulary (loss)": ("log_softmax",),
    }
    lines = [
        f"- One step of our recipe, profiled (batch {batch['input_ids'].shape[0]} x "
        f"{batch['input_ids'].shape[1]} tokens; self CPU time {total / 1e6:.2f} s):"
    ]
    for name, keys in groups.items():
        t = sum(e.self_cpu_time_total for e in events if any(k in e.key for k in keys))
        lines.append(f"  - {name}: {t / total:.0%}")
    lines.append(
        "  - top ops: "
        + ", ".join(f"`{e.key}` {e.self_cpu_time_total / total:.0%}" for e in events[:top])
    )
    return lines


def test_training_throughput(
    benchmark, model_path, cpu_config, study_data, sizes, bf16_matmul_rate, tmp_path
):
    cfg = cpu_config
    rows = study_data.train  # the 1,000 training rows of the cpu profile
    batch = cfg.train.batch_size
    warmup, steps = sizes.train_warmup_steps, sizes.train_steps
    n_measured = steps * batch
    assert n_measured % NOTEBOOK_BATCH == 0
    ours_rows = rows.iloc[: warmup * batch + n_measured]
    # The notebook's measured steps read exactly the rows of ours: its warm-up takes the first
    # rows, then the same measured rows follow (twice as many steps at batch 4).
    picked = list(range(warmup * NOTEBOOK_BATCH)) + list(
        range(warmup * batch, warmup * batch + n_measured)
    )
    base_steps = n_measured // NOTEBOOK_BATCH

    ours = benchmark.pedantic(
        _our_training,
        args=(model_path, cfg, ours_rows, warmup, steps, tmp_path / "ours"),
        rounds=1,
        iterations=1,
    )
    gc.collect()
    base = _notebook_training(model_path, rows, picked, warmup, base_steps, tmp_path / "notebook")
    gc.collect()

    ratio = ours["tokens_per_s"] / base["tokens_per_s"]
    peak = bf16_matmul_rate
    mfu = ours["flops_per_token"]["total"] * ours["tokens_per_s"] / peak
    mfu_padded = ours["flops_per_token"]["total"] * ours["padded_tokens_per_s"] / peak
    base_mfu = base["flops_per_token"]["total"] * base["tokens_per_s"] / peak
    base_mfu_padded = base["flops_per_token"]["total"] * base["padded_tokens_per_s"] / peak
    benchmark.extra_info.update(
        ours_tokens_per_s=ours["tokens_per_s"],
        notebook_tokens_per_s=base["tokens_per_s"],
        ratio=ratio,
        mfu=mfu,
        bf16_matmul_flops=peak,
    )
    print(
        f"\ntraining: ours {ours['tokens_per_s']:.1f} tok/s, notebook "
        f"{base['tokens_per_s']:.1f} tok/s, ratio {ratio:.2f}x; MFU ours {mfu:.1%}, "
        f"notebook {base_mfu:.1%} (bf16 matmul {peak / 1e9:.1f} GFLOP/s)"
    )

    def fl(d):
        f = d["flops_per_token"]
        return (
            f"{f['total'] / 1e6:.1f} MFLOP/token (forward {f['forward'] / 1e6:.1f} + input "
            f"gradients {f['input_grad'] / 1e6:.1f} + weight gradients "
            f"{f['weight_grad'] / 1e6:.1f})"
        )

    notes_train = [
        f"- Rows: the cpu profile's training rows (prompt + chosen reply). Ours: "
        f"{warmup} warm-up + {steps} timed optimizer steps at batch {batch}; the notebook: "
        f"{warmup} warm-up + {base_steps} timed steps at batch {NOTEBOOK_BATCH}, so both timed "
        f"windows read the same {n_measured} rows. Timed from the end of the last warm-up step "
        "to the end of the last step (data loading, forward, backward, optimizer), inside the "
        "HF Trainer each recipe uses.",
        "- Tokens/s counts real (attended) tokens. Padded tokens/s (what the CPU computes): "
        f"ours {ours['padded_tokens_per_s']:.1f}, notebook {base['padded_tokens_per_s']:.1f}. "
        f"Real / padded tokens: ours {ours['real_tokens']} / {ours['padded_tokens']}, notebook "
        f"{base['real_tokens']} / {base['padded_tokens']} (every notebook row padded to "
        f"{base['padded_to']}, the longest of its 1,000-row map batch).",
        f"- LM-head output dtype inside the Trainer: ours {ours['matmul_dtype']}, notebook "
        f"{base['matmul_dtype']}.",
        f"- Ours: {ours['precision']} autocast, LoRA ({ours['trainable']:,} trained "
        f"parameters), {fl(ours)}. Notebook: fp32, full fine-tuning ({base['trainable']:,} "
        f"trained parameters), {fl(base)}.",
    ]
    if ours["label_head"]:
        share = ours["labelled_tokens"] / ours["real_tokens"]
        notes_train.append(
            "- Ours computes the loss from the output head on labelled positions only "
            f"(`study.training.install_label_head`: {share:.0%} of the real tokens); its model "
            "FLOPs count the head there only. The notebook projects every position."
        )
    notes_mfu = [
        "- MFU = model FLOPs per token x real tokens/s / the bf16 matmul rate measured in this "
        f"run ({sizes.matmul_n}x{sizes.matmul_n} bf16 `torch.mm` loop, best of 3: "
        f"{peak / 1e9:.1f} GFLOP/s).",
        "- Model FLOPs per token are counted on every linear layer's call (LoRA A/B and the "
        "tied LM head included): forward 2|W|, plus 2|W| for the input gradient only where that "
        "input requires a gradient (nothing below the lowest LoRA block does, so the "
        f"{ours['frozen_blocks']} frozen lower blocks cost no backward), plus 2|W| for the "
        "weight gradient only where W is trained. Full fine-tuning gives 6N. Attention-score "
        "matmuls are not counted.",
        f"- Counting padded tokens too (hardware FLOP utilisation): ours {mfu_padded:.1%}, "
        f"notebook {base_mfu_padded:.1%}. The notebook's MFU on real tokens, against the same "
        f"bf16 rate: {base_mfu:.1%}.",
    ]
    record(
        report.Result(
            "training throughput (SFT)",
            "tokens/s",
            ours["tokens_per_s"],
            base["tokens_per_s"],
            ratio,
            f">= {TRAIN_TARGET}x",
            ratio >= TRAIN_TARGET,
            notes_train,
        )
    )
    if mfu < MFU_TARGET:
        notes_mfu += ["", "Below target; where our step's time goes:", ""]
        notes_mfu += profile_our_step(
            model_path, cfg, rows.iloc[warmup * batch : (warmup + 1) * batch]
        )
        gc.collect()
    record(
        report.Result(
            "training MFU (ours, real tokens)",
            "%",
            100 * mfu,
            100 * base_mfu,
            None,
            f">= {MFU_TARGET:.0%}",
            mfu >= MFU_TARGET,
            notes_mfu,
        )
    )


# -- DPO ----------------------------------------------------------------------------------------


def head_block() -> int:
    from study import head

    return head.BLOCK


def whole_vocabulary_logprobs(hidden, head_module, targets, stats=False):
    """``study.head.token_logprobs`` done at once: every labelled position's fp32 logits in one
    tensor, differentiated by autograd (the study's head before it worked in blocks)."""
    logits = head_module(hidden).float()
    log_z = torch.logsumexp(logits, dim=-1)
    log_probs = logits.gather(1, targets[:, None])[:, 0] - log_z
    if not stats:
        return log_probs, None
    with torch.no_grad():
        probs = torch.softmax(logits, dim=-1)
        extra = {
            "entropy": log_z - (probs * logits).sum(dim=-1),
            "mean_logits": logits.mean(dim=-1),
            "is_top1": logits.argmax(dim=-1) == targets,
        }
    return log_probs, extra


def _dpo_timed(
    model_path, cfg, rows, warmup, steps, out, monkeypatch, stock=False, states=False, whole=False
):
    """The study's DPO arm on ``rows``: reference pass, then ``warmup + steps`` timed steps.

    ``stock`` keeps TRL's own output head (what TRL runs on a device without Triton); ``whole``
    runs the study's head on all labelled positions at once instead of in blocks; ``states``
    has the reference pass keep the frozen lower blocks' states and the arm read them
    (``study/frozen.py``) instead of running those blocks.
    """
    from datasets import Dataset

    from study import head, training
    from study.models import load_tokenizer

    keep = training.frozen_states_path(out, "reference", cfg) if states else None
    with monkeypatch.context() as patch:
        if stock:
            patch.setattr(training, "install_logprob_head", lambda model: False)
        if whole:
            patch.setattr(head, "token_logprobs", whole_vocabulary_logprobs)
        tok = load_tokenizer(model_path)
        tok.padding_side = "right"
        t = time.perf_counter()
        if keep is None:
            reference = training.reference_logps(model_path, rows, cfg, out / "reference")
        else:
            reference = training.reference_logps(model_path, rows, cfg, out / "reference", keep)
        reference_s = time.perf_counter() - t
        clock = _StepClock()
        # every step's loss is logged, so the variants' losses can be compared step by step
        overrides = {**_bench_overrides(out, warmup + steps), "logging_steps": 1}
        args = training._dpo_args(cfg, out, **overrides)
        model = _study_trainable(model_path, cfg)
        stand_in = None
        if keep is not None and keep.exists():  # a model with no frozen block keeps none
            from study import frozen

            n_frozen = frozen.n_frozen_blocks(model, cfg.train.lora_top_layers)
            stand_in = frozen.install(training._body(model), n_frozen, frozen.load(keep))
        trainer = training._dpo_trainer_class()(
            study_config=cfg,
            model=model,
            args=args,
            train_dataset=Dataset.from_list(training.preference_rows(rows, None, tok, cfg)),
            processing_class=tok,
            reference=reference,
            callbacks=[clock],
        )
        trainer.train()
    assert len(clock.ends) == warmup + steps, (len(clock.ends), warmup, steps)
    return {
        "reference_s": reference_s,
        "reference": reference,
        "step_s": (clock.ends[-1] - clock.ends[warmup - 1]) / steps,
        "read": None if stand_in is None else (stand_in.hits, stand_in.misses),
        "losses": [h["loss"] for h in trainer.state.log_history if "loss" in h],
    }


def test_dpo_step(benchmark, model_path, cpu_config, study_data, sizes, tmp_path, monkeypatch):
    cfg = cpu_config
    batch = cfg.train.batch_size
    warmup, steps = sizes.train_warmup_steps, sizes.train_steps
    rows = study_data.train.iloc[: (warmup + steps) * batch]
    timed = (model_path, cfg, rows, warmup, steps)
    ours = benchmark.pedantic(
        _dpo_timed,
        args=(*timed, tmp_path / "ours", monkeypatch),
        kwargs={"states": True},
        rounds=1,
        iterations=1,
    )
    gc.collect()
    blocks = _dpo_timed(*timed, tmp_path / "blocks", monkeypatch)
    gc.collect()
    whole = _dpo_timed(*timed, tmp_path / "whole", monkeypatch, whole=True)
    gc.collect()
    stock = _dpo_timed(*timed, tmp_path / "stock", monkeypatch, stock=True)
    gc.collect()
    drift = max(
        abs(a - b)
        for column in ("ref_chosen_logps", "ref_rejected_logps")
        for a, b in zip(blocks["reference"][column], stock["reference"][column])
    )
    head_ratio = stock["step_s"] / blocks["step_s"]
    block_ratio = whole["step_s"] / blocks["step_s"]
    states_ratio = blocks["step_s"] / ours["step_s"]
    # Per DPO arm: the stock way runs its own reference pass; ours runs one for both arms.
    ref_ratio = 2 * stock["reference_s"] / ours["reference_s"]
    n_pairs = len(rows)
    print(
        f"\nDPO: step {ours['step_s']:.2f}s, blocks run {blocks['step_s']:.2f}s, head at once "
        f"{whole['step_s']:.2f}s, stock {stock['step_s']:.2f}s; reference for two arms "
        f"{ours['reference_s']:.1f}s vs {2 * stock['reference_s']:.1f}s"
    )
    common = (
        f"- The cpu profile's DPO arm (LoRA on the top {cfg.train.lora_top_layers} blocks, "
        f"bf16 autocast, batch {batch} pairs) on its first {n_pairs} training pairs, "
        f"{warmup} warm-up + {steps} timed steps each."
    )
    record(
        report.Result(
            "DPO optimizer step (output head)",
            "pairs/s",
            batch / blocks["step_s"],
            batch / stock["step_s"],
            head_ratio,
            "> 1x (no target set)",
            head_ratio > 1,
            [
                common,
                f"- Both run every block; ours {blocks['step_s']:.2f} s per step with the "
                f"study's head, stock {stock['step_s']:.2f} s per step with TRL's.",
                "- TRL projects every position through the output head in vocabulary tiles and, "
                "without Triton, folds each tile with elementwise torch operations forward and "
                "backward; the study's head projects only labelled positions, a block of "
                f"{head_block()} at a time (`study/head.py`).",
            ],
        )
    )
    loss_gap_head = max(abs(a - b) for a, b in zip(blocks["losses"], whole["losses"]))
    record(
        report.Result(
            "DPO optimizer step (output head in blocks)",
            "pairs/s",
            batch / blocks["step_s"],
            batch / whole["step_s"],
            block_ratio,
            "> 1x (no target set)",
            block_ratio > 1,
            [
                common,
                f"- Both run every block and project only labelled positions; ours "
                f"{blocks['step_s']:.2f} s per step in blocks of {head_block()} positions, "
                f"the whole labelled set at once (fp32 logits of every labelled position, "
                f"autograd through a log-softmax) {whole['step_s']:.2f} s per step.",
                f"- Largest difference between the two runs' logged losses: {loss_gap_head:.2e} "
                "(the hidden states' gradient is rounded in another order).",
            ],
        )
    )
    record(
        report.Result(
            "DPO reference log-probabilities (two arms)",
            "s",
            ours["reference_s"],
            2 * stock["reference_s"],
            ref_ratio,
            "> 1x (no target set)",
            ref_ratio > 1,
            [
                common,
                f"- Ours: one pass over the {n_pairs} pairs with the study's head, keeping the "
                f"frozen blocks' states, shared by `dpo-human` and `dpo-ai`: "
                f"{ours['reference_s']:.1f} s (without keeping the states: "
                f"{blocks['reference_s']:.1f} s). Stock: one pass with TRL's head per arm, "
                f"measured once ({stock['reference_s']:.1f} s) and counted twice.",
                f"- Largest difference between the study's and TRL's log-probabilities: "
                f"{drift:.2e} nats (sums over a reply's tokens).",
            ],
        )
    )
    if ours["read"] is None:
        return  # every block of this model trains
    read, run = ours["read"]
    assert len(ours["losses"]) == len(blocks["losses"]) == warmup + steps
    loss_gap = max(abs(a - b) for a, b in zip(ours["losses"], blocks["losses"]))
    record(
        report.Result(
            "DPO optimizer step (frozen blocks' states read)",
            "pairs/s",
            batch / ours["step_s"],
            batch / blocks["step_s"],
            states_ratio,
            "> 1x (no target set)",
            states_ratio > 1,
            [
                common,
                f"- Ours reads the states entering the lowest trained block, kept by the "
                f"reference pass, for {read} sequences ({run} ran the frozen blocks): "
                f"{ours['step_s']:.2f} s per step; running all blocks: {blocks['step_s']:.2f} s.",
                f"- Largest difference between the two runs' logged losses: {loss_gap:.2e}.",
            ],
        )
    )


def _padded_per_epoch(lengths, order, batch: int, rows_per_example: int) -> int:
    """Tokens the model computes in one epoch when each batch is padded to its longest row."""
    return sum(
        rows_per_example * len(order[k : k + batch]) * max(lengths[i] for i in order[k : k + batch])
        for k in range(0, len(order), batch)
    )


def test_length_grouping(benchmark, model_path, cpu_config, study_data, tmp_path):
    """Padded tokens per epoch: length-grouped batches against uniformly shuffled ones."""
    from datasets import Dataset

    from study import training
    from study.models import load_tokenizer
    from study.preprocess import sft_example

    cfg = cpu_config
    batch = cfg.train.batch_size
    if not cfg.train.group_by_length:
        pytest.skip("the cpu profile does not group batches by length")
    rows = study_data.train
    tok = load_tokenizer(model_path)
    tok.padding_side = "right"
    sft = [
        len(sft_example(tok, p, r, cfg.train.max_length, cfg.train.max_reply_tokens)["input_ids"])
        for p, r in zip(rows["prompt"], rows["chosen"])
    ]
    pairs = training.preference_rows(rows, None, tok, cfg)
    # Placeholder reference values: only the tokenized lengths are used. TRL may end the replies
    # with EOS before looking them up, so both spellings are listed.
    eos = tok.eos_token
    both = [(d, end) for d in pairs for end in ("", eos)]
    reference = {
        "prompt": [d["prompt"] for d, _ in both],
        "chosen": [d["chosen"] + end for d, end in both],
        "rejected": [d["rejected"] + end for d, end in both],
        "ref_chosen_logps": [0.0] * len(both),
        "ref_rejected_logps": [0.0] * len(both),
    }
    trainer = training._dpo_trainer_class()(  # tokenizes the pairs as a DPO arm does
        study_config=cfg,
        model=_study_trainable(model_path, cfg),
        args=training._dpo_args(cfg, tmp_path),
        train_dataset=Dataset.from_list(pairs),
        processing_class=tok,
        reference=reference,
    )
    ds = trainer.train_dataset
    dpo = [min(n, cfg.train.max_length) for n in training.example_lengths(ds)]
    dpo_real = sum(
        min(len(p) + len(c), cfg.train.max_length) + min(len(p) + len(r), cfg.train.max_length)
        for p, c, r in zip(ds["prompt_ids"], ds["chosen_ids"], ds["rejected_ids"])
    )
    notes = [f"- The cpu profile's {len(rows)} training pairs, batches of {batch}, one epoch."]
    padded = {}
    for name, lengths, per, real in (("SFT", sft, 1, sum(sft)), ("DPO", dpo, 2, dpo_real)):
        generator = torch.Generator().manual_seed(cfg.train.seed)
        shuffled = torch.randperm(len(lengths), generator=generator).tolist()
        sampler = training.grouped_sampler(lengths, cfg)
        if name == "DPO":  # pytest-benchmark's timing: drawing one epoch's order
            grouped = benchmark.pedantic(list, args=(sampler,), rounds=1, iterations=1)
        else:
            grouped = list(sampler)
        padded[name] = (
            _padded_per_epoch(lengths, grouped, batch, per),
            _padded_per_epoch(lengths, shuffled, batch, per),
        )
        ours, base = padded[name]
        notes.append(
            f"- {name}: {real:,} real tokens; padded to each batch's longest row: {ours:,} "
            f"grouped ({real / ours:.0%} real), {base:,} shuffled ({real / base:.0%} real), "
            f"{base / ours:.2f}x."
        )
    notes.append(
        "- Grouping (transformers' length-grouped order, seeded, formed at the global batch) "
        "sorts random mega-batches of about 50 batches by length; the order of the mega-batches "
        "stays random. The model computes on padded tokens, so the ratio bounds what grouping "
        "saves in the body of every training step (the DPO reference pass sorts all pairs)."
    )
    ours, base = padded["DPO"]
    record(
        report.Result(
            "padded DPO training tokens per epoch",
            "tokens",
            ours,
            base,
            base / ours,
            "> 1x (no target set)",
            base > ours,
            notes,
        )
    )


# -- generation ---------------------------------------------------------------------------------


def notebook_generate(model, tokenizer, texts: list[str], decoding) -> list[dict]:
    """The notebook's loop: one prompt at a time, ``model.generate`` greedy, no batching."""
    from study.generation import cut_reply

    eos = tokenizer.eos_token_id
    out = []
    for text in texts:
        enc = tokenizer(text, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            ids = model.generate(
                **enc,
                do_sample=False,
                num_beams=1,
                max_new_tokens=decoding.max_new_tokens,
                repetition_penalty=decoding.repetition_penalty,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=eos,
                temperature=None,
                top_k=None,
                top_p=None,
            )
        row = ids[0, enc["input_ids"].shape[1] :].tolist()
        is_eos = eos in row
        tokens = row[: row.index(eos)] if is_eos else row
        reply = cut_reply(tokenizer.decode(tokens, skip_special_tokens=True))
        out.append({"reply": reply, "n_tokens": len(tokens), "is_eos": is_eos})
    return out


def _same(a: list[dict], b: list[dict]) -> int:
    return sum(x["reply"] == y["reply"] and x["n_tokens"] == y["n_tokens"] for x, y in zip(a, b))


def test_generation_batched(benchmark, model_path, cpu_config, sizes):
    from study import generation, models
    from study.prompts import scenario_prompts

    prompts = scenario_prompts(sizes.gen_per_scenario)
    decoding = cpu_config.eval.q2  # the scenario prompts' decoding (notebook Q2)
    if sizes.gen_max_new_tokens:
        decoding = type(decoding)(
            **{**decoding.__dict__, "max_new_tokens": sizes.gen_max_new_tokens}
        )
    batch_size = len(prompts)  # all 48 in one batch, sorted by length
    reqs = [generation.Request(p.id, p.text, 0, 0) for p in prompts]
    texts = [p.text for p in prompts]
    tok = models.load_tokenizer(model_path)
    model = models.load_model(model_path)  # fp32 weights, as the pipeline loads them

    def ours(precision: str):
        ctx = models.autocast("cpu", precision)
        return generation.generate(
            model, tok, reqs, decoding, greedy=True, batch_size=batch_size, autocast=ctx
        )

    # warm-up of both paths (first-call allocations, kernel selection)
    short = type(decoding)(**{**decoding.__dict__, "max_new_tokens": 2})
    generation.generate(
        model,
        tok,
        reqs[:4],
        short,
        greedy=True,
        batch_size=4,
        autocast=models.autocast("cpu", "bf16"),
    )
    notebook_generate(model, tok, texts[:1], short)

    timing = {}

    def timed_ours():
        t = time.perf_counter()
        got = ours("bf16")
        timing["ours"] = time.perf_counter() - t
        return got

    got_bf16 = benchmark.pedantic(timed_ours, rounds=1, iterations=1)
    t = time.perf_counter()
    got_base = notebook_generate(model, tok, texts, decoding)
    timing["notebook"] = time.perf_counter() - t
    t = time.perf_counter()
    got_fp32 = ours("fp32")
    timing["ours_fp32"] = time.perf_counter() - t

    n = len(prompts)
    ratio = timing["notebook"] / timing["ours"]
    ratio_fp32 = timing["notebook"] / timing["ours_fp32"]
    same_bf16, same_fp32 = _same(got_bf16, got_base), _same(got_fp32, got_base)
    new_tokens = {
        "ours": sum(g["n_tokens"] for g in got_bf16),
        "notebook": sum(g["n_tokens"] for g in got_base),
    }
    benchmark.extra_info.update(
        ours_s=timing["ours"], notebook_s=timing["notebook"], ratio=ratio, same_bf16=same_bf16
    )
    print(
        f"\ngeneration: ours {timing['ours']:.1f}s, notebook {timing['notebook']:.1f}s, ratio "
        f"{ratio:.2f}x; identical greedy replies bf16 {same_bf16}/{n}, fp32 {same_fp32}/{n}"
    )
    notes = [
        f"- {n} scenario prompts (`scenario_prompts({sizes.gen_per_scenario})`), greedy, "
        f"max_new_tokens {decoding.max_new_tokens}, repetition penalty "
        f"{decoding.repetition_penalty} (the scenario prompts' decoding), the same fp32 model.",
        f"- Ours: `study.generation.generate`, one batch of {batch_size} sorted by length, bf16 "
        f"autocast: {timing['ours']:.2f} s ({new_tokens['ours']} new tokens). The notebook: "
        f"`model.generate` one prompt at a time, fp32: {timing['notebook']:.2f} s "
        f"({new_tokens['notebook']} new tokens).",
        f"- Identical greedy replies (text and token count): bf16 batched vs notebook "
        f"{same_bf16}/{n}; fp32 batched vs notebook {same_fp32}/{n}. Our batched greedy in fp32 "
        f"took {timing['ours_fp32']:.2f} s ({ratio_fp32:.2f}x the notebook's speed).",
    ]
    if same_fp32 < n:
        notes.append(
            "- Replies that differ even in fp32 differ by left padding in the batch: the padded "
            "matmuls sum in another order, and near-ties of the greedy argmax can flip."
        )
    record(
        report.Result(
            f"greedy generation ({n} prompts)",
            "prompts/s",
            n / timing["ours"],
            n / timing["notebook"],
            ratio,
            f">= {GEN_TARGET:g}x",
            ratio >= GEN_TARGET,
            notes,
        )
    )


def test_generation_cache(benchmark, model_path, cpu_config, study_data, sizes, monkeypatch):
    """Sampled held-out replies with the study's KV cache against transformers' stock one."""
    import types

    from transformers.cache_utils import DynamicCache

    from study import generation, models, pipeline, prefix

    cfg = cpu_config
    tok = models.load_tokenizer(model_path)
    ctx = types.SimpleNamespace(cfg=cfg)
    heldout = [p for p in pipeline.eval_prompts(ctx, study_data, tok) if p.prompt_set == "heldout"]
    chosen = heldout[: sizes.cache_prompts]
    k = cfg.eval.samples_per_prompt
    reqs = [
        generation.Request(p.id, p.text, s, generation.sample_seed(cfg.seed, "base", p.id, s))
        for p in chosen
        for s in range(k)
    ]
    decoding = cfg.eval.q1
    if sizes.gen_max_new_tokens:
        decoding = type(decoding)(
            **{**decoding.__dict__, "max_new_tokens": sizes.gen_max_new_tokens}
        )
    model = models.load_model(model_path)
    model.requires_grad_(False)
    models.cast_frozen_linears(model, "bf16")  # as the pipeline prepares an arm for inference

    def run():
        t = time.perf_counter()
        got = generation.generate(
            model,
            tok,
            reqs,
            decoding,
            batch_size=cfg.eval.batch_size,
            autocast=models.autocast("cpu", "bf16"),
        )
        return got, time.perf_counter() - t

    run()  # warm-up: first-call allocations and kernel selection
    ours, ours_s = benchmark.pedantic(run, rounds=1, iterations=1)
    with monkeypatch.context() as patch:
        for module in (prefix, generation):
            patch.setattr(module, "new_cache", lambda reserve=None: DynamicCache())
        stock, stock_s = run()
    ratio = stock_s / ours_s
    same = _same(ours, stock)
    n = len(reqs)
    print(f"\nKV cache: ours {ours_s:.1f}s, stock {stock_s:.1f}s, {ratio:.2f}x; same {same}/{n}")
    record(
        report.Result(
            f"sampled generation, KV cache ({n} replies)",
            "replies/s",
            n / ours_s,
            n / stock_s,
            ratio,
            "> 1x (no target set)",
            ratio > 1,
            [
                f"- The first {len(chosen)} held-out prompts x {k} samples, the cpu profile's "
                f"sampled decoding (max_new_tokens {decoding.max_new_tokens}), batches of "
                f"{cfg.eval.batch_size}, bf16 autocast, the same decoding loop "
                "(`study.generation.generate`).",
                f"- Ours (`study.prefix.BufferedLayer`: each step writes its position into spare "
                f"room, keys kept in bf16): {ours_s:.2f} s. Stock (`DynamicCache`: the whole "
                f"cache concatenated anew every step, keys in fp32 after the rotary embedding): "
                f"{stock_s:.2f} s.",
                f"- Identical replies (text and token count): {same}/{n}.",
            ],
        )
    )


# -- labeling -----------------------------------------------------------------------------------


def test_labeling(benchmark, model_path, cpu_config, study_data, sizes, monkeypatch):
    """AI labels with the judge's instructions run once for all pairs, against once per batch."""
    from study import labeler, models

    cfg = cpu_config
    pairs = study_data.train.head(sizes.label_pairs)
    tok = models.load_tokenizer(model_path)
    model = models.load_model(model_path)
    model.requires_grad_(False)
    models.cast_frozen_linears(model, "bf16")  # as the label stage prepares the judge

    def run():
        t = time.perf_counter()
        got = labeler.label_pairs(model, tok, pairs, cfg.labeler, models.autocast("cpu", "bf16"))
        return got, time.perf_counter() - t

    run()  # warm-up
    ours, ours_s = benchmark.pedantic(run, rounds=1, iterations=1)
    with monkeypatch.context() as patch:  # no common text: the instructions open every head
        patch.setattr(labeler, "JUDGE_INSTRUCTIONS", "")
        stock, stock_s = run()
    ratio = stock_s / ours_s
    diff = float((ours["pref_chosen"] - stock["pref_chosen"]).abs().max())
    same_side = int(((ours["pref_chosen"] > 0.5) == (stock["pref_chosen"] > 0.5)).sum())
    n = len(pairs)
    print(
        f"\nlabeling: ours {ours_s:.1f}s, stock {stock_s:.1f}s, {ratio:.2f}x; max diff {diff:.2e}"
    )
    record(
        report.Result(
            f"AI labeling ({n} pairs, both orders)",
            "pairs/s",
            n / ours_s,
            n / stock_s,
            ratio,
            "> 1x (no target set)",
            ratio > 1,
            [
                f"- The first {n} training pairs of the cpu profile, judged by the base model in "
                f"both orders (`study.labeler.label_pairs`), batches of {cfg.labeler.batch_size} "
                "pairs, bf16 autocast.",
                f"- Ours: the judge's instructions ({len(labeler.JUDGE_INSTRUCTIONS)} characters, "
                f"the same for every pair) run once and their cache copied to every batch: "
                f"{ours_s:.2f} s. Baseline: the instructions run with each pair's conversation: "
                f"{stock_s:.2f} s.",
                f"- Largest difference in the AI preference: {diff:.2e}; pairs given the same "
                f"side: {same_side}/{n}.",
            ],
        )
    )


# -- scoring ------------------------------------------------------------------------------------


def _component_times(replies: list[str]) -> list[tuple[str, float]]:
    from study import scoring

    parts = [
        ("polarity (TextBlob)", lambda: [scoring.polarity(t) for t in replies]),
        ("vader", lambda: [scoring.vader(t) for t in replies]),
        ("offensive (profanity-check)", lambda: scoring.offensive(replies)),
        (
            "keyword rules",
            lambda: [
                (scoring.seed_harmless(t), scoring.seed_helpful(t), scoring.harmless_word(t))
                for t in replies
            ],
        ),
    ]
    out = []
    for name, fn in parts:
        t = time.perf_counter()
        fn()
        out.append((name, time.perf_counter() - t))
    return out


def _profile(replies: list[str], top: int = 12) -> str:
    from study import scoring

    prof = cProfile.Profile()
    prof.enable()
    scoring.score_replies(replies)
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).strip_dirs().sort_stats("cumulative").print_stats(top)
    return buf.getvalue()


def test_scoring_throughput(benchmark, cpu_config, sizes):
    from study import data, scoring

    pool = data.load_pairs(cpu_config.data.source).frame
    n = min(sizes.score_replies, len(pool))
    replies = data.seeded_sample(pool, n, 42)["chosen"].tolist()
    scoring.score_replies(replies[:20])  # warm-up: loads the lexicons and the classifier

    timing = {}

    def timed():
        t = time.perf_counter()
        out = scoring.score_replies(replies)
        timing["s"] = time.perf_counter() - t
        return out

    scores = benchmark.pedantic(timed, rounds=1, iterations=1)
    assert len(scores) == n
    rate = n / timing["s"]
    benchmark.extra_info.update(replies_per_s=rate)
    print(f"\nscoring: {rate:.0f} replies/s on {n} replies")
    parts = _component_times(replies)
    total = sum(s for _, s in parts)
    notes = [
        f"- `study.scoring.score_replies` on {n} real chosen replies (seeded sample of the "
        f"HH-RLHF pairs), after a 20-reply warm-up: {timing['s']:.2f} s.",
        "- Time by component (each run alone on the same replies): "
        + "; ".join(f"{name} {s:.2f} s ({s / total:.0%})" for name, s in parts)
        + ".",
    ]
    if rate < SCORE_TARGET:
        profile = _profile(replies)
        notes += ["", "Below target; cProfile of one call (cumulative time):", "", "```"]
        notes += [line for line in profile.splitlines() if line.strip()][:40]
        notes += ["```"]
    record(
        report.Result(
            f"scoring ({n} replies)",
            "replies/s",
            rate,
            None,
            None,
            f">= {SCORE_TARGET:,.0f} replies/s",
            rate >= SCORE_TARGET,
            notes,
        )
    )
