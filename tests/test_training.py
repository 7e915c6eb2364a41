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
