"""Figures of the findings, drawn from ``results.json`` content only (grey-scale safe)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from study.config import ARMS  # noqa: E402
from study.prompts import SCENARIOS  # noqa: E402

# Grey levels and hatches tell the arms apart without colour.
STYLE = {
    "base": ("0.95", ""),
    "sft-chosen": ("0.75", "//"),
    "sft-rejected": ("0.55", "\\\\"),
    "dpo-human": ("0.35", ".."),
    "dpo-ai": ("0.15", "xx"),
}
PANEL_METRICS = ("harmless_word", "harmless_clf", "seed_helpful", "is_comforting", "reward")


def _bars(ax, groups, arms, value):
    width = 0.8 / max(1, len(arms))
    for j, arm in enumerate(arms):
        xs, ys, lo, hi = [], [], [], []
        for i, group in enumerate(groups):
            m = value(group, arm)
            if m is None or m["mean"] is None:
                continue
            xs.append(i + (j - (len(arms) - 1) / 2) * width)
            ys.append(m["mean"])
            lo.append(m["mean"] - m["ci_low"])
            hi.append(m["ci_high"] - m["mean"])
        face, hatch = STYLE.get(arm, ("0.5", ""))
        ax.bar(
            xs,
            ys,
            width,
            yerr=[lo, hi],
            color=face,
            hatch=hatch,
            edgecolor="black",
            linewidth=0.6,
            capsize=2,
            label=arm,
        )
    ax.set_xticks(range(len(groups)))


def metrics_figure(results: dict, path: Path) -> None:
    """Each headline metric per arm on q1 + held-out prompts, with 95 % CIs."""
    arms = [a for a in ARMS if a in results["arms"]]
    fig, ax = plt.subplots(figsize=(9, 4))
    table = {(m["arm"], m["metric"]): m for m in results["metrics"] if m["group"] == "q1+heldout"}
    _bars(ax, list(PANEL_METRICS), arms, lambda metric, arm: table.get((arm, metric)))
    ax.set_xticklabels([m.replace("_", " ") for m in PANEL_METRICS])
    ax.set_ylabel("mean over prompts (95 % CI)")
    ax.set_title("Metrics per arm, q1 + held-out prompts")
    ax.legend(fontsize=8, ncol=5, loc="upper center", bbox_to_anchor=(0.5, -0.12))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def comfort_figure(results: dict, path: Path) -> None:
    """Comfort rate by scenario and arm, with 95 % CIs."""
    arms = [a for a in ARMS if a in results["arms"]]
    table = {
        (m["group"], m["arm"]): m for m in results["metrics"] if m["metric"] == "is_comforting"
    }
    fig, ax = plt.subplots(figsize=(8, 4))
    _bars(ax, list(SCENARIOS), arms, lambda g, arm: table.get((g, arm)))
    ax.set_xticklabels([s.replace("_", " ") for s in SCENARIOS])
    ax.set_ylabel("comforting rate (95 % CI)")
    ax.set_ylim(0, 1)
    ax.set_title("Comforting replies by scenario")
    ax.legend(fontsize=8, ncol=5, loc="upper center", bbox_to_anchor=(0.5, -0.1))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def labeler_figure(results: dict, path: Path) -> None:
    """Labeler agreement and position bias with CIs, and its confidence distribution."""
    q = results.get("labeler")
    if not q:
        return
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    names = list(q)
    for i, name in enumerate(names):
        s = q[name]
        for j, (key, ci, face) in enumerate(
            (("agreement", "agreement_ci", "0.3"), ("position_bias", "position_bias_ci", "0.75"))
        ):
            x = i + (j - 0.5) * 0.35
            left.bar(
                x,
                s[key],
                0.35,
                color=face,
                edgecolor="black",
                yerr=[[s[key] - s[ci][0]], [s[ci][1] - s[key]]],
                capsize=3,
                label=key.replace("_", " ") if i == 0 else None,
            )
    left.axhline(0.5, color="black", linestyle="--", linewidth=0.8)
    left.set_xticks(range(len(names)))
    left.set_xticklabels([f"{n} (n={q[n]['n']})" for n in names])
    left.set_ylim(0, 1)
    left.set_ylabel("share of pairs (95 % CI)")
    left.legend(fontsize=8, loc="lower right")
    left.set_title("AI labeler vs human labels")
    calibration = q[names[-1]].get("calibration", {})
    bins = list(calibration)
    rates = [c["agreement"] if c["agreement"] is not None else 0.0 for c in calibration.values()]
    right.bar(bins, rates, color="0.5", edgecolor="black")
    for x, c in enumerate(calibration.values()):
        right.annotate(f"n={c['n']}", (x, 0.02), ha="center", fontsize=7)
    right.axhline(0.5, color="black", linestyle="--", linewidth=0.8)
    right.set_ylim(0, 1)
    right.set_xlabel("labeler confidence |2p − 1|")
    right.set_ylabel("agreement with humans")
    right.set_title(f"Calibration ({names[-1]} pairs)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def curves_figure(results: dict, path: Path) -> None:
    """Training loss of each trained arm (SFT and DPO losses on separate panels)."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    styles = ["-", "--", ":", "-."]
    for ax, prefix, title in ((axes[0], "sft", "SFT loss"), (axes[1], "dpo", "DPO loss")):
        for k, (arm, s) in enumerate(a for a in results["arms"].items() if a[0].startswith(prefix)):
            curve = s.get("curve") or []
            ax.plot(
                [c["step"] for c in curve],
                [c["loss"] for c in curve],
                styles[k % len(styles)],
                color="black",
                label=arm,
            )
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


FIGURES = {
    "metrics.png": (metrics_figure, "Metrics per arm"),
    "comfort.png": (comfort_figure, "Comfort rate by scenario"),
    "labeler.png": (labeler_figure, "AI labeler quality"),
    "training.png": (curves_figure, "Training curves"),
}


def draw_all(results: dict, folder: Path) -> None:
    """Write every figure into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, (draw, _) in FIGURES.items():
        draw(results, folder / name)
