"""Shared fixtures: the tiny model and its tokenizer, built in-process and cached per session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_path(tmp_path_factory):
    """Folder with the tiny random GPT-Neo and its tokenizer (safetensors)."""
    from study.models import TINY, resolve_model

    return resolve_model(TINY, tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="session")
def tiny_tok(tiny_path):
    from study.models import load_tokenizer

    return load_tokenizer(tiny_path)


@pytest.fixture
def tiny_model(tiny_path):
    from study.models import load_model

    return load_model(tiny_path)


@pytest.fixture
def smoke_config():
    from study.config import resolve

    return resolve("smoke")


@pytest.fixture(scope="session")
def smoke_results(tmp_path_factory):
    """Results of a whole smoke-profile study (tiny model, synthetic rows), run once."""
    from study import claims, findings, pipeline
    from study.config import resolve

    cfg = resolve("smoke")
    run = pipeline.run_study(cfg, tmp_path_factory.mktemp("smoke-store"))
    outcomes = claims.evaluate_all(run["replies"], run["labels"], cfg.bootstrap_resamples)
    return findings.build_results(run, outcomes, "smoke", n_boot=cfg.bootstrap_resamples)
