"""The write-path chart: time per 100,000 rows of every write-path variant, drawn from
the raw timings the scenarios keep (median bar, min-max whisker)."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

PER = 100_000

# Bar colours by what the variant writes.
COLOURS = {"bare": "#9e9e9e", "floor": "#64b5f6", "triggers": "#2e7d32", "old way": "#c62828"}


def draw(timings: dict[str, tuple[int, list[float]]], path: Path, machine: str) -> str:
    """Draw the chart to `path` and return one line saying what happened."""
    if not timings:
        return "chart skipped: no write-path scenario ran"
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "chart skipped: matplotlib is not installed (pip install -e '.[bench]')"

    labels = list(timings)
    scaled = {label: [t * PER / rows for t in values] for label, (rows, values) in timings.items()}
    medians = [statistics.median(scaled[label]) for label in labels]
    lows = [m - min(scaled[label]) for m, label in zip(medians, labels, strict=True)]
    highs = [max(scaled[label]) - m for m, label in zip(medians, labels, strict=True)]
    colours = [COLOURS.get(label.rsplit(": ", 1)[-1], "#757575") for label in labels]

    fig, ax = plt.subplots(figsize=(9, 0.45 * len(labels) + 1.6))
    ys = range(len(labels))
    ax.barh(ys, medians, xerr=[lows, highs], color=colours, capsize=3)
    ax.set_yticks(ys, labels)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("seconds per 100,000 questions (log scale; median, whisker min-max)")
    for y, value, high in zip(ys, medians, highs, strict=True):
        ax.annotate(
            f"{value:.1f} s" if value < 100 else f"{value:.0f} s",
            (value + high, y),
            xytext=(8, 0),
            textcoords="offset points",
            va="center",
            fontsize=8,
        )
    ax.set_xlim(10 ** math.floor(math.log10(min(medians) * 0.8)), max(medians) * 4)
    ax.set_title("Writing questions with their outbox rows", fontsize=11)
    measured = {label.rsplit(": ", 1)[0]: rows for label, (rows, _) in timings.items()}
    note = ", ".join(f"{group} {rows:,}" for group, rows in measured.items())
    fig.text(0.01, 0.035, f"rows measured: {note}; scaled to {PER:,}", fontsize=7)
    fig.text(0.01, 0.01, machine, fontsize=7, color="#616161")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"chart written to {path}"
