"""The bench scripts' code paths on tiny synthetic runs: the ground-truth table, the ranking
of a SuperNet against it, and the results table's commands. The real runs are benches."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import ground_truth, results
from lightning_metanas.search_space import Architecture, SearchSpace
from tests.test_train import SYNTHETIC, logs, run

ROOT = Path(__file__).resolve().parents[1]
SMALL_SPACE = {"ops": ["conv3x3", "max_pool3x3", "skip"], "widths": [8, 16], "depths": [2, 3]}
TINY = [a for a in SYNTHETIC if not a.startswith("--model.search_space")] + [
    "--data.test_tasks=6", "--data.val_tasks=6",
    f"--model.search_space.ops={SMALL_SPACE['ops']}", f"--model.search_space.widths={SMALL_SPACE['widths']}",
    f"--model.search_space.depths={SMALL_SPACE['depths']}",
]


def test_ground_truth_set_is_stratified_seeded_and_holds_conv4_neighbours_and_picks():
    space = SearchSpace()
    archs = ground_truth.architectures(space)
    assert archs == ground_truth.architectures(space)  # seeded
    assert len(archs) >= 24 and len({a for _, a in archs}) == len(archs)
    assert archs[0] == ("reference", space.reference())
    labels = {str(a) for _, a in archs}
    assert set(ground_truth.PICKED) <= labels
    used = lambda attr: {x for _, a in archs for x in getattr(a, attr)}  # noqa: E731
    assert used("ops") == set(space.ops) and used("widths") == set(space.widths)
    assert {a.depth for _, a in archs} == set(space.depths)
    reference = space.reference()
    for _, arch in archs:
        if _ == "neighbour":  # one edit: one gene changed, or one layer more or fewer
            same_depth = arch.depth == reference.depth
            diffs = sum(o != r for o, r in zip(arch.ops, reference.ops)) + sum(
                w != r for w, r in zip(arch.widths, reference.widths))
            assert (same_depth and diffs == 1) or (abs(arch.depth - reference.depth) == 1 and diffs == 0)
    strat = [a for g, a in archs if g == "stratified"]
    assert len(strat) == 4 * len(space.depths)


def test_ground_truth_bench_runs_resumes_and_ranking_scores_against_it(tmp_path):
    out, runs = tmp_path / "gt.json", tmp_path / "runs"
    common = ["--out", str(out), "--runs", str(runs), "--space", json.dumps(SMALL_SPACE), "--epochs", "1",
              "--train_batches", "2", "--meta_batch_size", "2", "--ways", "3", "--image_size", "14"]
    bench = [sys.executable, str(ROOT / "bench/ground_truth.py"), *common, "--lanes", "2"]
    subprocess.run([*bench, "--limit", "2", "--", *TINY], check=True, capture_output=True)
    first = json.loads(out.read_text())
    assert len(first) == 2
    for entry in first:
        assert set(entry) >= {"arch", "acc", "ci95", "params", "flops", "tasks", "seconds", "command", "commit"}
        assert 0 <= entry["acc"] <= 1 and entry["tasks"] == 4 and entry["params"] > 0
        assert "--model.train_arch=" in entry["command"]
    # resumed: the two done are kept as they are, one more is added
    subprocess.run([*bench, "--limit", "1", "--", *TINY], check=True, capture_output=True)
    second = json.loads(out.read_text())
    assert second[:2] == first and len(second) == 3
    assert len({e["label"] for e in second}) == 3

    # a SuperNet of the same space, scored on every ground-truth architecture
    run("train.py", *TINY, *logs(tmp_path, "supernet"), "--trainer.max_epochs=1", "--test=false")
    ckpt = tmp_path / "supernet" / "version_0" / "checkpoints" / "last.ckpt"
    subprocess.run([sys.executable, str(ROOT / "bench/ranking.py"), "--method", "uniform_t100q5",
                    "--ckpt_path", str(ckpt), "--ground_truth", str(out), "--out_dir", str(tmp_path),
                    "--redraws", "2", "--min_architectures", "3", "--search_seeds", "0", "--generations", "2"], check=True, capture_output=True)
    ranking = json.loads((tmp_path / "omniglot_5w1s_uniform_t100q5.json").read_text())
    assert ranking["architectures"] == 3 and ranking["score_tasks"] == 100 and ranking["score_queries"] == 5
    assert {Architecture.from_dict(e["arch"]) for e in ranking["entries"]} == {
        Architecture.from_dict(e["arch"]) for e in second}
    assert all(len(e["redraw_scores"]) == 2 and e["supernet_score"] == e["redraw_scores"][0] for e in ranking["entries"])
    assert -1 <= ranking["kendall_tau"] <= 1 and ranking["noise"]["score_sd_over_redraws"] >= 0
    assert (tmp_path / "omniglot_5w1s_uniform_t100q5.png").stat().st_size > 1000
    pick = ranking["search_picks"][0]
    assert pick["seed"] == 0 and 0 <= pick["score"] <= 1 and pick["real_scorings"] >= 8
    known = {e["label"]: e["acc"] for e in second}
    assert pick["stand_alone_acc"] == known.get(pick["label"])


@pytest.mark.parametrize("setting", results.SETTINGS)
def test_results_bench_commands_come_from_the_config_headers(setting):
    conv4 = results.arm_command(setting, "conv4")
    search = results.arm_command(setting, "search")
    assert conv4[:2] == ["--config", f"configs/results/omniglot_{setting}.yaml"] == search[:2]
    assert "--model.train_arch=reference" in conv4 and "--model.train_arch=reference" not in search
    assert not any("logger.init_args.name" in f for f in conv4 + search)
    assert results.seed_flags(2) == ["--seed_everything=2"]


def test_results_table_gives_mean_and_sd_over_seeds_and_marks_figures_not_rerun(tmp_path, capsys):
    from bench import results_table

    def entry(arm, seed, acc, **extra):
        return {"setting": "5w1s", "arm": arm, "seed": seed, "acc": acc, "ci95": 0.01, "label": arm,
                "params": 1000 if arm == "search" else 2000, "flops": 1e6, "seconds": 60.0, **extra}

    path = tmp_path / "omniglot.json"
    path.write_text(json.dumps([
        entry("search", 0, 0.90), entry("search", 1, 0.94),
        entry("conv4", 0, 0.89), entry("conv4", 1, 0.91, seconds=None, reproduced_from="an earlier table"),
    ]))
    assert results_table.main([str(path)]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| 5-way 1-shot"))
    assert "| 0, 1 | **92.00** ± 2.83 | **90.00** ± 1.41 | +2.00 |" in row  # sd: sample standard deviation
    assert "1: 94.00 ± 1.00 / 91.00 ± 1.00†" in row and "0: 90.00 ± 1.00 / 89.00 ± 1.00," in row
    assert "† not rerun: an earlier table." in out
    assert "5w1s conv4 1, 5w1s search 1" in out  # the median wall time skips the figure not rerun
