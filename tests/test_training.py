import math

import pandas as pd
import pytest
import torch

from study.data import prepare
from study.models import load_model
from study.training import load_arm, train_dpo, train_sft

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def rows():
    from study.config import DataConfig

    return prepare(DataConfig(source="synthetic", eval_split=None, sample_size=8)).train


def _logits(model, tok):
    ids = tok("\n\nHuman: tea?\n\nAssistant:", return_tensors="pt")
    with torch.no_grad():
        return model(**ids).logits


def test_base_is_untouched_and_arms_differ(tmp_path, tiny_path, tiny_tok, rows, smoke_config):
    base = load_model(tiny_path)
    before = _logits(base, tiny_tok)
    train_sft("sft-chosen", tiny_path, rows, smoke_config, tmp_path / "c")
    train_sft("sft-rejected", tiny_path, rows, smoke_config, tmp_path / "r")
    assert torch.equal(_logits(base, tiny_tok), before)
    assert torch.equal(_logits(load_model(tiny_path), tiny_tok), before)
    a = load_arm(tmp_path / "c", tiny_path).state_dict()
    b = load_arm(tmp_path / "r", tiny_path).state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], base.state_dict()[k]) for k in a)


def _weights(path, base):
    return load_arm(path, base).state_dict()


def test_dpo_identical_labels_identical_weights_flipped_differ(
    tmp_path, tiny_path, rows, smoke_config
):
    same = pd.Series([True] * len(rows))
    flipped = pd.Series([i % 2 == 0 for i in range(len(rows))])
    h = train_dpo("dpo-human", tiny_path, rows, smoke_config, tmp_path / "h")
    a = train_dpo("dpo-ai", tiny_path, rows, smoke_config, tmp_path / "a", same)
    f = train_dpo("dpo-ai", tiny_path, rows, smoke_config, tmp_path / "f", flipped)
    wh, wa, wf = (_weights(tmp_path / n, tiny_path) for n in "haf")
    assert all(torch.equal(wh[k], wa[k]) for k in wh)
    assert any(not torch.equal(wh[k], wf[k]) for k in wh)
    assert a["n_flipped"] == 0 and f["n_flipped"] == len(rows) // 2
    assert math.isclose(h["curve"][0]["loss"], math.log(2), rel_tol=1e-3)


def _toy(n, same=False):
    prompts = [f"\n\nHuman: Tell me about tea {i}.\n\nAssistant:" for i in range(n)]
    chosen = [" Tea is a warm drink people enjoy."] * n
    rejected = chosen if same else [" No. Go away."] * n
    return pd.DataFrame({"prompt": prompts, "chosen": chosen, "rejected": rejected})


def test_dpo_on_equal_replies_has_loss_ln2(tmp_path, tiny_path, smoke_config):
    summary = train_dpo("dpo-human", tiny_path, _toy(4, same=True), smoke_config, tmp_path / "e")
    assert summary["curve"][0]["loss"] == pytest.approx(math.log(2), abs=1e-4)


def test_dpo_learns_and_leaves_the_reference_alone(tmp_path, tiny_path, smoke_config):
    import dataclasses

    from study.models import weights_hash

    cfg = dataclasses.replace(
        smoke_config,
        train=dataclasses.replace(smoke_config.train, epochs=4.0),
        dpo=dataclasses.replace(smoke_config.dpo, learning_rate=5e-3),
    )
    before = weights_hash(tiny_path)
    summary = train_dpo("dpo-human", tiny_path, _toy(8), cfg, tmp_path / "d")
    assert summary["curve"][-1]["loss"] < math.log(2) - 0.05
    assert weights_hash(tiny_path) == before
    base, policy = load_model(tiny_path).state_dict(), _weights(tmp_path / "d", tiny_path)
    assert any(not torch.equal(base[k], policy[k]) for k in base)


def _bf16_lora(cfg):
    import dataclasses

    return dataclasses.replace(
        cfg,
        model=dataclasses.replace(cfg.model, precision="bf16"),
        train=dataclasses.replace(cfg.train, use_lora=True),
    )


def test_precast_frozen_weights_give_the_same_numbers(tiny_path, tiny_tok, smoke_config):
    from study.models import cast_frozen_linears
    from study.training import _trainable

    plain, cast = load_model(tiny_path), load_model(tiny_path)
    cast.requires_grad_(False)
    assert cast_frozen_linears(cast, "bf16") > 0
    assert cast_frozen_linears(load_model(tiny_path), "fp32") == 0
    assert cast.get_input_embeddings().weight.dtype == torch.float32  # shared with the head
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(_logits(plain, tiny_tok), _logits(cast, tiny_tok))
    policy = _trainable(tiny_path, _bf16_lora(smoke_config))
    dtypes = {p.dtype for p in policy.parameters() if p.requires_grad}
    assert dtypes == {torch.float32}  # adapters train in fp32
    assert any(p.dtype == torch.bfloat16 for p in policy.parameters() if not p.requires_grad)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_logprob_head_agrees_with_trls(tiny_path, tiny_tok, precision):
    from trl.trainer.utils import add_fused_lm_head

    from study.models import autocast
    from study.training import install_logprob_head

    texts = ["\n\nHuman: tea?\n\nAssistant: Tea is a drink.", "\n\nHuman: hi\n\nAssistant: Hello"]
    enc = tiny_tok(texts, return_tensors="pt", padding=True)
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    labels[:, :4] = -100  # the prompt carries no label
    outs, grads = [], []
    for ours in (False, True):
        model = load_model(tiny_path)
        add_fused_lm_head(model, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
        if ours:
            assert install_logprob_head(model)
            assert not install_logprob_head(model)  # once only
        with autocast("cpu", precision):
            out = model(**enc, labels=labels, fused_lm_head=True)
        out.log_probs.sum().backward()
        outs.append(out)
        grads.append(model.get_output_embeddings().weight.grad.clone())
    trl, ours = outs
    tol = 1e-5 if precision == "fp32" else 1e-3
    for field in ("log_probs", "entropy", "mean_logits"):
        assert torch.allclose(getattr(ours, field), getattr(trl, field), atol=tol), field
    assert torch.equal(ours.is_top1, trl.is_top1)
    assert torch.equal(ours.label_mask, trl.label_mask)
    assert (ours.log_probs[~ours.label_mask] == 0).all()
    # TRL sums the head's gradient in fp32, autocast in bf16: equal up to bf16 rounding
    drift = (grads[1] - grads[0]).norm() / grads[0].norm()
    assert drift < (1e-5 if precision == "fp32" else 1e-2)
    plain = model(**enc)  # without fused_lm_head the model's own forward runs
    assert plain.logits.shape[-1] == model.config.vocab_size


def test_shared_reference_serves_both_label_directions(tmp_path, tiny_path, rows, smoke_config):
    from datasets import Dataset

    from study.models import load_tokenizer
    from study.training import (
        _dpo_args,
        _dpo_trainer_class,
        _trainable,
        attach_reference,
        preference_rows,
        reference_logps,
    )

    cfg = _bf16_lora(smoke_config)
    shared = reference_logps(tiny_path, rows, cfg, tmp_path / "w")
    tok = load_tokenizer(tiny_path)
    tok.padding_side = "right"
    flipped = pd.Series([i % 3 == 0 for i in range(len(rows))])
    for prefer in (None, flipped):
        trainer = _dpo_trainer_class()(  # the trainer's own pass, on the policy an arm builds
            study_config=cfg,
            model=_trainable(tiny_path, cfg),
            args=_dpo_args(cfg, tmp_path / "t"),
            train_dataset=Dataset.from_list(preference_rows(rows, prefer, tok, cfg)),
            processing_class=tok,
        )
        own = trainer.train_dataset
        columns = ["ref_chosen_logps", "ref_rejected_logps"]
        got = attach_reference(own.remove_columns(columns), shared)
        for column in columns:
            assert got[column] == own[column]
    assert shared["ref_chosen_logps"] != shared["ref_rejected_logps"]


def test_a_reference_from_other_pairs_is_refused(tmp_path, tiny_path, rows, smoke_config):
    from datasets import Dataset

    from study.training import attach_reference, reference_logps

    shared = reference_logps(tiny_path, rows.iloc[:4], smoke_config, tmp_path / "w")
    other = Dataset.from_list(
        [{"prompt": "\n\nHuman: hi\n\nAssistant:", "chosen": " Hello.", "rejected": " Go."}]
    )
    with pytest.raises(ValueError, match="lack 1 of 1 training pairs"):
        attach_reference(other, shared)


def test_dpo_trains_the_same_from_a_stored_reference(tmp_path, tiny_path, rows, smoke_config):
    from study.store import read_json, write_json
    from study.training import reference_logps

    cfg = _bf16_lora(smoke_config)
    write_json(tmp_path / "ref.json", reference_logps(tiny_path, rows, cfg, tmp_path / "w"))
    stored = read_json(tmp_path / "ref.json")
    flipped = pd.Series([i % 2 == 0 for i in range(len(rows))])
    own = train_dpo("dpo-ai", tiny_path, rows, cfg, tmp_path / "own", flipped)
    got = train_dpo("dpo-ai", tiny_path, rows, cfg, tmp_path / "got", flipped, reference=stored)
    assert [c["loss"] for c in got["curve"]] == [c["loss"] for c in own["curve"]]
    wo, wg = _weights(tmp_path / "own", tiny_path), _weights(tmp_path / "got", tiny_path)
    assert all(torch.equal(wo[k], wg[k]) for k in wo)


@pytest.mark.parametrize("n_items", [None, 7])
def test_label_head_gives_the_models_own_loss_and_gradients(tiny_path, tiny_tok, n_items):
    from study.training import install_label_head

    texts = ["\n\nHuman: tea?\n\nAssistant: Tea is a drink.", "\n\nHuman: hi\n\nAssistant: Hello"]
    enc = tiny_tok(texts, return_tensors="pt", padding=True)
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    labels[:, :4] = -100  # the prompt carries no label
    extra = {} if n_items is None else {"num_items_in_batch": torch.tensor(n_items)}
    losses, grads = [], []
    for ours in (False, True):
        model = load_model(tiny_path)
        if ours:
            assert install_label_head(model)
            assert not install_label_head(model)  # once only
        loss = model(**enc, labels=labels, **extra).loss
        loss.backward()
        losses.append(loss.detach())
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    assert torch.allclose(losses[0], losses[1], atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))
    model = load_model(tiny_path)
    install_label_head(model)
    assert model(**enc).logits.shape[:2] == enc["input_ids"].shape  # inference is untouched


def test_lora_starts_the_same_whatever_the_process_drew_before(tiny_path, smoke_config):
    from study.training import _trainable

    cfg = _bf16_lora(smoke_config)
    starts = []
    for earlier_draws in (0, 7):
        torch.rand(earlier_draws)  # another stage used the global generator
        model = _trainable(tiny_path, cfg)
        starts.append({k: v.clone() for k, v in model.named_parameters() if v.requires_grad})
    assert starts[0] and starts[0].keys() == starts[1].keys()
    assert all(torch.equal(starts[0][k], starts[1][k]) for k in starts[0])


def _padded_tokens(lengths, order, batch):
    return sum(
        batch * max(lengths[i] for i in order[k : k + batch]) for k in range(0, len(order), batch)
    )


def test_length_grouped_batches_pad_less_and_replay_by_seed_and_epoch(smoke_config):
    import dataclasses

    from study.training import grouped_sampler

    cfg = dataclasses.replace(
        smoke_config, train=dataclasses.replace(smoke_config.train, batch_size=8)
    )
    lengths = [
        int(x) for x in torch.randint(20, 128, (1000,), generator=torch.Generator().manual_seed(1))
    ]
    sampler = grouped_sampler(lengths, cfg)
    first = list(sampler)
    assert sorted(first) == list(range(1000))
    assert list(grouped_sampler(lengths, cfg)) == first  # same seed, same epoch: same batches
    sampler.set_epoch(1)
    assert list(sampler) != first
    shuffled = torch.randperm(1000, generator=torch.Generator().manual_seed(0)).tolist()
    assert _padded_tokens(lengths, first, 8) < 0.8 * _padded_tokens(lengths, shuffled, 8)


def test_example_lengths_count_the_longer_reply_of_a_pair():
    from datasets import Dataset

    from study.training import example_lengths

    sft = Dataset.from_list([{"input_ids": [1, 2, 3]}, {"input_ids": [4]}])
    dpo = Dataset.from_list([{"prompt_ids": [1, 2], "chosen_ids": [3], "rejected_ids": [4, 5, 6]}])
    reward = Dataset.from_list([{"chosen_ids": [1, 2, 3, 4], "rejected_ids": [5]}])
    assert example_lengths(sft) == [3, 1]
    assert example_lengths(dpo) == [5]
    assert example_lengths(reward) == [4]


def test_both_sft_arms_group_the_pairs_into_the_same_batches(
    tmp_path, tiny_path, rows, smoke_config, monkeypatch
):
    import dataclasses

    from study import training

    cfg = dataclasses.replace(
        smoke_config, train=dataclasses.replace(smoke_config.train, group_by_length=True)
    )
    seen = {}
    own = training.grouped_sampler

    def spy(lengths, config):
        sampler = own(lengths, config)
        seen[arm] = (list(lengths), list(sampler))
        return sampler

    monkeypatch.setattr(training, "grouped_sampler", spy)
    for arm in ("sft-chosen", "sft-rejected"):
        summary = train_sft(arm, tiny_path, rows, cfg, tmp_path / arm)
        assert summary["rows_per_process"] == [len(rows)]
        assert math.isfinite(summary["final_loss"])
    assert seen["sft-chosen"] == seen["sft-rejected"]
    assert len(set(seen["sft-chosen"][0])) > 1  # the lengths differ, the order follows them
