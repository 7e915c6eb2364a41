"""Render the benchmark results of one `make bench` run as ``findings/benchmarks.md``.

Only numbers measured in that run are written: the conftest collects one ``Result`` per
benchmark (ours, the baseline, the ratio, the target) plus free-form notes, and
``write_report`` turns them, with a description of the machine, into a Markdown file.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Result:
    """One row of the table: our way against its baseline, and whether the target is met."""

    name: str
    unit: str
    ours: float
    baseline: float | None
    ratio: float | None
    target: str  # e.g. ">= 2.5x" or ">= 1000 replies/s"
    met: bool
    notes: list[str] = field(default_factory=list)


RESULTS: list[Result] = []  # filled by the benchmarks of this run, written at session end


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                keep = [f for f in flags if f.startswith(("avx512_bf16", "amx", "avx512f", "avx2"))]
                return " ".join(sorted(keep)) or "none of avx2/avx512/amx"
    except OSError:
        pass
    return "unknown"


def machine() -> dict[str, str]:
    """CPU model, cores, torch version and threads, load and date."""
    import torch

    try:
        load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "unknown"
    return {
        "cpu": _cpu_model(),
        "cpu flags": _cpu_flags(),
        "cores (os.cpu_count)": str(os.cpu_count()),
        "torch": torch.__version__,
        "torch threads": str(torch.get_num_threads()),
        "python": platform.python_version(),
        "load average at the end (1/5/15 min)": load,
        "date": _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
    }


def _fmt(x: float | None, unit: str = "") -> str:
    if x is None:
        return "–"
    if abs(x) >= 100:
        s = f"{x:,.0f}"
    elif abs(x) >= 10:
        s = f"{x:.1f}"
    else:
        s = f"{x:.3g}"
    return f"{s} {unit}".strip()


def render(results: list[Result], size: str, info: dict[str, str] | None = None) -> str:
    info = info or machine()
    lines = ["# Benchmarks", ""]
    lines += [
        "Written by `make bench` (`benchmarks/`); every number below was measured in that one run,",
        "our way and its baseline side by side on the same machine, so the ratios are the",
        "meaningful part; absolute times depend on the machine and its load.",
        "",
        f"Sizes: `{size}`"
        + (" (tiny random model; a smoke run, not a measurement)" if size != "real" else ""),
        "",
        "## Machine",
        "",
    ]
    lines += [f"- {k}: {v}" for k, v in info.items()]
    lines += [
        "",
        "## Results",
        "",
        "| benchmark | ours | baseline | ratio | target | met? |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        ratio = f"{r.ratio:.2f}x" if r.ratio is not None else "–"
        lines.append(
            f"| {r.name} | {_fmt(r.ours, r.unit)} | {_fmt(r.baseline, r.unit)} | {ratio} | "
            f"{r.target} | {'yes' if r.met else '**no**'} |"
        )
    for r in results:
        if r.notes:
            lines += ["", f"### {r.name}", ""]
            lines += r.notes
    lines.append("")
    return "\n".join(lines)


def write_report(path: Path, results: list[Result], size: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(results, size), encoding="utf-8")
    return path
