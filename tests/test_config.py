import pytest

from study.config import PROFILES, StudyConfig, config_hash, resolve

pytestmark = pytest.mark.unit


def test_seed_profile_is_the_notebook_protocol():
    cfg = resolve("seed")
    assert cfg.model.base == "EleutherAI/gpt-neo-125m"
    assert cfg.data.source == "Dahoas/rm-static"
    assert (cfg.data.sample_size, cfg.data.sample_seed) == (5000, 42)
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.learning_rate) == (3, 4, 5e-5)
    assert not cfg.train.use_lora
    q1, q2 = cfg.eval.q1, cfg.eval.q2
    assert (q1.temperature, q1.top_k, q1.top_p, q1.repetition_penalty) == (0.7, 50, 0.9, 1.5)
    assert q2.repetition_penalty == 1.2


def test_profiles_only_list_changes():
    assert PROFILES["seed"] == {}
    assert resolve("cpu").model.base == "smollm2-135m-instruct"
    assert resolve("cpu", "/some/data").data.source == "/some/data"


def test_hash_is_stable_and_sensitive():
    assert config_hash(resolve("cpu")) == config_hash(resolve("cpu"))
    assert config_hash(resolve("cpu")) != config_hash(resolve("cpu", overrides={"seed": 1}))
    assert len(config_hash(StudyConfig())) == 16


@pytest.mark.parametrize(
    "profile,overrides,match",
    [
        ("cpuu", None, "Did you mean 'cpu'"),
        ("cpu", {"train": {"epochs": 0}}, "train.epochs must be a positive"),
        ("cpu", {"data": {"sample_size": -5}}, "data.sample_size"),
        ("cpu", {"train": {"epoch": 2}}, "Did you mean 'epochs'"),
        ("cpu", {"arms": ["base", "dpo-humans"]}, "Did you mean 'dpo-human'"),
        ("cpu", {"eval": {"prompt_sets": ["q2"]}}, "unknown prompt set"),
        ("cpu", {"eval": {"q1": {"top_p": 1.5}}}, "top_p"),
        ("cpu", {"train": {"learning_rate": float("inf")}}, "train.learning_rate must be a fin"),
        ("cpu", {"dpo": {"learning_rate": float("nan")}}, "dpo.learning_rate must be a finite"),
        ("cpu", {"evaluator": {"epochs": 0}}, "evaluator.epochs must be a positive"),
        ("cpu", {"train": {"lora_r": 0}}, "train.lora_r must be a positive"),
        ("cpu", {"labeler": {"batch_size": -2}}, "labeler.batch_size must be a positive"),
        ("cpu", {"bootstrap_resamples": 0}, "bootstrap_resamples must be a positive"),
        ("cpu", {"train": {"batch_size": 2.5}}, "train.batch_size must be an integer"),
        ("cpu", {"train": {"use_lora": "maybe"}}, "train.use_lora must be true or false"),
        ("cpu", {"data": 5}, "data is a section of settings"),
        ("cpu", {"eval": {"prompt_sets": "q1"}}, "eval.prompt_sets must be a list of strings"),
        ("cpu", {"model": {"device": "gpu"}}, "model.device must be auto, cpu or cuda"),
        ("cpu", {"train": {"learnign_rate": 1}}, "unknown setting 'train.learnign_rate'"),
    ],
    ids=[
        "profile",
        "zero-epochs",
        "negative-sample",
        "field",
        "arm",
        "prompt-set",
        "top-p",
        "infinite-rate",
        "nan-rate",
        "evaluator-epochs",
        "lora-rank",
        "labeler-batch",
        "bootstrap",
        "fractional-batch",
        "not-a-bool",
        "section",
        "string-for-list",
        "device",
        "misspelt-field",
    ],
)
def test_bad_settings_name_the_parameter(profile, overrides, match):
    with pytest.raises(ValueError, match=match):
        resolve(profile, overrides=overrides)
