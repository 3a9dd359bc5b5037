"""Heatmaps and convergence curves: the grid, its best cells, and what the rendered image shows."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.image import imread

from qvtune.collect import curves, figures, heatmap, verdicts
from qvtune.collect.records import load
from tests.helpers.sample_records import make_record, write_record

QK = (1e-4, 2e-4, 4e-4)
V = (1e-4, 4e-4, 8e-4)
# accuracy per (eta_QK, eta_V) (seed s adds 0.001 s): the best cell (1e-4, 4e-4) is off the diagonal, whose
# cells are (1e-4, 1e-4) and (4e-4, 4e-4); (4e-4, 8e-4) diverges.
GRID = {
    (1e-4, 1e-4): 0.80,
    (1e-4, 4e-4): 0.83,
    (1e-4, 8e-4): 0.82,
    (2e-4, 1e-4): 0.79,
    (2e-4, 4e-4): 0.81,
    (2e-4, 8e-4): 0.78,
    (4e-4, 1e-4): 0.60,
    (4e-4, 4e-4): 0.81,
    (4e-4, 8e-4): 0.33,
}


def grid_store(
    root: Path, seeds: tuple[int, ...] = (0, 1, 2), sweep: str = "heatmap", **settings: object
) -> Path:
    """GRID's runs; `settings` (make_record's extra_config) set other keyed settings on each of them."""
    for (qk, v), value in GRID.items():
        for seed in seeds:
            if (qk, v) == (2e-4, 8e-4) and seed == 2:
                continue  # a missing seed
            status = "diverged" if value < 0.5 else "completed"
            record = make_record(
                targets="qkv",
                lr=qk,
                lam=None,
                lr_v=v,
                seed=seed,
                value=value + 0.001 * seed,
                status=status,
                sweep=sweep,
                extra_config=settings,
            )
            write_record(root, record, sweep)
    return root


def table1_runs(root: Path, lr: float = 5e-4) -> None:
    """Table 1's lambda = 1 runs at a rate off the grid, in every other setting like the grid's; better."""
    for seed in (0, 1, 2):
        write_record(root, make_record(targets="qkv", lr=lr, seed=seed, value=0.9, sweep="table1"), "table1")


@pytest.fixture
def grid(tmp_path: Path) -> heatmap.Heatmap:
    found = heatmap.find(load(grid_store(tmp_path / "results")))
    assert len(found) == 1
    return found[0]


def test_grid_best_and_diagonal(grid: heatmap.Heatmap) -> None:
    mean = grid.mean
    assert list(mean.index) == list(QK) and list(mean.columns) == list(V)
    assert mean.loc[4e-4, 1e-4] == pytest.approx(0.601)
    assert (grid.best.lr, grid.best.lr_v) == (1e-4, 4e-4) and grid.best.value == pytest.approx(0.831)
    assert grid.best.lam == pytest.approx(4)
    # diagonal cells: (1e-4, 1e-4) = 0.801 and (4e-4, 4e-4) = 0.811
    assert (grid.best_diagonal.lr, grid.best_diagonal.lr_v) == (4e-4, 4e-4)
    assert grid.gap == pytest.approx(0.02)
    assert grid.caption == (
        "best (η_QK, η_V) = (1e-4, 4e-4), λ = 4: 0.831; best with λ = 1: η = 4e-4: 0.811; gap +0.020"
    )
    assert grid.name == "heatmap_heatmap_roberta-base_mnli_lora_qkv_r8"  # the sweep's name, then the settings
    assert grid.title == "roberta-base · MNLI · LoRA (QKV) r = 8 · sweep heatmap"
    cells = grid.cells.set_index(["lr", "lr_v"])
    assert cells.loc[(2e-4, 8e-4), ["n", "n_expected"]].tolist() == [2, 3]
    assert cells.loc[(4e-4, 8e-4), "diverged"] == 3


def test_rendered_image(grid: heatmap.Heatmap, tmp_path: Path) -> None:
    png, pdf = heatmap.save(grid, tmp_path, floor=0.75)
    image = imread(png)
    assert image.shape[:2] == (400, 700)  # figure size x dpi: 7 x 4 inches at 100 dpi
    assert pdf.read_bytes().startswith(b"%PDF")

    fig = heatmap.draw(grid, floor=0.75)
    FigureCanvasAgg(fig).draw()  # lays the figure out as savefig did, to find the cells in the PNG
    ax = fig.axes[0]

    def colour(qk: float, v: float) -> tuple[float, ...]:
        """The PNG's colour near a cell's corner (away from its text and frame)."""
        x, y = ax.transData.transform((V.index(v) - 0.3, QK.index(qk) - 0.3))
        return tuple(image[int(image.shape[0] - y), int(x)][:3])

    assert colour(1e-4, 4e-4) != colour(2e-4, 1e-4)  # best and a weaker cell differ
    # below the floor: 0.601 and the diverged 0.331 are drawn alike, in the floor's colour
    assert colour(4e-4, 1e-4) == colour(4e-4, 8e-4)
    texts = [t.get_text() for t in ax.texts]
    assert "0.831" in texts and "0.331†" in texts and "0.780\n2/3" in texts
    red = [t.get_text() for t in ax.texts if t.get_color() == heatmap.HIGHLIGHT]
    assert sorted(red) == ["0.801", "0.811", "0.831"]  # the diagonal and the best cell


def test_a_continuous_search_is_drawn_as_a_scatter_of_its_trials(
    tmp_path: Path, grid: heatmap.Heatmap
) -> None:
    rng = np.random.default_rng(0)
    trials = [  # three significant digits: the collector keeps six, so they compare exactly
        (float(f"{qk:.3g}"), float(f"{qk * lam:.3g}"))
        for qk, lam in zip(10 ** rng.uniform(-4.5, -3, 12), 2 ** rng.uniform(0, 4, 12))
    ]
    for i, (qk, v) in enumerate(trials):  # 12 trials, each at its own rates; the fifth diverged
        record = make_record(
            lr=qk,
            lam=None,
            lr_v=v,
            value=0.3 if i == 4 else 0.8 + 0.001 * i,
            status="diverged" if i == 4 else "completed",
            sweep="search-optuna",
        )
        write_record(tmp_path / "trials", record, "search-optuna")
    (search,) = heatmap.find(load(tmp_path / "trials"))
    assert search.sparse and not grid.sparse  # 12 of 144 cells, against 9 of 9
    assert (search.best.lr, search.best.lr_v) == trials[-1]
    fig = heatmap.draw(search)
    ax = fig.axes[0]
    assert (ax.get_xscale(), ax.get_yscale()) == ("log", "log") and not ax.images
    points = ax.collections[0].get_offsets()
    assert sorted(map(tuple, points.tolist())) == sorted(
        (v, qk) for qk, v in trials
    )  # eta_V right, eta_QK up
    texts = [t.get_text() for t in ax.texts]
    assert "0.300†" in texts and f"{0.8 + 0.011:.3f}" in texts
    ring = ax.collections[-1].get_offsets().tolist()
    assert ring == [[search.best.lr_v, search.best.lr]]
    assert heatmap.save(search, tmp_path)[0].exists()


def test_a_grid_holds_one_sweep_unless_pooled(tmp_path: Path) -> None:
    """Table 1's runs at (5e-4, 5e-4) join the grid as a row, a column and the best cell only when pooled."""
    root = grid_store(tmp_path / "results")
    table1_runs(root)
    coll = load(root)
    (own,) = heatmap.find(coll)
    assert list(own.mean.index) == list(QK) and list(own.mean.columns) == list(V)
    assert (own.best.lr, own.best.lr_v) == (1e-4, 4e-4) and own.sweeps == ("heatmap",)
    assert len(own.members(coll.runs)) == 26
    (pooled,) = heatmap.find(coll, pool=True)
    assert list(pooled.mean.index) == [*QK, 5e-4] and list(pooled.mean.columns) == sorted([*V, 5e-4])
    assert (pooled.best.lr, pooled.best.lr_v) == (5e-4, 5e-4) and pooled.best.lam == pytest.approx(1)
    assert pooled.title.endswith("· sweeps heatmap, table1")
    assert pooled.name == "heatmap_roberta-base_mnli_lora_qkv_r8"  # today's stem when pooled
    assert len(pooled.members(coll.runs)) == 29
    # the curves follow: the grid's own best cell is off the diagonal; the pooled one's is on it
    (own_curves,) = curves.for_heatmaps(coll, [own])
    assert own_curves.name == "curves_heatmap_roberta-base_mnli_lora_qkv_r8"
    assert curves.for_heatmaps(coll, [pooled]) == []


def test_twins_belong_to_each_sweep_and_names_stay_unique(tmp_path: Path) -> None:
    root = grid_store(tmp_path / "results")
    grid_store(root, seeds=(3, 4, 5), sweep="heatmap-b")  # a second sweep with the same settings
    twin = make_record(targets="qkv", lr=1e-4, lam=None, lr_v=1e-4, seed=0, value=0.801, sweep="table1")
    write_record(root, twin, "table1")  # the grid's run at (1e-4, 1e-4), seed 0, made by table1 too
    coll = load(root)
    assert coll.duplicates == 1
    found = heatmap.find(coll)
    assert [h.name for h in found] == [
        "heatmap_heatmap-b_roberta-base_mnli_lora_qkv_r8",
        "heatmap_heatmap_roberta-base_mnli_lora_qkv_r8",
    ]
    assert [h.cells.set_index(["lr", "lr_v"]).loc[(1e-4, 1e-4), "n"] for h in found] == [3, 3]
    assert set(heatmap.grid_frame(found)["sweeps"]) == {"heatmap", "heatmap-b"}
    (pooled,) = heatmap.find(coll, pool=True)
    assert pooled.sweeps == ("heatmap", "heatmap-b", "table1")
    assert pooled.cells.set_index(["lr", "lr_v"]).loc[(1e-4, 1e-4), "n"] == 6


def test_grids_that_differ_in_another_setting_are_two_figures_named_apart(tmp_path: Path) -> None:
    """One sweep run twice, on all and on 1000 training samples: two grids, never one, each title
    naming what tells it apart, each file its own; the verdicts on them too."""
    root = grid_store(tmp_path / "results")
    grid_store(root, max_train_samples=1000)
    coll = load(root)
    assert coll.duplicates == 0
    found = heatmap.find(coll)
    assert len(found) == 2 and len({h.name for h in found}) == 2
    titles = sorted(h.title for h in found)
    assert titles[0].endswith("· sweep heatmap") and titles[1].endswith(
        "· sweep heatmap · max_train_samples=1000"
    )
    assert all(len(h.members(coll.runs)) == 26 for h in found)
    contexts = [v.context for v in verdicts.best_lambda(coll, found)]
    assert sorted(contexts) == titles


def test_no_grid_without_two_rates_each(tmp_path: Path) -> None:
    for lam in (1, 2, 4, 8):  # a lambda strip at one eta_QK is not a 2-D grid
        write_record(tmp_path, make_record(targets="qv", lam=lam))
    assert heatmap.find(load(tmp_path)) == []


def test_curves_best_against_diagonal(tmp_path: Path) -> None:
    coll = load(grid_store(tmp_path / "results"))
    (cs,) = curves.for_heatmaps(coll, heatmap.find(coll))
    assert [label for label, _ in cs.settings] == ["η_QK=1e-4, η_V=4e-4, λ=4", "η_QK=4e-4, η_V=4e-4, λ=1"]
    data = curves.compute(coll.root, cs)
    loss = data[(data["series"] == "train_loss") & (data["setting"] == cs.settings[0][0])]
    assert loss["n"].max() == 3 and loss["std"].notna().all()
    assert set(data["series"]) == {"train_loss", "accuracy"}
    assert curves.render(coll.root, cs, tmp_path / "out").equals(data)
    assert imread(tmp_path / "out" / f"{cs.name}.png").shape[:2] == (400, 1000)


def test_band_over_seeds_of_different_lengths() -> None:
    a = np.array([[0, 1.0], [10, 0.5], [20, 0.25]])
    b = np.array([[0, 3.0], [10, 1.5]])  # stopped early (diverged)
    band = curves.band([a, b]).set_index("step")
    assert band.loc[10, "mean"] == pytest.approx(1.0) and band.loc[10, "n"] == 2
    assert band.loc[20, "mean"] == pytest.approx(0.25) and band.loc[20, "n"] == 1
    assert np.isnan(band.loc[20, "std"])


@pytest.mark.parametrize("processes", [0, 1])
def test_renderer_inline_and_in_the_background(processes: int) -> None:
    renderer = figures.Renderer(processes)
    jobs = [renderer.submit(pow, 2, k) for k in range(3)]
    renderer.close()
    assert [job.result() for job in jobs] == [1, 2, 4]
    assert figures.Renderer.for_cores(1).processes == 0 and figures.Renderer.for_cores(2).processes == 1


LAMS = (1, 2, 4)
RATIOS = (None, 4, 16)  # LoRA+'s ratio R; None: off, R = 1
LORAPLUS = dict(task="rte", targets="qkv", lr=2e-4, sweep="loraplus")


def loraplus_store(root: Path, extra: Optional[dict] = None, seeds: tuple[int, ...] = (0, 1)) -> Path:
    """lambda x R as sweeps/loraplus.yaml crosses them; the best cell (2, 16), 0.004 better per seed."""
    for lam, ratio, seed in itertools.product(LAMS, RATIOS, seeds):
        value = 0.70 + 0.02 * (lam == 2) + 0.001 * (ratio or 1) + 0.004 * seed
        settings = {"optim": {"loraplus_ratio": ratio}, **(extra or {})}
        record = make_record(**LORAPLUS, lam=lam, seed=seed, value=value, extra_config=settings)
        write_record(root, record, "loraplus")
    return root


def test_a_sweep_over_lambda_and_the_loraplus_ratio_is_a_heatmap(tmp_path: Path) -> None:
    root = loraplus_store(tmp_path / "results")
    # the same grid evaluated untuned (max_steps = 0): never cells of a heatmap
    loraplus_store(root, {"max_steps": 0}, seeds=(0,))
    coll = load(root)
    assert heatmap.find(coll) == []  # one eta_QK: no Figure 1
    (h,) = heatmap.find_rates(coll)
    assert (h.y.name, h.x.name) == ("lam", "loraplus_ratio")
    assert h.name == "heatmap_loraplus_roberta-base_rte_lora_qkv_r8_lam_x_loraplus_ratio"
    assert list(h.mean.index) == [1, 2, 4] and list(h.mean.columns) == [1, 4, 16]  # off is R = 1
    assert h.mean.loc[1, 1] == pytest.approx(0.703) and h.cells["n"].tolist() == [2] * 9
    assert (h.best.y, h.best.x, h.best.value) == (2, 16, pytest.approx(0.738))
    assert (h.reference.y, h.reference.x) == (1, 1)
    assert h.caption == "best (λ, R) = (2, 16): 0.738; best with λ = 1, R = 1: 0.703; gap +0.035"
    assert h.title == "roberta-base · RTE · LoRA (QKV) r = 8 · sweep loraplus · λ x R"
    (rows_r,) = heatmap.find_rates(coll, ("loraplus_ratio", "lam"))  # asked: rows R, columns lambda
    assert list(rows_r.mean.index) == [1, 4, 16] and rows_r.best == heatmap.Point(16, 2, h.best.value)
    assert heatmap.find_rates(coll, ("lr", "lam")) == []  # one eta_QK: no grid

    fig = heatmap.draw_rates(h)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "4", "16"]
    assert ax.get_ylabel() == "λ = η_V / η_QK" and ax.get_xlabel().startswith("R: LoRA+ ratio")
    red = sorted(t.get_text() for t in ax.texts if t.get_color() == heatmap.HIGHLIGHT)
    assert red == ["0.703", "0.738"]  # the plain run (lambda = 1, R = 1) and the best cell
    frame = heatmap.rate_frame([h])
    assert frame["best"].sum() == 1 and frame["reference"].sum() == 1 and len(frame) == 9


def test_three_varying_rates_are_drawn_only_when_asked(tmp_path: Path) -> None:
    root = tmp_path / "results"
    for lam_o in (1.0, 2.0):
        loraplus_store(root, {"lam_o": lam_o}, seeds=(0,))
    coll = load(root)
    assert heatmap.find_rates(coll) == []  # lambda, R and lambda_O vary: which two is not clear
    found = heatmap.find_rates(coll, ("lam", "loraplus_ratio"))
    assert len(found) == 2 and len({h.name for h in found}) == 2  # one per lambda_O
    by_lam = heatmap.find_rates(coll, ("lam_o", "loraplus_ratio"))  # one per lambda
    assert len(by_lam) == 3 and all(list(h.mean.index) == [1.0, 2.0] for h in by_lam)


def test_figure1_grid_over_lambda_on_request(grid: heatmap.Heatmap, tmp_path: Path) -> None:
    """Figure 1's grid is never drawn twice unasked; over (eta_QK, lambda) its lambda = 1 row is the
    diagonal, so it finds the same best lambda = 1 cell."""
    coll = load(grid_store(tmp_path / "results"))
    assert heatmap.find_rates(coll) == []
    (h,) = heatmap.find_rates(coll, ("lr", "lam"))
    assert h.reference == heatmap.Point(4e-4, 1.0, pytest.approx(grid.best_diagonal.value))
    assert h.best == heatmap.Point(1e-4, 4.0, pytest.approx(grid.best.value))
    assert h.caption.endswith("best with λ = 1: η_QK = 4e-4: 0.811; gap +0.020")


def test_the_axes_a_heatmap_takes() -> None:
    assert heatmap.parse_axes("lam,loraplus_ratio") == ("lam", "loraplus_ratio")
    assert heatmap.parse_axes("lam_o, optim.loraplus_ratio") == ("lam_o", "loraplus_ratio")
    accepted = "lr, lr_v, lam, lam_o, lam_mlp, loraplus_ratio, head_lr"
    with pytest.raises(ValueError, match=f"unknown rate 'eta'; expected two of {accepted}"):
        heatmap.parse_axes("lam,eta")
    for bad in ("lam", "lam,lam", "lr,lam,lr_v", "lam,lr_v"):
        with pytest.raises(ValueError, match=f"--axes {bad}: "):
            heatmap.parse_axes(bad)
