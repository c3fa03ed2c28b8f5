"""lightning_metanas.plots: plain data in, a real picture out (no Trainer)."""
import matplotlib.image
import pytest

from lightning_metanas import plots

HISTORY = [
    {"generation": 0, "best_score": 0.50, "mean_score": 0.40, "predictor_tau": None},
    {"generation": 1, "best_score": 0.55, "mean_score": 0.45, "predictor_tau": 0.2},
    {"generation": 2, "best_score": 0.61, "mean_score": 0.52, "predictor_tau": 0.5},
]
BEST = {"ops": ["conv3x3", "sep_conv3x3", "max_pool3x3"], "widths": [32, 64, 48]}
ROWS = [
    {"arch": BEST, "score": 0.61, "predicted": 0.58, "params": 9000, "flops": 900000, "in_population": True},
    {"arch": {"ops": ["conv3x3", "skip"], "widths": [32, 32]}, "score": 0.45, "predicted": None,
     "params": 1200, "flops": 200000, "in_population": True},
    {"arch": {"ops": ["conv5x5", "conv3x3"], "widths": [64, 64]}, "score": 0.40, "predicted": 0.47,
     "params": 15000, "flops": 1500000, "in_population": False},
    {"arch": {"ops": ["avg_pool3x3", "conv3x3"], "widths": [32, 64]}, "score": 0.52, "predicted": 0.50,
     "params": 3000, "flops": 400000, "in_population": False},
]


def picture(path):
    """The PNG as an array, after checking it is a real, non-blank picture."""
    assert path.is_file() and path.stat().st_size > 2000
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert image[..., :3].std() > 0.05  # not a blank canvas
    return image


def test_pareto_front_keeps_only_undominated_points():
    points = [(10, 0.5), (5, 0.4), (20, 0.7), (15, 0.45), (5, 0.3), (25, 0.7)]
    assert plots.pareto_front(points) == [1, 0, 2]
    assert plots.pareto_front([]) == []


def test_kendall_tau_is_the_predictors_statistic():
    """The plots, the report and the predictor's trust all use metrics.kendall_tau
    (torchmetrics' tau-b): with ties it is not tau-a."""
    import torch
    from torchmetrics.functional.regression import kendall_rank_corrcoef

    from lightning_metanas.metrics import kendall_tau

    assert kendall_tau([1, 2, 3], [10, 20, 30]) == 1.0
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == -1.0
    assert kendall_tau([1], [1]) is None
    assert kendall_tau([1, 2, 3], [5, 5, 5]) == 0.0  # one side constant: no rank information
    xs, ys = [0.1, 0.2, 0.2, 0.5, 0.4], [0.3, 0.1, 0.2, 0.6, 0.6]
    assert kendall_tau(xs, ys) == float(kendall_rank_corrcoef(torch.tensor(xs), torch.tensor(ys)))
    assert kendall_tau(xs, ys) == pytest.approx(4 / 9, abs=1e-6)  # tau-b: (6 - 2) / sqrt(9 * 9); tau-a: 0.4


def test_input_shape_label():
    assert plots.input_shape(28, 1) == "1x28x28" and plots.input_shape(14) == "14x14"
    assert plots.input_shape(None, 3) is None


def test_every_search_plot_is_written(tmp_path):
    out = plots.write_search_plots(tmp_path, HISTORY, ROWS, best=BEST, ways=5, input_shape="1x28x28")
    assert set(out) == {"search_curve", "predicted_vs_measured", "accuracy_vs_params",
                        "accuracy_vs_flops", "best_arch"}
    assert {p.name for p in out.values()} == {
        "search_curve.png", "predicted_vs_measured.png", "accuracy_vs_params.png",
        "accuracy_vs_flops.png", "best_arch.png"}
    for path in out.values():
        picture(path)
    # the architecture drawing grows with the number of layers
    deep = plots.plot_architecture({"ops": ["conv3x3"] * 8, "widths": [64] * 8}, tmp_path / "deep.png")
    assert picture(deep).shape[1] > picture(out["best_arch"]).shape[1]


@pytest.mark.parametrize("history, rows", [([], []), (HISTORY[:1], [dict(ROWS[1])])])
def test_plots_of_an_early_search_still_draw(tmp_path, history, rows):
    # no generation yet / no prediction yet: a picture that says so, not an exception
    out = plots.write_search_plots(tmp_path, history, rows, best=None)
    assert "best_arch" not in out
    for path in out.values():
        picture(path)


def test_training_curves_from_metrics_csv_rows(tmp_path):
    rows = [{"epoch": "0", "step": str(s), "train/loss": str(2 - 0.1 * s), "train/acc": str(0.2 + 0.05 * s),
             "val/acc": ""} for s in range(6)]
    rows.append({"epoch": "0", "step": "5", "train/loss": "", "train/acc": "", "val/acc": "0.6"})
    picture(plots.plot_training_curves(rows, tmp_path / "curves.png"))
    picture(plots.plot_training_curves([], tmp_path / "none.png"))


def test_plots_do_not_touch_pyplot_state():
    import matplotlib

    backend = matplotlib.get_backend()
    assert "matplotlib.pyplot" not in plots.__dict__
    assert matplotlib.get_backend() == backend
    plots.plot_predicted_vs_measured(ROWS, "/dev/null")  # draws without pyplot
    assert matplotlib.get_backend() == backend
