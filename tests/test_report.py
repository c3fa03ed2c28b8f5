"""The HTML run report: written from the files of a run folder, self-contained, and rendered by
headless Chromium (.ci/run installs Debian's chromium; elsewhere the test is skipped without it)."""
import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest

from lightning_metanas import plots
from lightning_metanas.report import ReportError, write_report
from lightning_metanas.search_space import Architecture

ROOT = Path(__file__).resolve().parents[1]
BEST = {"ops": ["conv3x3", "sep_conv3x3", "max_pool3x3"], "widths": [32, 64, 48]}
ARCHIVE = [
    {"arch": BEST, "architecture": str(Architecture.of(BEST)), "score": 0.61, "predicted": 0.58,
     "params": 9000, "flops": 900000, "in_population": True},
    {"arch": {"ops": ["conv3x3", "skip"], "widths": [32, 32]}, "architecture": "conv3x3@32-skip@32",
     "score": 0.45, "predicted": None, "params": 1200, "flops": 200000, "in_population": True},
    {"arch": {"ops": ["conv5x5", "conv3x3"], "widths": [64, 64]}, "architecture": "conv5x5@64-conv3x3@64",
     "score": 0.40, "predicted": 0.47, "params": 15000, "flops": 1500000, "in_population": False},
]
HISTORY = [
    {"generation": g, "best_arch": BEST, "best_score": 0.5 + 0.05 * g, "mean_score": 0.4 + 0.05 * g,
     "diversity": 0.5, "real_scorings": 4, "predictor_used": g > 1, "predictor_tau": None if g == 0 else 0.3}
    for g in range(3)
]
CONFIG = """\
seed_everything: 0
trainer:
  max_epochs: 3
search: {population_size: 2, offspring: 1, selection: aging, tasks_per_score: 4}
model:
  meta: {meta_gradient: first_order, inner_steps: 1, eval_inner_steps: 3}
  search_space: {ops: [conv3x3, sep_conv3x3], widths: [32, 64], depths: [2, 3]}
data: {dataset: omniglot, ways: 5, shots: 1, queries: 1, meta_batch_size: 32}
"""


def make_run(root: Path, with_plots: bool = True, with_test: bool = True) -> Path:
    """A run folder as train.py + the tracking callback leave it, built by hand."""
    run = root / "search" / "version_0"
    out = run / "checkpoints"
    out.mkdir(parents=True)
    (run / "config.yaml").write_text(CONFIG)
    with (run / "metrics.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, ["epoch", "step", "train/loss", "train/acc", "val/acc"])
        writer.writeheader()
        for step in range(9):
            writer.writerow({"epoch": step // 3, "step": step, "train/loss": 1.6 - 0.1 * step,
                             "train/acc": 0.3 + 0.03 * step, "val/acc": ""})
            if step % 3 == 2:
                writer.writerow({"epoch": step // 3, "step": step, "val/acc": 0.5 + 0.02 * step})
    (out / "best_arch.json").write_text(json.dumps(BEST))
    (out / "search_history.json").write_text(json.dumps(HISTORY))
    population = [dict(r, born=1) for r in ARCHIVE[:2]]
    (out / "scored.json").write_text(json.dumps({
        "generation": 2, "image_size": 28, "image_channels": 1, "ways": 5, "best": BEST,
        "population": population, "archive": ARCHIVE}))
    if with_test:
        (run / "test_result.json").write_text(json.dumps({
            "acc": 0.8734, "acc_ci95": 0.0123, "tasks": 600, "ways": 5, "shots": 1, "arch": BEST}))
    if with_plots:
        plots.write_search_plots(out, HISTORY, ARCHIVE, best=BEST, ways=5, input_shape="1x28x28")
    return run


def test_report_shows_plots_best_architecture_search_and_meta_test(tmp_path):
    run = make_run(tmp_path)
    path = write_report(run)
    assert path == run / "report.html"
    page = path.read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "87.34%" in page and "600 tasks" in page  # the meta-test result
    assert "conv3x3@32-sep_conv3x3@64-max_pool3x3@48" in page  # the best architecture
    assert "omniglot 5-way 1-shot" in page
    for heading in ("Best architecture", "Plots", "Final population", "Accuracy-cost front", "Search history",
                    "Meta-test", "Settings"):
        assert f"<h2>{heading}" in page, heading
    # self-contained: every image embedded, nothing fetched from anywhere
    images = re.findall(r'<img src="([^"]+)"', page)
    assert len(images) == 6  # best arch, curve, 2 fronts, scatter, training curves
    assert all(src.startswith("data:image/png;base64,") for src in images)
    assert "http://" not in page and "https://" not in page and "<script" not in page


def _rows(page: str, heading: str) -> list[list[tuple[bool, str]]]:
    """The body rows of the table under ``heading``: (marked numeric, text) per cell."""
    section = page.split(f"<h2>{heading}", 1)[1].split("</section>", 1)[0]
    body = section.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    return [[(cls == ' class="num"', text) for cls, text in re.findall(r"<td( class=\"num\")?>(.*?)</td>", row)]
            for row in re.findall(r"<tr[^>]*>(.*?)</tr>", body)]


def test_numbers_are_formatted_and_marked_by_column_not_by_look(tmp_path):
    page = write_report(make_run(tmp_path)).read_text()
    history = _rows(page, "Search history")
    assert len(history) == 3
    # an older history has no raw accuracy: a dash in its numeric column
    assert history[2] == [(True, "2"), (True, "0.600"), (True, "\u2013"), (True, "0.500"), (True, "0.500"), (True, "4"),
                          (False, "yes"), (True, "0.300"), (False, "<code>conv3x3@32-sep_conv3x3@64-max_pool3x3@48</code>")]
    assert history[0][7] == (True, "\u2013")  # no tau yet: a dash, still in the numeric column
    population = _rows(page, "Final population")
    assert population[0] == [(False, "conv3x3@32-sep_conv3x3@64-max_pool3x3@48"), (True, "\u2013"), (True, "0.610"),
                             (True, "0.580"), (True, "9,000"), (True, "900,000"), (True, "1")]
    # settings are text, even where a value looks like a number
    assert all(not numeric for row in _rows(page, "Settings") for numeric, _ in row)
    assert _rows(page, "Settings")[-1] == [(False, "seed"), (False, "0")]


def test_a_meta_tested_architecture_other_than_the_best_is_named(tmp_path):
    run = make_run(tmp_path)
    assert "Meta-tested architecture" not in write_report(run).read_text()  # the best one was tested
    other = {"ops": ["conv3x3", "skip"], "widths": [32, 32]}
    test = json.loads((run / "test_result.json").read_text()) | {"arch": other}
    page = write_report(run, test=test).read_text()
    assert "Meta-tested architecture (from the best checkpoint): <code>conv3x3@32-skip@32</code>" in page


def test_what_the_files_hold_is_escaped(tmp_path):
    run = make_run(tmp_path)
    (run / "config.yaml").write_text(CONFIG + "# <script>alert('x')</script> & <b>\n")
    page = write_report(run).read_text()
    assert "<script" not in page and "<b>" not in page
    assert "# &lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &lt;b&gt;" in page


def test_missing_plots_are_drawn_from_the_json_files(tmp_path):
    run = make_run(tmp_path, with_plots=False, with_test=False)
    page = write_report(run).read_text()
    for name in ("search_curve.png", "predicted_vs_measured.png", "accuracy_vs_params.png",
                 "accuracy_vs_flops.png", "best_arch.png", "training_curves.png"):
        assert (run / "checkpoints" / name).is_file(), name
    assert "no test_result.json" in page


def test_report_command_line(tmp_path):
    run = make_run(tmp_path)
    out = tmp_path / "elsewhere" / "r.html"
    proc = subprocess.run([sys.executable, "-m", "lightning_metanas.report", str(run / "checkpoints"),
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert out.is_file() and f"report: {out}" in proc.stdout
    bad = subprocess.run([sys.executable, "-m", "lightning_metanas.report", str(tmp_path / "nope")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert "does not exist" in bad.stderr
    with pytest.raises(ReportError, match="holds none of"):
        write_report(tmp_path)  # a folder that is not a run


@pytest.mark.skipif(shutil.which("chromium") is None and not os.environ.get("REPORT_BROWSER_REQUIRED"),
                    reason="headless Chromium (Debian: chromium) not installed; .ci/run installs it")
def test_report_renders_in_headless_chromium(tmp_path):
    run = make_run(tmp_path)
    page = write_report(run)
    shot = tmp_path / "screenshot.png"
    proc = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
         f"--user-data-dir={tmp_path / 'chromium-profile'}", f"--screenshot={shot}",
         "--window-size=1200,1600", page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120, env=dict(os.environ, HOME=str(tmp_path)),
    )
    assert shot.is_file(), proc.stderr[-2000:]
    image = matplotlib.image.imread(shot)[..., :3]
    assert image.shape[:2] == (1600, 1200)
    assert image.std() > 0.1  # not blank: text, cards and plots were drawn
    # the CSS was applied: the header band is the report's dark blue (#2d3e50)
    assert abs(image[10, 600] - [0x2D / 255, 0x3E / 255, 0x50 / 255]).max() < 0.02
    # the embedded plots were decoded: many distinct colours below the header
    colours = {tuple(p) for p in (image[200:1600:7, ::7] * 255).astype(int).reshape(-1, 3)}
    assert len(colours) > 200


def test_a_resumed_runs_curves_cover_the_whole_run(tmp_path):
    """The killed run's rows up to the resume step, then the resumed run's (RESUMED_FROM)."""
    from lightning_metanas.report import run_metrics, write_resume_record

    first, second = tmp_path / "version_0", tmp_path / "version_1"
    for run, steps in ((first, [5, 10, 15, 20]), (second, [20, 25, 30])):
        run.mkdir()
        (run / "metrics.csv").write_text("step,train/loss\n" + "".join(f"{s},{s / 10}\n" for s in steps))
    write_resume_record(second, first / "checkpoints" / "last.ckpt", step=19)
    assert [r["step"] for r in run_metrics(second)] == ["5", "10", "15", "20", "25", "30"]
    write_resume_record(first, first / "checkpoints" / "last.ckpt", step=3)  # its own checkpoint: no record
    assert not (first / "resumed_from.json").exists()
