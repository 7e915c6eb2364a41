"""The store: config-keyed reuse, atomic artefacts, resumable training, concurrent runs."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from study import pipeline
from study.config import resolve

ROOT = Path(__file__).resolve().parents[1]


def _env(store: Path) -> dict:
    env = {**os.environ, "STUDY_STORE": str(store), "TQDM_DISABLE": "1"}
    env.pop("STUDY_DATASET", None)
    return env


def _arms(store: Path) -> dict[str, str]:
    return {
        p.name.rsplit("-", 1)[0]: p.name
        for p in (store / "arms").iterdir()
        if not p.name.startswith(".")
    }


@pytest.mark.unit
def test_changing_one_training_field_retrains_only_affected_arms(tmp_path, monkeypatch):
    cfg = resolve("smoke")
    first = pipeline.run_study(cfg, tmp_path, until="train")
    assert not any(a.get("is_cached") for a in first["arms"].values())
    again = pipeline.run_study(cfg, tmp_path, until="train")
    assert all(a.get("is_cached", True) for a in again["arms"].values())
    # a reused stage reports what it cost in the run that built it
    trained = [f"train/{arm}" for arm in cfg.arms if arm != "base"]
    assert {s: first["built_seconds"][s] for s in trained} == {
        s: first["timings"][s] for s in trained
    }
    assert {s: again["built_seconds"][s] for s in trained} == {
        s: first["timings"][s] for s in trained
    }
    assert all(again["timings"][s] < first["timings"][s] for s in trained)
    # the reference pass, built for the first DPO arm and read by the second, counts once,
    # and is counted in a rerun that does not need it
    assert "reference" not in again["timings"]
    assert first["built_seconds"]["reference"] == again["built_seconds"]["reference"]
    assert abs(first["built_seconds"]["reference"] - first["timings"]["reference"]) < 0.5
    changed = resolve("smoke", overrides={"dpo": {"beta": 0.2}})
    third = pipeline.run_study(changed, tmp_path, until="train")
    retrained = {arm for arm, a in third["arms"].items() if a.get("is_cached") is False}
    assert retrained == {"dpo-human", "dpo-ai"}
    assert third["built_seconds"]["train/dpo-ai"] == third["timings"]["train/dpo-ai"]
    assert third["built_seconds"]["train/sft-chosen"] == first["timings"]["train/sft-chosen"]
    # both DPO arms read one reference pass, which beta does not affect
    assert len(list((tmp_path / "reference").glob("*.json"))) == 1
    shorter = resolve("smoke", overrides={"train": {"max_length": 48}})
    fourth = pipeline.run_study(shorter, tmp_path, until="train")
    assert all(a.get("is_cached") is False for arm, a in fourth["arms"].items() if arm != "base")
    assert len(list((tmp_path / "reference").glob("*.json"))) == 2
    assert not list((tmp_path / "reference").glob(".*.work"))  # no work folder left behind
    bf16 = resolve("smoke", overrides={"model": {"precision": "bf16"}})
    fifth = pipeline.run_study(bf16, tmp_path, until="train")
    assert all(a.get("is_cached") is False for arm, a in fifth["arms"].items() if arm != "base")
    # new labeling code gives new AI labels: only the arm trained on them is retrained
    monkeypatch.setitem(pipeline.STAGE_VERSIONS, "label", pipeline.STAGE_VERSIONS["label"] + 1)
    sixth = pipeline.run_study(bf16, tmp_path, until="train")
    retrained = {arm for arm, a in sixth["arms"].items() if a.get("is_cached") is False}
    assert retrained == {"dpo-ai"}


def _train_cmd(store: Path, extra=()):
    return [
        sys.executable,
        "-m",
        "study",
        "train",
        "--profile",
        "smoke",
        "--store",
        str(store),
        "--arm",
        "sft-chosen",
        "--set",
        "data.sample_size=40",
        "--set",
        "train.epochs=60",
        "--set",
        "train.checkpoint_steps=20",
        "--set",
        "train.logging_steps=50",
        *extra,
    ]


def _weights(store: Path, name: str):
    from safetensors.torch import load_file

    folder = store / "arms" / name
    files = sorted(folder.glob("*.safetensors"))
    return {k: v for f in files for k, v in load_file(f).items()}


@pytest.mark.integration
def test_killed_training_resumes_and_matches_an_uninterrupted_run(tmp_path):
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    proc = subprocess.Popen(
        _train_cmd(killed),
        cwd=ROOT,
        env=_env(killed),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    while time.time() < deadline and not list(
        (killed / "checkpoints").glob("*/checkpoint-*/trainer_state.json")
    ):
        time.sleep(0.2)
    assert proc.poll() is None, "training finished before a checkpoint could be interrupted"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # Nothing half-written is visible as a finished arm.
    assert not (killed / "arms").exists() or not _arms(killed)

    resumed = subprocess.run(
        _train_cmd(killed), cwd=ROOT, env=_env(killed), capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    name = _arms(killed)["sft-chosen"]
    summary = json.loads((killed / "arms" / name / "study_arm.json").read_text())
    assert summary["resumed_from_step"] and summary["resumed_from_step"] > 0

    subprocess.run(
        _train_cmd(clean), cwd=ROOT, env=_env(clean), check=True, capture_output=True, timeout=600
    )
    assert _arms(clean)["sft-chosen"] == name  # same configuration, same key
    a, b = _weights(killed, name), _weights(clean, name)
    # CPU fp32 training resumed with its optimizer and RNG state: equal up to float noise.
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


@pytest.mark.integration
def test_two_runs_sharing_a_store_do_not_corrupt_it(tmp_path):
    store = tmp_path / "store"
    cmd = [sys.executable, "-m", "study", "train", "--profile", "smoke", "--store", str(store)]
    procs = [
        subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=_env(store),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    arms = _arms(store)
    assert set(arms) == {"sft-chosen", "sft-rejected", "dpo-human", "dpo-ai"}
    assert not [p for p in (store / "arms").iterdir() if ".partial-" in p.name]
    for name in arms.values():
        assert json.loads((store / "arms" / name / "study_arm.json").read_text())["n_steps"] > 0
