"""Write evaluation results: JSON, a markdown table and a bar chart, each to a temporary name then renamed."""

import json
import os
from typing import Dict

from megatron_lite.files import atomic_write


def write_json(path: str, data) -> str:
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1)

    return atomic_write(path, write)


def merge_into_json(path: str, results: dict) -> str:
    """Update a results file with this run's tasks, keeping the other tasks an earlier run wrote there."""
    merged = {}
    if os.path.isfile(path):
        try:
            with open(path) as f:
                merged = json.load(f)
        except (OSError, json.JSONDecodeError):
            merged = {}
    return write_json(path, {**(merged if isinstance(merged, dict) else {}), **results})


# (summary key, label): the PolyCoder table's unit first (Pygments tokens: independent of the model's tokenizer).
METRICS = (("word_perplexity", "perplexity per Pygments token"), ("byte_perplexity", "byte perplexity"),
           ("bits_per_byte", "bits per byte"), ("perplexity", "token perplexity"))


def markdown_table(summary: Dict[str, dict]) -> str:
    """Per-language metrics as a markdown table (the overall row last)."""
    lines = ["| language | files | tokens | Pygments tokens | bytes | " + " | ".join(label for _, label in METRICS) + " |",
             "|---|" + "---:|" * (4 + len(METRICS))]
    for name, s in summary.items():
        label = f"**{name}**" if name == "overall" else name
        values = " | ".join(f"{s[key]:.4f}" for key, _ in METRICS)
        lines.append(f"| {label} | {s['files']} | {s['tokens']} | {s['pygments_tokens']} | {s['bytes']} | {values} |")
    return "\n".join(lines) + "\n"


def bar_chart(path: str, summary: Dict[str, dict], title: str) -> str:
    """A PNG of bar charts per language, one panel per metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    fig, axes = plt.subplots(2, 2, figsize=(max(8.0, 2 + 1.2 * len(names)), 7))
    for ax, (key, label) in zip(axes.flat, METRICS):
        values = [summary[n][key] for n in names]
        bars = ax.bar(names, values, color=["#4c72b0"] * (len(names) - 1) + ["#dd8452"])
        ax.bar_label(bars, fmt="%.4g", fontsize=7)
        if max(values) > 100 * max(min(values), 1e-12):  # per-Pygments-token perplexities span decades
            ax.set_yscale("log")
        ax.set_ylabel(label)
        ax.tick_params(axis="x", rotation=45)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()

    def write(tmp):
        fig.savefig(tmp, format="png", dpi=100)

    try:
        return atomic_write(path, write)
    finally:
        plt.close(fig)


def write_perplexity_report(prefix: str, summary: Dict[str, dict], title: str) -> list:
    """PREFIX_perplexity.{json,md,png}; returns the paths written."""
    table = markdown_table(summary)

    def write_md(tmp):
        with open(tmp, "w") as f:
            f.write(f"# {title}\n\n{table}")

    return [write_json(f"{prefix}_perplexity.json", summary), atomic_write(f"{prefix}_perplexity.md", write_md),
            bar_chart(f"{prefix}_perplexity.png", summary, title)]
