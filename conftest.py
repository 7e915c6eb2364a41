"""Markers, options and the session-wide study run shared by every claim check."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).parent


def pytest_addoption(parser):
    group = parser.getgroup("study")
    group.addoption(
        "--profile",
        default=os.environ.get("STUDY_PROFILE", "cpu"),
        help="study profile: seed, cpu or smoke (env STUDY_PROFILE; default cpu)",
    )
    group.addoption(
        "--dataset",
        default=os.environ.get("STUDY_DATASET"),
        help="hub id, file or folder of preference pairs (env STUDY_DATASET)",
    )
    group.addoption(
        "--seeds",
        type=int,
        default=int(os.environ.get("STUDY_SEEDS", "1")),
        help="repeat training and sampling with this many seeds; the report compares verdicts",
    )
    group.addoption(
        "--findings",
        default=os.environ.get("STUDY_FINDINGS", str(ROOT / "findings")),
        help="folder receiving findings/<profile>/ (env STUDY_FINDINGS)",
    )


def pytest_configure(config):
    config.addinivalue_line("markers", "unit: fast checks of one function on tiny inputs")
    config.addinivalue_line("markers", "integration: whole pipeline or real model, a few minutes")
    config.addinivalue_line("markers", "study: the study's claims on the chosen profile")
    config.addinivalue_line("markers", "bench: benchmarks, outside the timed suite")
    config._study_state = {"tests": {}, "run": None, "outcomes": None}


@pytest.fixture(scope="session")
def study_config(pytestconfig):
    from study.config import resolve

    return resolve(pytestconfig.getoption("profile"), pytestconfig.getoption("dataset"))


@pytest.fixture(scope="session")
def study_run(pytestconfig, study_config):
    """Train or load every arm, generate and score; shared by all claim checks."""
    from study import claims, pipeline

    state = pytestconfig._study_state
    log_dir = Path(pytestconfig.getoption("findings")) / study_config.profile
    log_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_dir / "run.log", mode="w", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("study").addHandler(handler)
    logging.getLogger("study").setLevel(logging.INFO)
    started = time.perf_counter()
    n_seeds = pytestconfig.getoption("seeds")
    if n_seeds < 1:
        raise pytest.UsageError(f"--seeds must be at least 1, got {n_seeds}")
    per_seed = []
    for index in range(n_seeds):
        cfg = pipeline.seed_variant(study_config, index)
        result = pipeline.run_study(cfg)
        outs = claims.evaluate_all(result["replies"], result["labels"], cfg.bootstrap_resamples)
        per_seed.append((result, outs))
    run, outcomes = per_seed[0]
    run["timings"]["total"] = round(time.perf_counter() - started, 2)
    if n_seeds > 1:
        run["stability"] = pipeline.stability([outs for _, outs in per_seed])
    state.update(run=run, outcomes=outcomes, profile=study_config.profile)
    return run, {o["case"]: o for o in outcomes}


def pytest_runtest_logreport(report):
    if report.when != "call" and not (report.when == "setup" and report.outcome != "passed"):
        return
    config = getattr(report, "config", None) or _CONFIG.get("config")
    if config is None or "study" not in report.keywords:
        return
    config._study_state["tests"][report.nodeid.split("::")[-1]] = {
        "outcome": report.outcome,
        "seconds": round(report.duration, 3),
    }


_CONFIG: dict = {}


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session):
    _CONFIG["config"] = session.config


def pytest_sessionfinish(session, exitstatus):
    state = getattr(session.config, "_study_state", None)
    if not state or state["run"] is None:
        return
    from study import findings

    run = state["run"]
    results = findings.build_results(
        run,
        state["outcomes"],
        state["profile"],
        state["tests"],
        n_boot=run["provenance"]["config"]["bootstrap_resamples"],
    )
    out = Path(session.config.getoption("findings")) / state["profile"]
    findings.write_findings(out, results, run["replies"])
