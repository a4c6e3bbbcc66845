"""The report's figures: a palette that survives greyscale print and colour-blind readers,
identical curves drawn once and named, titles that never overlap, and PNG + PDF output."""

from __future__ import annotations

import itertools
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PolyCollection
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure

from analysis import plots
from bench.schema import REDUCTIONS

# Greyscale: every pair of the known reductions' colours differs at least this much in CIE L*
# (0-100) and in Rec. 709 and Rec. 601 luma (0-1, of the gamma-encoded sRGB values, which is
# what most "convert to greyscale" tools compute).
MIN_LIGHTNESS_DIFFERENCE = 8.0
MIN_LUMA_DIFFERENCE = 0.07
# Colour: every pair differs at least this much in CIE76 delta-E (L*a*b* distance; about 2.3 is
# a just-noticeable difference), and at least the second under each simulated colour-vision
# deficiency (Machado, Oliveira and Fernandes 2009, severity 1).
MIN_DELTA_E = 30.0
MIN_DELTA_E_DEFICIENT = 12.0
CVD_MATRICES = {
    "protanopia": np.array(
        [
            [0.152286, 1.052583, -0.204868],
            [0.114503, 0.786281, 0.099216],
            [-0.003882, -0.048116, 1.051998],
        ]
    ),
    "deuteranopia": np.array(
        [
            [0.367322, 0.860646, -0.227968],
            [0.280085, 0.672501, 0.047413],
            [-0.011820, 0.042940, 0.968881],
        ]
    ),
    "tritanopia": np.array(
        [
            [1.255528, -0.076749, -0.178779],
            [-0.078411, 0.930809, 0.147602],
            [0.004733, 0.691367, 0.303900],
        ]
    ),
}
SRGB_TO_XYZ = np.array(
    [[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]
)


def to_linear(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb, dtype=float)
    return np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)


def to_gamma(linear: np.ndarray) -> np.ndarray:
    linear = np.clip(linear, 0.0, 1.0)
    return np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055)


def cie_lab(rgb: np.ndarray) -> np.ndarray:
    """CIE L*a*b* (D65 white) of an sRGB colour in [0, 1]."""
    xyz = SRGB_TO_XYZ @ to_linear(rgb) / SRGB_TO_XYZ.sum(axis=1)
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def simulate(rgb: np.ndarray, deficiency: str) -> np.ndarray:
    return to_gamma(CVD_MATRICES[deficiency] @ to_linear(rgb))


@pytest.fixture(scope="module")
def palette() -> dict[str, np.ndarray]:
    styles = plots.reduction_styles(REDUCTIONS)
    assert list(styles) == list(REDUCTIONS)
    return {name: np.array(style.color) for name, style in styles.items()}


def pairs(values: dict[str, np.ndarray]) -> list[tuple[str, str]]:
    return list(itertools.combinations(values, 2))


def test_palette_lightness_is_distinct_in_greyscale(palette: dict[str, np.ndarray]) -> None:
    lightness = {name: cie_lab(rgb)[0] for name, rgb in palette.items()}
    luma_709 = {name: float(rgb @ [0.2126, 0.7152, 0.0722]) for name, rgb in palette.items()}
    luma_601 = {name: float(rgb @ [0.299, 0.587, 0.114]) for name, rgb in palette.items()}
    for a, b in pairs(palette):
        assert abs(lightness[a] - lightness[b]) >= MIN_LIGHTNESS_DIFFERENCE, (a, b)
        assert abs(luma_709[a] - luma_709[b]) >= MIN_LUMA_DIFFERENCE, (a, b)
        assert abs(luma_601[a] - luma_601[b]) >= MIN_LUMA_DIFFERENCE, (a, b)
    # Visible on white: none is near-white.
    assert max(lightness.values()) <= 82


def test_palette_colours_are_distinct_for_all_readers(palette: dict[str, np.ndarray]) -> None:
    lab = {name: cie_lab(rgb) for name, rgb in palette.items()}
    for a, b in pairs(palette):
        assert np.linalg.norm(lab[a] - lab[b]) >= MIN_DELTA_E, (a, b)
    for deficiency in CVD_MATRICES:
        seen = {name: cie_lab(simulate(rgb, deficiency)) for name, rgb in palette.items()}
        for a, b in pairs(palette):
            assert np.linalg.norm(seen[a] - seen[b]) >= MIN_DELTA_E_DEFICIENT, (deficiency, a, b)


def test_mean_and_traj_step_mean_no_longer_look_alike(palette: dict[str, np.ndarray]) -> None:
    assert np.linalg.norm(cie_lab(palette["mean"]) - cie_lab(palette["traj_step_mean"])) > 50


def test_styles_distinct_and_stable_with_unknown_reductions() -> None:
    known = plots.reduction_styles(REDUCTIONS)
    assert len({s.linestyle for s in known.values()}) == len(REDUCTIONS)
    assert len({s.marker for s in known.values()}) == len(REDUCTIONS)
    mixed = plots.reduction_styles(["zeta", "mean", "alpha"])
    assert mixed["mean"] == known["mean"]
    assert set(mixed) == {"zeta", "mean", "alpha"}
    assert mixed["alpha"].color != mixed["zeta"].color
    assert mixed["alpha"].marker not in {s.marker for s in known.values()}
    assert plots.ordered_reductions(["zeta", "mean", "alpha", "sum"]) == [
        "sum",
        "mean",
        "alpha",
        "zeta",
    ]


# Identical curves ---------------------------------------------------------------------------


def curve_rows(env: str, algo: str, reduction: str, seed: int, points: int = 40) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    value = np.cumsum(rng.normal(1.0, 1.0, points))
    value[:3] = np.nan  # before the first finished episode
    return pd.DataFrame(
        {
            "env": env,
            "algo": algo,
            "reduction": reduction,
            "env_step": np.linspace(500, 20_000, points),
            "value": value,
            "low": value - 2,
            "high": value + 2,
            "n_seeds": 5,
        }
    )


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[Figure]:
    """The figures the plot functions save (they are still written)."""
    figures: list[Figure] = []
    save = plots.save_figure

    def capture(figure: Figure, path_stem: Path) -> list[Path]:
        figures.append(figure)
        return save(figure, path_stem)

    monkeypatch.setattr(plots, "save_figure", capture)
    return figures


def legend_texts(figure: Figure) -> list[str]:
    return [text.get_text() for legend in figure.legends for text in legend.get_texts()]


def assert_no_identical_bands(figure: Figure) -> None:
    for ax in figure.axes:
        bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
        vertices = [np.concatenate([p.vertices for p in band.get_paths()]) for band in bands]
        for first, second in itertools.combinations(vertices, 2):
            assert not (
                first.shape == second.shape and np.array_equal(first, second, equal_nan=True)
            )


def test_identical_curve_groups_are_exact_and_nan_aware() -> None:
    facet = pd.concat(
        [
            curve_rows("e", "a", "sum", 0),
            curve_rows("e", "a", "traj_mean", 0),  # equal to sum, NaNs included
            curve_rows("e", "a", "mean", 1),
            curve_rows("e", "a", "per_step", 0).assign(high=lambda f: f["high"] + 1e-12),
        ]
    )
    # Row order does not matter.
    facet = facet.sample(frac=1.0, random_state=0)
    assert plots.identical_curve_groups(facet, "env_step") == [
        ["sum", "traj_mean"],
        ["mean"],
        ["per_step"],
    ]
    empty = pd.concat([curve_rows("e", "a", r, 0).assign(value=np.nan) for r in ("sum", "mean")])
    assert plots.identical_curve_groups(empty, "env_step") == [["sum"], ["mean"]]
    shifted = pd.concat(
        [
            curve_rows("e", "a", "sum", 0),
            curve_rows("e", "a", "mean", 0).assign(env_step=lambda f: f["env_step"] + 1),
        ]
    )
    assert plots.identical_curve_groups(shifted, "env_step") == [["sum"], ["mean"]]


def test_convergence_draws_identical_curves_once_and_names_them(
    tmp_path: Path, captured: list[Figure]
) -> None:
    bands = pd.concat(
        [
            curve_rows("cartpole", "reinforce", "sum", 0),
            curve_rows("cartpole", "reinforce", "mean", 1),
            curve_rows("cartpole", "reinforce", "traj_mean", 0),  # = sum here
            curve_rows("acrobot", "reinforce", "sum", 2),
            curve_rows("acrobot", "reinforce", "mean", 3),
            curve_rows("acrobot", "reinforce", "traj_mean", 4),  # differs here
        ]
    )
    plots.plot_convergence(bands, "optim=adam", tmp_path / "convergence")
    (figure,) = captured
    labels = legend_texts(figure)
    assert "traj_mean (5 seeds; = sum in 1 of 2 facets)" in labels
    assert "sum (5 seeds)" in labels and "mean (5 seeds)" in labels
    header = figure.get_suptitle().replace("\n", " ")
    assert "identical curves" in header
    assert "sum = traj_mean (cartpole \u00b7 reinforce)" in header
    assert_no_identical_bands(figure)
    by_title = {ax.get_title(): ax for ax in figure.axes}
    bands_in = {
        title: sum(isinstance(c, PolyCollection) for c in ax.collections)
        for title, ax in by_title.items()
    }
    assert bands_in == {"acrobot \u00b7 reinforce": 3, "cartpole \u00b7 reinforce": 2}
    # traj_mean still shows in the cartpole facet: its markers on sum's line, in its colour.
    traj_colour = plots.reduction_styles(["traj_mean"])["traj_mean"].color
    overlays = [
        line
        for line in by_title["cartpole \u00b7 reinforce"].get_lines()
        if to_rgb(line.get_color()) == traj_colour
    ]
    assert len(overlays) == 1 and overlays[0].get_linestyle() == "None"


def test_lr_sensitivity_draws_identical_points_once(tmp_path: Path, captured: list[Figure]) -> None:
    lrs = np.array([1e-4, 1e-3, 1e-2])

    def points(row: str, reduction: str, seed: int) -> pd.DataFrame:
        value = np.random.default_rng(seed).normal(100, 20, lrs.size)
        return pd.DataFrame(
            {
                "row": row,
                "column": "algo=reinforce \u00b7 optim=adam",
                "reduction": reduction,
                "lr": lrs,
                "value": value,
                "low": value - 5,
                "high": value + 5,
                "n_seeds": 4,
            }
        )

    frame = pd.concat(
        [
            points("env=cartpole", "sum", 0),
            points("env=cartpole", "traj_mean", 0),
            points("env=cartpole", "per_step", 0),
            points("env=acrobot", "sum", 1),
            points("env=acrobot", "traj_mean", 2),
            points("env=acrobot", "per_step", 1),
        ]
    )
    plots.plot_lr_sensitivity(frame, "final return", "Final return", tmp_path / "lr")
    (figure,) = captured
    labels = legend_texts(figure)
    assert "traj_mean (4 seeds; = sum in 1 of 2 facets)" in labels
    assert "per_step (4 seeds; = sum in 2 of 2 facets)" in labels
    header = figure.get_suptitle().replace("\n", " ")
    assert "sum = traj_mean = per_step (env=cartpole \u00b7 algo=reinforce \u00b7 optim=adam)" in (
        header
    )
    assert "sum = per_step (env=acrobot \u00b7 algo=reinforce \u00b7 optim=adam)" in header
    errorbars = {ax.get_title().replace("\n", " "): len(ax.containers) for ax in figure.axes}
    assert sorted(errorbars.values()) == [1, 2]


def test_performance_profile_draws_identical_profiles_once(
    tmp_path: Path, captured: list[Figure]
) -> None:
    tau = np.linspace(0, 1, 11)
    value = np.linspace(1, 0, 11)
    profiles = pd.concat(
        [
            pd.DataFrame(
                {
                    "group": "all",
                    "reduction": reduction,
                    "tau": tau,
                    "value": value * scale,
                    "low": value * scale - 0.05,
                    "high": value * scale + 0.05,
                    "n_runs": 12,
                }
            )
            for reduction, scale in (("sum", 1.0), ("mean", 0.9), ("per_step", 1.0))
        ]
    )
    plots.plot_performance_profile(profiles, "Performance profile", tmp_path / "profile")
    (figure,) = captured
    assert "per_step (12 runs; = sum in 1 of 1 facets)" in legend_texts(figure)
    assert "sum = per_step (the facet)" in figure.get_suptitle().replace("\n", " ")
    assert_no_identical_bands(figure)


# Titles -------------------------------------------------------------------------------------

LONG_GROUPS = [
    "algo=reinforce \u00b7 optim=adam \u00b7 lr=0.0003 \u00b7 batch_size=16 \u00b7 "
    "entropy_coef=0.01 \u00b7 baseline=none",
    "algo=actor_critic \u00b7 optim=sgd \u00b7 lr=0.001 \u00b7 batch_size=64 \u00b7 "
    "entropy_coef=0.0 \u00b7 baseline=value",
    "algo=reinforce \u00b7 optim=sgd \u00b7 lr=0.01 \u00b7 batch_size=16",
]
LONG_TITLE = (
    "Normalised final return across envs (acrobot, cartpole, mountaincar, pendulum); 0 = random "
    "policy, 1 = solved\npoint: statistic over all runs pooled; bar: 95% stratified bootstrap CI "
    "(seeds resampled within each env); optimality gap: lower is better"
)


def assert_titles_clear(figure: Figure) -> None:
    """No two titles (axes titles and the suptitle) overlap, none overlaps another axes, and
    all lie within the figure's width."""
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    titles = [(ax, ax.title) for ax in figure.axes if ax.get_title()]
    if figure.get_suptitle():
        titles += [(None, t) for t in figure.texts if t.get_text() == figure.get_suptitle()]
    boxes = [(ax, text.get_window_extent(renderer)) for ax, text in titles]
    for (_, first), (_, second) in itertools.combinations(boxes, 2):
        assert not first.overlaps(second), (first, second)
    for owner, box in boxes:
        assert box.x0 >= 0 and box.x1 <= figure.bbox.width, box
        for ax in figure.axes:
            if ax is not owner:
                assert not box.overlaps(ax.get_window_extent(renderer)), (box, ax.get_title())


def interval_frame(groups: list[str]) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for group, statistic, reduction in itertools.product(
        groups, ("IQM", "mean", "optimality gap"), REDUCTIONS
    ):
        value = rng.uniform(0.2, 0.8)
        rows.append(
            {
                "group": group,
                "statistic": statistic,
                "reduction": reduction,
                "value": value,
                "low": value - 0.1,
                "high": value + 0.1,
            }
        )
    return pd.DataFrame(rows)


def test_aggregate_interval_titles_never_overlap(tmp_path: Path, captured: list[Figure]) -> None:
    plots.plot_aggregate_intervals(interval_frame(LONG_GROUPS), LONG_TITLE, tmp_path / "agg")
    (figure,) = captured
    assert_titles_clear(figure)
    # Long labels wrap rather than run into the neighbouring panel; no text is lost.
    titles = [ax.get_title() for ax in figure.axes]
    assert all(title.count("\n") >= 2 for title in titles)
    assert {" ".join(title.split("\n")[1:]) for title in titles} == set(LONG_GROUPS)


def test_one_narrow_panel_with_a_long_title(tmp_path: Path, captured: list[Figure]) -> None:
    frame = interval_frame(["x" * 150])  # one unbreakable word
    frame = frame[frame["statistic"] == "IQM"]
    plots.plot_aggregate_intervals(frame, LONG_TITLE, tmp_path / "agg")
    (figure,) = captured
    assert_titles_clear(figure)


def test_profile_and_convergence_titles_never_overlap(
    tmp_path: Path, captured: list[Figure]
) -> None:
    tau = np.linspace(0, 1, 11)
    profiles = pd.concat(
        [
            pd.DataFrame(
                {
                    "group": group,
                    "reduction": reduction,
                    "tau": tau,
                    "value": np.linspace(1, 0, 11) ** (i + 1),
                    "low": 0.0,
                    "high": 1.0,
                    "n_runs": 12,
                }
            )
            for group in LONG_GROUPS
            for i, reduction in enumerate(("sum", "mean"))
        ]
    )
    plots.plot_performance_profile(profiles, LONG_TITLE, tmp_path / "profile")
    env = "a_rather_long_environment_name-v1"
    bands = pd.concat(
        [
            curve_rows(env, algo, reduction, seed)
            for algo in ("reinforce_with_baseline", "actor_critic_gae")
            for seed, reduction in enumerate(("sum", "mean"))
        ]
    )
    plots.plot_convergence(bands, LONG_TITLE.replace("\n", " "), tmp_path / "convergence")
    assert len(captured) == 2
    for figure in captured:
        assert_titles_clear(figure)


# Output -------------------------------------------------------------------------------------


def assert_written(paths: list[Path], stem: Path) -> None:
    assert paths == [stem.parent / f"{stem.name}.png", stem.parent / f"{stem.name}.pdf"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths[1].read_bytes()[:5] == b"%PDF-"


def test_every_figure_writes_png_and_pdf(tmp_path: Path) -> None:
    bands = pd.concat(
        [curve_rows("cartpole", "reinforce", r, i) for i, r in enumerate(("sum", "mean"))]
        + [curve_rows("acrobot", "reinforce", "sum", 5).assign(value=np.nan)]
    )
    stem = tmp_path / "out" / "convergence-lr=0.0003"
    assert_written(plots.plot_convergence(bands, "lr=0.0003", stem, 0.9), stem)

    points = bands.rename(columns={"env": "row", "algo": "column", "env_step": "lr"})
    points = points[points["lr"] > 15_000].assign(lr=lambda f: f["lr"] / 1e7)
    stem = tmp_path / "lr_sensitivity-final_return"
    assert_written(plots.plot_lr_sensitivity(points, "final return", "t", stem), stem)

    stem = tmp_path / "aggregate"
    assert_written(plots.plot_aggregate_intervals(interval_frame(["all"]), "t", stem), stem)

    profiles = pd.DataFrame(
        {
            "group": "all",
            "reduction": "sum",
            "tau": [0.0, 0.5, 1.0],
            "value": [1.0, 0.5, 0.0],
            "low": [1.0, 0.4, 0.0],
            "high": [1.0, 0.6, 0.1],
            "n_runs": 3,
        }
    )
    stem = tmp_path / "performance_profile"
    assert_written(plots.plot_performance_profile(profiles, "t", stem), stem)


def test_wrap_text_keeps_lines_within_the_width() -> None:
    text = " \u00b7 ".join(f"key{i}=value{i}" for i in range(12)) + "\nsecond line"
    wrapped = plots.wrap_text(text, 2.0)
    lines = wrapped.split("\n")
    assert len(lines) > 3 and lines[-1] == "second line"
    assert all(plots.text_width_inches(line) <= 2.0 for line in lines)
    assert wrapped.replace("\n", " ").replace("  ", " ") == text.replace("\n", " ")
    assert not any(line.startswith("\u00b7") for line in lines)
