"""Command line: ``python -m study {train,label,evaluate,report}``.

Every command takes the same profile and dataset options as the test suite and works in the same
store, so ``pytest -m study`` reuses what these commands produced.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--profile",
        default=os.environ.get("STUDY_PROFILE", "cpu"),
        help="seed, cpu or smoke (env STUDY_PROFILE; default cpu)",
    )
    common.add_argument(
        "--dataset",
        default=os.environ.get("STUDY_DATASET"),
        help="hub id, file or folder of pairs (env STUDY_DATASET)",
    )
    common.add_argument("--store", default=None, help="artefact store (env STUDY_STORE)")
    common.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.FIELD=JSON",
        help="override a setting, e.g. --set train.epochs=2 --set seed=7",
    )
    common.add_argument(
        "--findings",
        default=os.environ.get("STUDY_FINDINGS", "findings"),
        help="folder receiving <profile>/ (env STUDY_FINDINGS)",
    )
    parser = argparse.ArgumentParser(prog="python -m study", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", parents=[common], help="train the arms (and AI labels)")
    train.add_argument("--arm", action="append", help="only this arm (repeatable)")
    sub.add_parser("label", parents=[common], help="AI labels for the training pairs")
    sub.add_parser("evaluate", parents=[common], help="the whole study and its findings")
    sub.add_parser("report", parents=[common], help="rewrite REPORT.md from results.json")
    return parser


def parse_overrides(items: list[str]) -> dict:
    """``["train.epochs=2", "seed=7"]`` → ``{"train": {"epochs": 2}, "seed": 7}``."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected SECTION.FIELD=VALUE, e.g. train.epochs=2")
        key, raw = item.split("=", 1)
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from study import findings

    out_dir = Path(args.findings) / args.profile
    if args.command == "report":
        source = out_dir / "results.json"
        if not source.is_file():
            print(
                f"error: {source} does not exist; run `python -m study evaluate --profile "
                f"{args.profile}` or `pytest -m study --profile {args.profile}` first, or point "
                "--findings at the folder holding <profile>/results.json.",
                file=sys.stderr,
            )
            return 2
        results = json.loads(source.read_text(encoding="utf-8"))
        findings.write_text(out_dir / "REPORT.md", findings.render(results))
        print(f"wrote {out_dir / 'REPORT.md'}")
        return 0

    from study import claims, pipeline
    from study.config import resolve
    from study.data import DataError
    from study.models import ModelError

    try:
        cfg = resolve(args.profile, args.dataset, parse_overrides(args.set))
        arms = getattr(args, "arm", None)
        pipeline.check_arms(cfg, arms)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    store = Path(args.store) if args.store else None
    started = time.perf_counter()
    until = {"train": "train", "label": "label", "evaluate": "evaluate"}[args.command]
    try:
        run = pipeline.run_study(cfg, store, until=until, arms=arms)
    except (DataError, ModelError) as err:
        # Bad data or a missing model: the message names the file and the fix.
        print(f"error: {err}", file=sys.stderr)
        return 2
    run["timings"]["total"] = round(time.perf_counter() - started, 2)
    if args.command != "evaluate":
        print(json.dumps({"timings": run["timings"], "arms": sorted(run.get("arms", {}))}))
        return 0
    outcomes = claims.evaluate_all(run["replies"], run["labels"], cfg.bootstrap_resamples)
    results = findings.build_results(run, outcomes, cfg.profile, n_boot=cfg.bootstrap_resamples)
    findings.write_findings(out_dir, results, run["replies"])
    for o in outcomes:
        print(f"{o['case']:45s} {o['verdict']}")
    print(f"wrote {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
