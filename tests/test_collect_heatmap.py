"""Heatmaps and convergence curves: the grid, its best cells, and what the rendered image shows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.image import imread

from qvtune.collect import curves, figures, heatmap
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


def grid_store(root: Path, seeds: tuple[int, ...] = (0, 1, 2), sweep: str = "heatmap") -> Path:
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
