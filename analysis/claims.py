"""Claims as data, and their verdicts computed from the per-seed metrics.

Each claim of the seed texts (``../shared/seeds``) is one YAML file in ``conf/claims/``:

- ``id``, ``statement`` (the claim in the source's words) and ``source``: the seed file (a
  path relative to the repository, ending in ``.txt``), or for a claim from a published text
  outside the seeds its citation (authors, year, title, section);
- ``experiment``: the results folder (``results/<experiment>``) whose report judges it;
- ``select``: cell values the claim is judged on (column -> value or list of values);
  ``exclude`` likewise drops cells;
- ``compare``: the cell column the claim is about (default ``reduction``), ``control`` its
  reference value and ``treatment`` the values compared with it (a list, or ``"*"``: every
  other value);
- ``varies_with``: cell columns that change together with ``compare`` in the grid (a
  rollout's ``algo.num_envs`` with its ``algo.rollout_steps``); they are left out of the
  comparison's family, so the values of ``compare`` meet, and each family must then hold one
  cell per compared value (else a `ClaimError`);
- ``prediction``: what the claim predicts for treatment against control: ``greater``
  (treatment better; for a response length, longer), ``less``, ``differs`` (either way) or
  ``not_less`` (treatment no worse: non-inferiority within ``margin`` of P(X>Y));
- ``metrics``: the per-seed metrics judged (the first decides the verdict; the others are
  shown);
- ``conditions``: the cell columns a verdict is given per (e.g. env, optim); within a
  condition the other cell columns (lr, ...) are the grid the claim must hold over;
- ``views``: ``matched_lr`` (treatment and control at the same lr, every lr of the grid) and
  ``best_lr`` (each at its own best lr, chosen on even seeds and tested on odd seeds, as in
  the report's best-lr tables; only where lr is swept). For a schedule knob (epochs,
  minibatches, rollout length) the fair comparison is this one: more updates per rollout at
  one lr act like a larger lr, so matched lrs confound the knob with the step size.

A verdict per comparison (`verdict`), computed from the report's tables
(`analysis.tables`: exact rank test, Holm within the family, P(X>Y) with its calibrated
interval, identical runs detected), never typed: ``supported``, ``contradicted``, ``no
difference shown`` or ``identical by construction`` (``not testable`` when there are too few
seeds). Per condition and view the verdicts over the grid are summarised (`summarise`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from analysis import tables
from analysis.settings import ReportSettings

CLAIMS_DIR = Path(__file__).resolve().parents[1] / "conf" / "claims"
PREDICTIONS = ("greater", "less", "differs", "not_less")
VIEWS = ("matched_lr", "best_lr")
VERDICTS = ("supported", "contradicted", "no difference shown", "identical by construction",
            "not testable")
# Metrics where lower is better: the tables give P(sooner) for them.
LOWER_IS_BETTER = ("steps_to_threshold",)


class ClaimError(ValueError):
    """A claim file that cannot be used (the message names the file and the bad value)."""


@dataclass(frozen=True)
class Claim:
    """One claim, as its YAML file states it (see the module docstring)."""

    id: str
    statement: str
    source: str
    experiment: str
    control: str
    prediction: str
    metrics: tuple[str, ...]
    conditions: tuple[str, ...]
    compare: str = "reduction"
    treatment: tuple[str, ...] | str = "*"
    select: dict[str, tuple[str, ...]] = field(default_factory=dict)
    exclude: dict[str, tuple[str, ...]] = field(default_factory=dict)
    varies_with: tuple[str, ...] = ()
    views: tuple[str, ...] = VIEWS
    margin: float = 0.1
    path: str = ""


def _values(value: Any) -> tuple[str, ...]:
    items = value if isinstance(value, list) else [value]
    return tuple(_label(v) for v in items)


def _label(value: Any) -> str:
    """A cell value as the claims compare it: text, with integral floats as integers (so
    ``1`` and ``1.0`` are one value) and other floats in repr form."""
    if isinstance(value, (bool, np.bool_)) or value is None:
        return str(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if np.isnan(value):
            return "nan"
        return str(int(value)) if float(value).is_integer() else repr(float(value))
    return str(value)


def load_claim(path: Path) -> Claim:
    """One claim file, validated: every field known and of the right kind."""
    raw = yaml.safe_load(Path(path).read_text()) or {}
    known = {f for f in Claim.__dataclass_fields__ if f != "path"}
    unknown = set(raw) - known
    if unknown:
        raise ClaimError(f"{path}: unknown field(s) {sorted(unknown)}; valid: {sorted(known)}")
    missing = [f for f in ("id", "statement", "source", "experiment", "control", "prediction",
                           "metrics", "conditions") if f not in raw]
    if missing:
        raise ClaimError(f"{path}: missing field(s) {missing}")
    if raw["prediction"] not in PREDICTIONS:
        raise ClaimError(f"{path}: prediction {raw['prediction']!r}; valid: {PREDICTIONS}")
    views = tuple(raw.get("views", VIEWS))
    if set(views) - set(VIEWS):
        raise ClaimError(f"{path}: views {list(views)}; valid: {list(VIEWS)}")
    treatment = raw.get("treatment", "*")
    return Claim(
        id=str(raw["id"]), statement=str(raw["statement"]).strip(), source=str(raw["source"]),
        experiment=str(raw["experiment"]), control=_label(raw["control"]),
        prediction=raw["prediction"], metrics=tuple(raw["metrics"]),
        conditions=tuple(raw["conditions"]), compare=str(raw.get("compare", "reduction")),
        treatment="*" if treatment == "*" else _values(treatment),
        select={k: _values(v) for k, v in (raw.get("select") or {}).items()},
        exclude={k: _values(v) for k, v in (raw.get("exclude") or {}).items()},
        varies_with=tuple(raw.get("varies_with") or ()), views=views,
        margin=float(raw.get("margin", 0.1)), path=str(path),
    )


def load_claims(directory: Path = CLAIMS_DIR, experiment: str | None = None) -> list[Claim]:
    """Every claim in ``directory`` (sorted by file name), or those judged on ``experiment``."""
    claims = [load_claim(p) for p in sorted(Path(directory).glob("*.yaml"))]
    return [c for c in claims if experiment is None or c.experiment == experiment]


def claim_slice(claim: Claim, per_seed: pd.DataFrame) -> pd.DataFrame:
    """The claim's seeds: its ``select`` and ``exclude`` applied, and its ``compare`` column
    as text labels (`_label`). A column the data lacks is a `ClaimError`."""
    for column in {claim.compare, *claim.select, *claim.exclude, *claim.conditions,
                   *claim.varies_with}:
        if column not in per_seed:
            raise ClaimError(f"{claim.path}: column {column!r} is not a cell column of the "
                             f"results; valid: {sorted(per_seed.columns)}")
    keep = np.ones(len(per_seed), dtype=bool)
    for column, values in claim.select.items():
        keep &= per_seed[column].map(_label).isin(values).to_numpy()
    for column, values in claim.exclude.items():
        keep &= ~per_seed[column].map(_label).isin(values).to_numpy()
    frame = per_seed[keep].copy()
    frame[claim.compare] = frame[claim.compare].map(_label)
    if claim.treatment != "*":
        frame = frame[frame[claim.compare].isin({claim.control, *claim.treatment})]
    return frame


def verdict(row: pd.Series | dict[str, Any], prediction: str, margin: float,
            lower_is_better: bool = False) -> str:
    """The verdict of one comparison row of `analysis.tables` (treatment against control).

    Identical runs: ``identical by construction``; not a test: ``not testable``; otherwise with
    P = P(treatment better than control) (P(X>Y), or P(sooner) where lower is better) and the
    Holm-corrected exact rank test's mark: ``greater``: marked and P > 1/2 supported, marked
    and P < 1/2 contradicted; ``less`` mirrored; ``differs``: marked either way supported;
    ``not_less``: marked with P < 1/2 contradicted, else supported when the interval's lower
    bound of P is at least 1/2 - margin (non-inferiority), else no difference shown; every
    unmarked comparison of the other predictions: ``no difference shown``.
    """
    if bool(row.get("identical", False)):
        return "identical by construction"
    if not bool(row.get("tested", False)) and pd.isna(row.get("p_rank_holm", np.nan)):
        return "not testable"
    better, low = ("prob_sooner", "sooner_ci_low") if lower_is_better else (
        "prob_improvement", "poi_ci_low")
    effect = float(row.get(better, np.nan))
    marked = bool(row.get("significant", False))
    if prediction == "not_less":
        if marked and effect < 0.5:
            return "contradicted"
        return "supported" if row.get(low, np.nan) >= 0.5 - margin else "no difference shown"
    if not marked:
        return "no difference shown"
    if prediction == "differs":
        return "supported"
    favoured = effect > 0.5 if prediction == "greater" else effect < 0.5
    return "supported" if favoured else "contradicted"


@dataclass(frozen=True)
class ClaimResult:
    """A claim's comparisons (one row per condition x view x grid point x treatment x metric,
    with the statistics and the verdict) and their summary per condition and view; where
    there is no comparison, ``missing`` says why (`why_no_comparison`)."""

    claim: Claim
    comparisons: pd.DataFrame
    summary: pd.DataFrame
    missing: str = ""


def evaluate(claim: Claim, per_seed: pd.DataFrame, cells: Sequence[str],
             settings: ReportSettings) -> ClaimResult:
    """Every comparison the claim makes on ``per_seed`` (the report's per-seed metrics with
    cell columns ``cells``), through the report's own tables with the claim's control as the
    reference."""
    frame = claim_slice(claim, per_seed)
    compare_settings = replace(settings, reference=claim.control)
    if claim.compare != "reduction":
        # The tables compare along `reduction`: the claim's column takes its place, and the
        # reduction becomes one of the family's columns.
        frame = frame.rename(columns={"reduction": "reduction_", claim.compare: "reduction"})
        cells = ["reduction_" if c == "reduction" else ("reduction" if c == claim.compare else c)
                 for c in cells]
    family_columns = [c for c in cells if c != "reduction" and c not in claim.varies_with]
    _check_one_cell_per_value(claim, frame, family_columns)
    order = [claim.control, *sorted(set(frame["reduction"]) - {claim.control})]
    parts = []
    for metric in claim.metrics:
        if "matched_lr" in claim.views:
            table = tables.significance_table(frame, family_columns, metric, order,
                                              compare_settings)
            parts.append(_comparison_rows(table.rows, "matched_lr", metric, claim))
        swept = frame.groupby([c for c in family_columns if c != "lr"], dropna=False)["lr"]
        if ("best_lr" in claim.views
                and metric != "steps_to_threshold" and (swept.nunique() > 1).any()):
            table = tables.best_lr_table(frame, [c for c in family_columns if c != "lr"], metric,
                                         order, compare_settings)
            parts.append(_comparison_rows(table.rows, "best_lr", metric, claim))
    comparisons = pd.concat([p for p in parts if len(p)], ignore_index=True) if any(
        len(p) for p in parts) else pd.DataFrame()
    if len(comparisons) and claim.compare != "reduction":
        comparisons = comparisons.rename(columns={"reduction_": "reduction"})
    missing = why_no_comparison(claim, frame, family_columns) if comparisons.empty else ""
    return ClaimResult(claim, comparisons, summarise(claim, comparisons), missing)


def why_no_comparison(claim: Claim, frame: pd.DataFrame, family_columns: Sequence[str]) -> str:
    """Why a claim's slice (``frame``, its ``compare`` column named ``reduction``) gave no
    comparison: no cell at all, no control or no treatment cell, or control and treatment
    cells that never share a family because another column differs between them."""
    if frame.empty:
        return "the results hold no cell of the claim's slice (its select and exclude)"
    compared = frame["reduction"]
    present = sorted(set(compared))
    if claim.control not in present:
        return f"no cell has {claim.compare}={claim.control} (the slice has {present})"
    treated = compared != claim.control
    if claim.treatment != "*":
        treated &= compared.isin(claim.treatment)
    if not treated.any():
        return (f"no cell has a treatment value of {claim.compare} (the slice has {present})")
    control = frame[compared == claim.control]
    apart = [c for c in family_columns
             if not set(control[c].map(_label)) & set(frame.loc[treated, c].map(_label))]
    return (f"its control and treatment cells never share a family: they differ in "
            f"{apart or 'a combination of columns'} as well; name such columns in the claim's "
            f"varies_with if they change together with {claim.compare}")


def _check_one_cell_per_value(claim: Claim, frame: pd.DataFrame,
                              family_columns: Sequence[str]) -> None:
    """With ``varies_with`` left out of the families, a family must still hold one cell per
    compared value: two would pool different configurations' seeds into one sample."""
    if not claim.varies_with or frame.empty:
        return
    keys = [*family_columns, "reduction"]
    counts = frame.groupby(keys, dropna=False)[list(claim.varies_with)].nunique(dropna=False)
    pooled = counts[(counts > 1).any(axis=1)]
    if len(pooled):
        where = dict(zip(keys, pooled.index[0], strict=True))
        raise ClaimError(
            f"{claim.path}: varies_with {list(claim.varies_with)} takes several values at "
            f"{claim.compare}={where['reduction']} in one family ({where}); a family must "
            f"hold one cell per value of {claim.compare}")


def _comparison_rows(rows: pd.DataFrame, view: str, metric: str, claim: Claim) -> pd.DataFrame:
    """The compared rows of one table (treatment against control), with view, metric,
    treatment, control and verdict columns."""
    if rows.empty or "role" not in rows:
        return pd.DataFrame()
    compared = rows[rows["role"] == "compared"].copy()
    if claim.treatment != "*":
        compared = compared[compared["reduction"].isin(claim.treatment)]
    if compared.empty:
        return compared
    lower = metric in LOWER_IS_BETTER
    compared["verdict"] = [verdict(r, claim.prediction, claim.margin, lower)
                           for _, r in compared.iterrows()]
    compared.insert(0, "metric", metric)
    compared.insert(0, "view", view)
    return compared.rename(columns={"reduction": "treatment"}).assign(control=claim.control)


def summarise(claim: Claim, comparisons: pd.DataFrame) -> pd.DataFrame:
    """Per condition, view and treatment, the primary metric's verdicts over the grid (e.g.
    the lrs): the verdict when they all agree, otherwise each verdict with its count
    ("supported at 3 of 5, no difference shown at 2 of 5")."""
    if comparisons.empty:
        return pd.DataFrame()
    primary = comparisons[comparisons["metric"] == claim.metrics[0]]
    keys = [*claim.conditions, "view", "treatment"]
    rows = []
    for key, group in primary.groupby(keys, dropna=False, sort=True):
        counts = group["verdict"].value_counts()
        total = len(group)
        if len(counts) == 1:
            text = counts.index[0] + (f" (all {total})" if total > 1 else "")
        else:
            text = ", ".join(f"{v} at {n} of {total}" for v, n in counts.items())
        rows.append({**dict(zip(keys, key, strict=True)), "control": claim.control,
                     "metric": claim.metrics[0], "grid_points": total,
                     "seeds": seed_counts(group), "verdict": text})
    return pd.DataFrame(rows)


def seed_counts(comparisons: pd.DataFrame) -> str:
    """Seeds per side behind a verdict, treatment vs control (``n``, ``n_reference``: those
    with a value of the metric), as a range where the grid points differ: ``"10 vs 10"``,
    ``"8-10 vs 10"``; ``""`` when the table has no counts."""
    if not {"n", "n_reference"} <= set(comparisons.columns):
        return ""

    def span(values: pd.Series) -> str:
        values = values.dropna().astype(int)
        if values.empty:
            return "?"
        low, high = values.min(), values.max()
        return str(low) if low == high else f"{low}-{high}"

    return f"{span(comparisons['n'])} vs {span(comparisons['n_reference'])}"
