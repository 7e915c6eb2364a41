import pytest
import torch

from study import models

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "cuda,bf16,expected",
    [
        (True, True, ("cuda", "bf16")),
        (True, False, ("cuda", "fp16")),
        (False, False, ("cpu", "bf16")),
    ],
    ids=["cuda-bf16", "cuda-fp16-only", "no-cuda"],
)
def test_device_and_precision_follow_the_hardware(monkeypatch, cuda, bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    device = models.choose_device("auto")
    assert (device, models.choose_precision(device, "auto")) == expected


def test_overrides_and_bad_values(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert models.choose_device("cpu") == "cpu"
    assert models.choose_precision("cpu", "fp32") == "fp32"
    with pytest.raises(ValueError, match="no CUDA device"):
        models.choose_device("cuda")
    with pytest.raises(ValueError, match="fp16"):
        models.choose_precision("cpu", "fp16")
    with pytest.raises(ValueError, match="model.device"):
        models.choose_device("tpu")


def test_missing_hub_model_says_how_to_work_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(models.ModelError, match="--profile cpu"):
        models.resolve_model("no-such-user/no-such-model", tmp_path)
    assert not list((tmp_path / "models").glob("no-such*"))  # nothing half-made is left


def test_folder_without_safetensors_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(models.ModelError, match="safetensors only"):
        models.resolve_model(str(tmp_path))


def test_tiny_model_is_identical_on_every_build(tmp_path):
    a = models.resolve_model(models.TINY, tmp_path / "a")
    b = models.resolve_model(models.TINY, tmp_path / "b")
    assert models.weights_hash(a) == models.weights_hash(b)
