"""Fixtures of the benchmarks and the session-finish hook that writes ``findings/benchmarks.md``.

``BENCH_SIZE=real`` (the default) uses the study's model (SmolLM2-135M-Instruct) and the real
HH-RLHF rows at the sizes of the brief; ``BENCH_SIZE=tiny`` runs the same code on the tiny random
GPT-Neo and a handful of rows, to check the benchmarks themselves in seconds. ``BENCH_REPORT``
overrides where the report goes (default: ``findings/benchmarks.md`` for ``real``, none for
``tiny``).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SIZE = os.environ.get("BENCH_SIZE", "real")
if SIZE not in ("real", "tiny"):
    raise ValueError(f"BENCH_SIZE must be 'real' or 'tiny', got {SIZE!r}.")


def _load_report_module():
    name = "benchmarks_report"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, HERE / "report.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses need the module registered while it executes
    spec.loader.exec_module(module)
    return module


report = _load_report_module()
RESULTS = report.RESULTS


@dataclass(frozen=True)
class Sizes:
    """How much work each benchmark does."""

    train_warmup_steps: int
    train_steps: int  # measured optimizer steps of our recipe (batch of the cpu profile)
    gen_per_scenario: int  # scenario prompts per scenario (3 scenarios)
    gen_max_new_tokens: int | None  # None: the cpu profile's q2 decoding
    cache_prompts: int  # held-out prompts (x the profile's samples) for the KV-cache comparison
    label_pairs: int  # training pairs the AI labeler judges (both orders)
    score_replies: int
    matmul_n: int


SIZES = {
    "real": Sizes(1, 6, 16, None, 32, 96, 2000, 2048),
    "tiny": Sizes(1, 2, 2, 8, 4, 8, 200, 512),
}


@pytest.fixture(scope="session")
def sizes() -> Sizes:
    return SIZES[SIZE]


@pytest.fixture(scope="session")
def cpu_config():
    """The study's cpu profile, with the data path made independent of the working folder."""
    from study.config import resolve

    cfg = resolve("cpu")
    source = Path(cfg.data.source)
    if not source.is_absolute():
        source = (ROOT / source).resolve()
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, source=str(source)))


@pytest.fixture(scope="session")
def model_path(tmp_path_factory):
    from study.models import BUILTIN_SMOLLM2, TINY, resolve_model

    if SIZE == "tiny":
        return resolve_model(TINY, tmp_path_factory.mktemp("bench-store"))
    store = Path(os.environ.get("STUDY_STORE", ROOT / ".study-store"))
    return resolve_model(BUILTIN_SMOLLM2, store)


@pytest.fixture(scope="session")
def study_data(cpu_config):
    """The cpu profile's training rows (1,000 seeded pairs), exactly as the study draws them."""
    from study import data

    return data.prepare(cpu_config.data)


@pytest.fixture(scope="session")
def bf16_matmul_rate(sizes) -> float:
    """FLOP/s of an n x n bf16 matmul loop, measured now (the denominator of MFU)."""
    import torch

    n = sizes.matmul_n
    a = torch.randn(n, n, dtype=torch.bfloat16)
    b = torch.randn(n, n, dtype=torch.bfloat16)
    for _ in range(3):
        torch.mm(a, b)
    best = 0.0
    for _ in range(3):  # best of three loops: the peak the machine gives right now
        reps = 8
        t = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b)
        best = max(best, reps * 2 * n**3 / (time.perf_counter() - t))
    return best


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not RESULTS:
        return
    tr = terminalreporter
    tr.section(f"benchmark ratios (BENCH_SIZE={SIZE})")
    for r in RESULTS:
        ratio = f"{r.ratio:.2f}x" if r.ratio is not None else "-"
        base = f"{r.baseline:,.1f}" if r.baseline is not None else "-"
        tr.write_line(
            f"{r.name}: ours {r.ours:,.1f} {r.unit}, baseline {base}, ratio {ratio}, "
            f"target {r.target}: {'met' if r.met else 'NOT met'}"
        )
    path = config._bench_report_path if hasattr(config, "_bench_report_path") else None
    if path:
        tr.write_line(f"report written to {path}")


def pytest_sessionfinish(session, exitstatus):
    if not RESULTS:
        return
    target = os.environ.get("BENCH_REPORT")
    if not target and SIZE == "real":
        target = str(ROOT / "findings" / "benchmarks.md")
    if target:
        session.config._bench_report_path = report.write_report(Path(target), RESULTS, SIZE)
