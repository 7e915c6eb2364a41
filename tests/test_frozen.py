"""The frozen lower blocks' states, kept by the reference pass and read by the DPO arms."""

import dataclasses

import pandas as pd
import pytest
import torch

from study import frozen
from study.data import prepare
from study.models import load_model, load_tokenizer

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory, tiny_path):
    """A three-block Llama (blocks return a tensor; GPT-Neo's return a tuple)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = load_tokenizer(tiny_path)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.eos_token_id,
    )
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("llama")
    LlamaForCausalLM(config).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


@pytest.fixture(params=["gpt-neo", "llama"])
def model_path(request, tiny_path, tiny_llama):
    return tiny_path if request.param == "gpt-neo" else tiny_llama


@pytest.fixture(scope="module")
def rows():
    from study.config import DataConfig

    return prepare(DataConfig(source="synthetic", eval_split=None, sample_size=8)).train


def _batch(tok):
    tok.padding_side = "right"
    return tok(
        ["Human: hi there", "Human: a longer question, please"], return_tensors="pt", padding=True
    )


def test_a_miss_runs_the_blocks_and_a_hit_reads_them(model_path):
    tok = load_tokenizer(model_path)
    enc = _batch(tok)
    plain = load_model(model_path).eval()
    model = load_model(model_path).eval()
    model.requires_grad_(False)
    memo = {}
    stand_in = frozen.install(model.base_model, 1, memo, record=True)
    with torch.no_grad():
        want = plain(**enc).logits
        first = model(**enc).logits
        second = model(**enc).logits
    mask = enc["attention_mask"].bool()
    assert torch.allclose(first[mask], want[mask], atol=1e-6)
    assert torch.equal(second[mask], first[mask])
    assert (stand_in.misses, stand_in.hits) == (2, 2)
    assert sorted(len(k) for k in memo) == sorted(enc["attention_mask"].sum(1).tolist())


def test_install_on_half_precision_frozen_weights(model_path):
    from study.models import cast_frozen_linears

    tok = load_tokenizer(model_path)
    enc = _batch(tok)
    model = load_model(model_path).eval()
    model.requires_grad_(False)
    cast_frozen_linears(model, "bf16")  # what the reference pass and the arms run on the CPU
    memo = {}
    frozen.install(model.base_model, 1, memo, record=True)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        first = model(**enc).logits
        second = model(**enc).logits
    mask = enc["attention_mask"].bool()
    assert len(memo) == 2 and torch.equal(second[mask], first[mask])


def test_states_survive_the_file(tmp_path):
    memo = {(1, 2, 3): torch.randn(3, 4), (5,): torch.randn(1, 4)}
    frozen.save(memo, tmp_path / "s.safetensors")
    back = frozen.load(tmp_path / "s.safetensors")
    assert back.keys() == memo.keys()
    assert all(torch.equal(back[k], memo[k]) for k in memo)


def test_blocks_that_train_are_refused(tiny_path):
    model = load_model(tiny_path)
    with pytest.raises(ValueError, match="must be frozen"):
        frozen.install(model.base_model, 1, {})


def _top1(cfg):
    return dataclasses.replace(
        cfg,
        model=dataclasses.replace(cfg.model, precision="fp32"),
        train=dataclasses.replace(cfg.train, use_lora=True, lora_top_layers=1),
    )


def test_dpo_from_kept_states_trains_as_from_the_blocks(tmp_path, model_path, rows, smoke_config):
    from study.training import frozen_states_path, reference_logps, train_dpo

    cfg = _top1(smoke_config)
    states = frozen_states_path(tmp_path, "ref", cfg)
    plain = reference_logps(model_path, rows, cfg, tmp_path / "w1")
    kept = reference_logps(model_path, rows, cfg, tmp_path / "w2", states)
    assert states.exists() and kept == plain  # keeping the states changes no value

    flipped = torch.arange(len(rows)) % 3 == 0
    prefer = pd.Series(flipped.tolist())
    ran = train_dpo("dpo-ai", model_path, rows, cfg, tmp_path / "ran", prefer, reference=plain)
    read = train_dpo(
        "dpo-ai", model_path, rows, cfg, tmp_path / "read", prefer, reference=plain, states=states
    )
    assert "frozen_states" not in ran
    assert read["frozen_states"] == {"read": 2 * len(rows), "run": 0}
    assert [c["loss"] for c in read["curve"]] == pytest.approx(
        [c["loss"] for c in ran["curve"]], rel=1e-5
    )
    from safetensors.torch import load_file

    a = load_file(tmp_path / "ran" / "adapter_model.safetensors")
    b = load_file(tmp_path / "read" / "adapter_model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5


def test_no_states_are_kept_when_every_block_trains(tmp_path, smoke_config):
    from study.training import frozen_states_path

    cfg = dataclasses.replace(
        smoke_config, train=dataclasses.replace(smoke_config.train, use_lora=True)
    )
    assert frozen_states_path(tmp_path, "ref", cfg) is None
