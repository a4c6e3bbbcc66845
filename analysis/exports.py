"""Writing tables to files: CSV (numeric), Markdown and LaTeX (booktabs) text versions.

The comparison tables are computed by `analysis.tables` and the aggregates by
`analysis.aggregate`; this module only turns them into text cells and files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from analysis.document import markdown_table
from analysis.formatting import interval_text, text
from analysis.tables import SIGNIFICANCE_MARK, ComparisonTable

# How the Markdown, HTML and LaTeX versions show the columns: (header, column, interval).
CONTINUOUS_DISPLAY = (
    ("N (failed)", "n", None),
    ("mean [CI]", "mean", ("mean_ci_low", "mean_ci_high")),
    ("IQM [CI]", "iqm", ("iqm_ci_low", "iqm_ci_high")),
    ("diff [CI]", "diff_mean", ("diff_ci_low", "diff_ci_high")),
    ("g [CI]", "hedges_g", ("g_ci_low", "g_ci_high")),
    ("P(X>Y) [CI]", "prob_improvement", ("poi_ci_low", "poi_ci_high")),
    ("p rank", "p_rank", None),
    ("p Holm (m)", "p_rank_holm", None),
    ("p Welch", "p_welch", None),
    ("MDE", "mde_poi", None),
)
THRESHOLD_DISPLAY = (
    ("N", "n", None),
    ("reached [CI]", "fraction_reached", ("fraction_ci_low", "fraction_ci_high")),
    ("median steps", "median_steps", None),
    ("P(sooner) [CI]", "prob_sooner", ("sooner_ci_low", "sooner_ci_high")),
    ("p rank", "p_rank", None),
    ("p Holm (m)", "p_rank_holm", None),
    ("MDE", "mde_poi", None),
)
# Columns the reference's row shows (the others are comparisons with it).
REFERENCE_COLUMNS = ("n", "mean", "iqm", "fraction_reached", "median_steps")


def display_frame(table: ComparisonTable) -> pd.DataFrame:
    """The table as text cells: estimates with their CIs in brackets, the reference marked
    "(ref.)", the selected lr in the best-lr view, the Holm family size, identical runs, and
    the significance mark."""
    spec = THRESHOLD_DISPLAY if table.metric == "steps_to_threshold" else CONTINUOUS_DISPLAY
    rows = []
    for _, row in table.rows.iterrows():
        shown: dict[str, str] = {c: text(row[c]) for c in table.family_columns}
        reference = row["role"] == "reference"
        shown["reduction"] = row["reduction"] + (" (ref.)" if reference else "")
        if "selection_score" in row:
            shown["best lr"] = text(row["lr"])
        for header, column, interval in spec:
            shown[header] = _cell(row, column, interval, reference)
        shown["sig."] = SIGNIFICANCE_MARK if row["significant"] else ""
        identical = row.get("identical_to")
        note = row.get("note") if isinstance(row.get("note"), str) else ""
        if isinstance(identical, str) and identical:
            note = "; ".join(filter(None, [note, f"identical runs to {identical}"]))
        same = row.get("same_test_as")
        if isinstance(same, str) and same:
            note = "; ".join([note, f"the same test as {same}'s, counted once in m"])
        shown["note"] = note
        rows.append(shown)
    return pd.DataFrame(rows)


def _cell(row: pd.Series, column: str, interval: tuple[str, str] | None, reference: bool) -> str:
    value = row.get(column, np.nan)
    if reference and column not in REFERENCE_COLUMNS:
        return "\u2014"
    if column == "n" and row.get("n_failed", 0):
        return f"{text(value)} ({text(row['n_failed'])})"
    if column == "fraction_reached":
        return f"{text(row['n_reached'])}/{text(row['n'])} {_interval(row, interval)}"
    if column == "median_steps":
        return "not reached" if value == np.inf else text(value)
    if column == "p_rank_holm":
        size = row.get("family_size", np.nan)
        return f"{text(value)} ({text(size)})" if not pd.isna(value) else "n/a"
    if column == "mde_poi":
        return "n/a" if pd.isna(value) else f"{value:.2f} ({row.get('mde_sd', np.nan):.2f} SD)"
    if interval:
        return f"{text(value)} {_interval(row, interval)}"
    return text(value)


def _interval(row: pd.Series, interval: tuple[str, str]) -> str:
    return interval_text(row.get(interval[0], np.nan), row.get(interval[1], np.nan))


def write_table(table: ComparisonTable, directory: Path) -> dict[str, Path]:
    """Write ``<name>.csv`` (numeric rows), ``<name>.md``, ``<name>.tex`` and
    ``<name>-values.csv`` (the per-seed values used). Returns the paths by format."""
    paths = {
        "csv": directory / f"{table.name}.csv",
        "md": directory / f"{table.name}.md",
        "tex": directory / f"{table.name}.tex",
        "values": directory / f"{table.name}-values.csv",
    }
    table.rows.to_csv(paths["csv"], index=False)
    table.values.to_csv(paths["values"], index=False)
    write_text_versions(display_frame(table), table.caption, directory / table.name,
                        f"tab:{table.name}")
    return paths


def write_text_versions(shown: pd.DataFrame, caption: str, stem: Path, label: str) -> None:
    """``<stem>.md`` (caption and table) and ``<stem>.tex`` (booktabs) of text cells."""
    stem.with_suffix(".md").write_text(f"{caption}\n\n{markdown_table(shown)}\n")
    stem.with_suffix(".tex").write_text(latex_table(shown, caption, label))


LATEX_SPECIALS = {c: "\\" + c for c in "&%$#_{}"} | {
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "\\": r"\textbackslash{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
    "\u2014": "---",
}


def latex_escape(value: str) -> str:
    """``value`` with LaTeX's special characters escaped."""
    return "".join(LATEX_SPECIALS.get(c, c) for c in value)


def latex_table(frame: pd.DataFrame, caption: str, label: str) -> str:
    """A booktabs LaTeX table (``\\toprule``/``\\midrule``/``\\bottomrule``; needs
    ``\\usepackage{booktabs}``) of text cells, with the caption and label."""
    escaped = frame.map(latex_escape)
    escaped.columns = [latex_escape(str(c)) for c in frame.columns]
    return escaped.style.hide(axis="index").to_latex(
        hrules=True,
        caption=latex_escape(caption),
        label=label,
        position_float="centering",
        column_format="l" * len(frame.columns),
    )


def aggregate_display(table: pd.DataFrame) -> pd.DataFrame:
    """The aggregate table (`analysis.aggregate.Aggregates.table`) as text: estimates with
    their CIs in brackets."""
    names = ("iqm", "mean", "optimality_gap")
    shown = table.drop(
        columns=[c for c in table.columns if c.endswith(("_ci_low", "_ci_high"))] + list(names)
    ).map(text)
    for name, header in zip(names, ("IQM", "mean", "optimality gap"), strict=True):
        shown[f"{header} [CI]"] = [
            f"{value:.3f} [{low:.3f}, {high:.3f}]"
            for value, low, high in zip(
                table[name], table[f"{name}_ci_low"], table[f"{name}_ci_high"], strict=True
            )
        ]
    return shown


def write_aggregate_table(table: pd.DataFrame, caption: str, report_dir: Path) -> None:
    """``aggregate.csv`` (numeric), ``aggregate.md`` and ``aggregate.tex`` (nothing when the
    table is empty)."""
    if table.empty:
        return
    table.to_csv(report_dir / "aggregate.csv", index=False)
    write_text_versions(aggregate_display(table), caption, report_dir / "aggregate",
                        "tab:aggregate")


# How the gradient summary's text versions show its measures: (header, column).
GRADIENT_DISPLAY = (
    ("grad cosine [CI]", "grad_cosine"),
    ("norm ratio [CI]", "grad_norm_ratio"),
    ("step cosine [CI]", "step_cosine"),
    ("noise cosine [CI]", "noise_cosine"),
)
GRADIENT_TABLE = "gradient_diagnostics"
GRADIENT_IDENTITY = "gradient_identity"


def gradient_display(summary: pd.DataFrame, cells: list[str]) -> pd.DataFrame:
    """The gradient summary (`analysis.gradients.gradient_summary`) as text cells: the cell
    columns (``reduction`` headed "trains with"), the probe, seeds and probes, the mean batch
    length, and each measure's mean over seeds with its CI in brackets."""
    rows = []
    for _, row in summary.iterrows():
        shown = {("trains with" if c == "reduction" else c): text(row[c]) for c in cells}
        shown.update({"probe": text(row["probe_reduction"]), "seeds": text(row["n_seeds"]),
                      "probes": text(row["n_probes"]),
                      "mean length": text(row["mean_length"], "{:.1f}")})
        for header, column in GRADIENT_DISPLAY:
            shown[header] = (f"{text(row[column])} "
                             f"{interval_text(row[f'{column}_ci_low'], row[f'{column}_ci_high'])}")
        rows.append(shown)
    return pd.DataFrame(rows)


def write_gradient_tables(
    summary: pd.DataFrame, identity: pd.DataFrame, cells: list[str], caption: str,
    report_dir: Path,
) -> None:
    """``gradient_diagnostics.csv`` (numeric), ``.md`` and ``.tex`` of the summary, and
    ``gradient_identity.csv``: the mean / traj_mean norm-ratio check per probed batch."""
    summary.to_csv(report_dir / f"{GRADIENT_TABLE}.csv", index=False)
    write_text_versions(gradient_display(summary, cells), caption, report_dir / GRADIENT_TABLE,
                        f"tab:{GRADIENT_TABLE}")
    identity.to_csv(report_dir / f"{GRADIENT_IDENTITY}.csv", index=False)
