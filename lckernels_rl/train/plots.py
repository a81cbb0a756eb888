"""PNG plots of a run's ``metrics.jsonl`` (matplotlib, headless)."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["plot_metrics", "read_metrics"]

PANELS = (  # (file, title, [(metric, label)], phase)
    ("reward.png", "reward", [("reward_mean", "train reward (mean of rollouts)"),
                              ("eval_accuracy", "eval accuracy (greedy)")], None),
    ("loss.png", "loss", [("loss", "loss")], None),
    ("entropy.png", "entropy", [("entropy_mean", "mean token entropy")], "rl"),
    ("clip_fraction.png", "clip fraction", [("clip_frac", "clipped tokens")], "rl"),
    ("grad_norms.png", "gradient norms", [("grad_norm_lm_head", "lm_head"), ("grad_norm_rest", "rest")], None),
)


def read_metrics(path) -> list[dict]:
    return [json.loads(ln) for ln in Path(path).read_text().splitlines() if ln.strip()]


def plot_metrics(metrics_path, out_dir) -> list[Path]:
    """One PNG per panel of :data:`PANELS` under ``out_dir``; returns the paths (none without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - matplotlib is in the test/train extras
        import warnings

        warnings.warn("matplotlib is not installed: no plots (pip install matplotlib)")
        return []
    rows = read_metrics(metrics_path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sft_end = max((r["step"] for r in rows if r.get("phase") == "sft"), default=None)
    paths = []
    for fname, title, series, phase in PANELS:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for key, label in series:
            pts = [(r["step"], r[key]) for r in rows if key in r and (phase is None or r.get("phase") == phase)]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, label=label, marker="o" if len(pts) < 30 else None, markersize=3)
        if sft_end is not None and phase is None:
            ax.axvline(sft_end + 0.5, color="gray", linestyle="--", linewidth=1, label="warm-up | RL")
        ax.set_xlabel("step")
        ax.set_title(title)
        if ax.lines:
            ax.legend(fontsize=8)
        if fname == "grad_norms.png":
            ax.set_yscale("log")
        fig.tight_layout()
        p = out / fname
        fig.savefig(p, dpi=100)
        plt.close(fig)
        paths.append(p)
    return paths
