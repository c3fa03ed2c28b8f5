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


def test_version_one_set_is_stratified_seeded_and_holds_conv4_neighbours_and_picks():
    space = SearchSpace()
    archs = ground_truth.v1_architectures(space)
    assert archs == ground_truth.v1_architectures(space)  # seeded
    assert len(archs) == 35 and len({a for _, a in archs}) == len(archs)
    assert archs[0] == ("reference", space.reference())
    labels = {str(a) for _, a in archs}
    assert set(ground_truth.PICKED) <= labels
    used = lambda attr: {x for _, a in archs for x in getattr(a, attr)}  # noqa: E731
    assert used("ops") == set(space.ops) and used("widths") == set(space.widths)
    assert {a.depth for _, a in archs} == set(space.depths)
    reference = space.reference()
    neighbours = [a for g, a in archs if g == "neighbour"]
    assert len(neighbours) == 10 and len([a for g, a in archs if g == "extreme"]) == 3
    for arch in neighbours:  # one edit: one gene changed, or one layer more or fewer
        same_depth = arch.depth == reference.depth
        diffs = sum(o != r for o, r in zip(arch.ops, reference.ops)) + sum(
            w != r for w, r in zip(arch.widths, reference.widths))
        assert (same_depth and diffs == 1) or (abs(arch.depth - reference.depth) == 1 and diffs == 0)
    assert len([a for g, a in archs if g == "stratified"]) == 4 * len(space.depths)


def test_committed_version_two_set_holds_every_budget_and_its_rule_picks():
    selection = json.loads((ROOT / "bench/ground_truth/omniglot_5w1s_v2_archs.json").read_text())
    archs = selection["architectures"]
    labels = [a["label"] for a in archs]
    assert len(labels) == len(set(labels)) >= 56
    v1 = {str(a) for _, a in ground_truth.v1_architectures(SearchSpace())}
    assert v1 <= set(labels)
    for budget in ground_truth.BUDGETS:
        assert sum(budget in a["budgets"] for a in archs) >= 12, budget
    for key, label in selection["rule_picks"].items():
        budget = key.split(":")[0]
        if label is not None:
            entry = next(a for a in archs if a["label"] == label)
            spec = ground_truth.BUDGETS[budget]
            assert entry["params"] <= spec.get("max_params", 10**9) and entry["flops"] <= spec.get("max_flops", 10**12)


def test_ground_truth_bench_selects_runs_two_seeds_resumes_and_ranking_scores_against_it(tmp_path):
    out, runs, archs = tmp_path / "gt.json", tmp_path / "runs", tmp_path / "archs.json"
    common = ["--out", str(out), "--runs", str(runs), "--archs", str(archs), "--space", json.dumps(SMALL_SPACE),
              "--epochs", "1", "--train_batches", "2", "--meta_batch_size", "2", "--ways", "3", "--image_size", "14",
              "--val_tasks", "4", "--test_tasks", "4", "--per_budget", "3"]
    bench = [sys.executable, str(ROOT / "bench/ground_truth.py"), *common]
    subprocess.run([*bench, "--select"], check=True, capture_output=True)
    selection = json.loads(archs.read_text())
    assert selection["architectures"][0]["group"] == "reference" and selection["conv4_latency_ms"] > 0
    assert all({"label", "params", "flops", "latency_ms", "latency_vs_conv4", "budgets"} <= set(a)
               for a in selection["architectures"])
    subprocess.run([*bench, "--lanes", "2", "--limit", "2", "--", *TINY], check=True, capture_output=True)
    first = json.loads(out.read_text())
    assert len(first) == 1 and [r["seed"] for r in first[0]["runs"]] == [0, 1]  # both seeds of one architecture
    entry = first[0]
    assert set(entry) >= {"arch", "val_acc", "test_acc", "test_acc_inductive", "runs", "params", "flops",
                          "latency_ms", "machine", "commit", "command"}
    for run_ in entry["runs"]:
        assert set(run_) >= {"seed", "val_acc", "test_acc", "test_acc_inductive", "ci95", "best_epoch", "seconds"}
        assert 0 <= run_["test_acc_inductive"] <= 1 and run_["best_epoch"] == 0
    assert entry["test_acc"] == pytest.approx(sum(r["test_acc"] for r in entry["runs"]) / 2)
    assert "--model.train_arch=" in entry["command"] and "--seed_everything=0" in entry["command"]
    # resumed: what is done is kept, the next run is added
    subprocess.run([*bench, "--limit", "1", "--", *TINY], check=True, capture_output=True)
    second = json.loads(out.read_text())
    assert second[0] == first[0] and len(second) == 2 and [r["seed"] for r in second[1]["runs"]] == [0]

    # a SuperNet of the same space scores every architecture of the set
    run("train.py", *TINY, *logs(tmp_path, "supernet"), "--trainer.max_epochs=1", "--test=false")
    ckpt = tmp_path / "supernet" / "version_0" / "checkpoints" / "last.ckpt"
    subprocess.run([sys.executable, str(ROOT / "bench/ranking.py"), "--training", "fair", "--ckpt_path", str(ckpt),
                    "--archs", str(archs), "--out_dir", str(tmp_path), "--redraws", "2"], check=True, capture_output=True)
    scores = json.loads((tmp_path / "omniglot_5w1s_fair_scores.json").read_text())
    assert {e["label"] for e in scores["entries"]} == {a["label"] for a in selection["architectures"]}
    assert all(len(e["accuracy"]) == 2 and 0 <= min(e["accuracy"]) <= max(e["accuracy"]) <= 1 for e in scores["entries"])


def test_ranking_table_chooses_on_validation_and_bootstraps_the_difference(tmp_path, capsys):
    """A made-up ground truth where validation and test disagree: the choice follows validation."""
    import random

    from bench import ranking_table

    rng = random.Random(0)
    space = SearchSpace()
    archs = [space.sample(rng) for _ in range(24)]
    from lightning_metanas.supernet import SuperNet

    net = SuperNet(space, ways=5)
    entries, good, bad = [], [], []
    for i, arch in enumerate(archs):
        val = 0.5 + 0.4 * i / 24
        test = 0.9 - 0.4 * i / 24  # the reverse order
        entries.append({"label": str(arch), "arch": arch.to_dict(), "params": net.num_parameters(arch),
                        "flops": net.flops(arch, 28), "budgets": [], "val_acc": val, "test_acc": test,
                        "test_acc_inductive": test, "runs": [{}, {}]})
        good.append({"label": str(arch), "accuracy": [val, val]})  # ranks like validation
        bad.append({"label": str(arch), "accuracy": [test, test]})  # ranks like test
    (tmp_path / "gt.json").write_text(json.dumps(entries))
    for name, rows in (("good", good), ("bad", bad)):
        (tmp_path / f"omniglot_5w1s_{name}_scores.json").write_text(json.dumps({"training": name, "entries": rows}))
    (tmp_path / "naswot.json").write_text(json.dumps({e["label"]: 0.0 for e in entries}))
    assert ranking_table.main(["--ground_truth", str(tmp_path / "gt.json"), "--scores", str(tmp_path),
                               "--out", str(tmp_path / "out.json"), "--draws", "200"]) == 0
    result = json.loads((tmp_path / "out.json").read_text())
    assert result["chosen_method"].startswith("good + size prior")
    assert result["rows"]["good + size prior 0"]["val_acc"]["kendall_tau"] == pytest.approx(1.0)
    assert result["rows"]["good + size prior 0"]["test_acc"]["kendall_tau"] == pytest.approx(-1.0)
    boot = result["bootstrap"]["val_acc"]
    assert boot["low"] <= boot["difference"] <= boot["high"]
    assert "chosen on the validation column" in capsys.readouterr().out


@pytest.mark.parametrize("setting", results.SETTINGS)
def test_results_bench_runs_the_commands_its_configs_document(setting):
    header = (ROOT / "configs" / "results" / f"omniglot_{setting}.yaml").read_text()
    for arm, name in results.ARM_NAMES.items():
        command = " ".join(["python train.py", *results.arm_command(setting, arm)])
        assert f"#   {name + ':':<24}{command}\n" in header, (arm, command)
    conv4, largest = results.arm_command(setting, "conv4"), results.arm_command(setting, "largest")
    assert "--model.train_arch=reference" in conv4 and "--model.train_arch=largest" in largest
    assert results.seed_flags(2) == ["--seed_everything=2"]


def test_budget_arms_exist_at_five_way_one_shot_only(tmp_path):
    assert results.arm_command("5w1s", "search_flops3M")[-1] == "--search.max_flops=3000000"
    assert results.arm_command("5w1s", "search_latency_half")[-1] == "--search.max_latency_vs_reference=0.5"
    zero = results.arm_command("5w1s", "zero_cost_params40k", tmp_path)
    arch_file = zero[-1].split("=", 1)[1]
    assert json.loads(open(arch_file).read())["ops"]
    with pytest.raises(SystemExit):
        results.arm_command("20w1s", "search_flops3M")


def test_search_pick_arms_train_the_searched_arms_pick_of_the_same_setting_and_seed(tmp_path):
    out = tmp_path / "omniglot.json"
    label = "conv5x5@64-max_pool3x3@48-dil_conv3x3@32"
    out.write_text(json.dumps([{"setting": "20w1s", "arm": "search", "seed": 1, "label": label},
                               {"setting": "20w1s", "arm": "search", "seed": 0, "label": "skip@32-conv3x3@64"}]))
    flags = results.arm_command("20w1s", "search_pick_tasknorm", tmp_path, 1, out)
    assert flags[:2] == ["--config", "configs/results/omniglot_20w1s.yaml"]
    assert flags[-2:] == ["--model.meta.norm=support", "--model.meta.norm_layer=task_norm_i"]
    arch_file = flags[2].split("=", 1)[1]
    assert flags[2].startswith("--model.train_arch=") and str(Architecture.load(arch_file)) == label
    with pytest.raises(SystemExit, match="no search run at 20w1s seed 2"):
        results.arm_command("20w1s", "search_pick", tmp_path, 2, out)
    flags = results.arm_command("20w1s", "search_pick_lastlayer", tmp_path, 1, out)
    assert flags[-2:] == ["--model.meta.norm=support", "--model.meta.last_norm=layer"]
    assert str(Architecture.load(flags[2].split("=", 1)[1])) == label
    assert results.base_arm("conv4_lastlayer") == "conv4" and results.base_arm("search_pick_tasknorm") == "search_pick"


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


def test_results_table_sets_support_trained_one_image_accuracy_against_todays_batch_figure(tmp_path, capsys):
    from bench import results_table

    def entry(arm, seed, acc, **extra):
        return {"setting": "5w1s", "arm": arm, "seed": seed, "acc": acc, "ci95": 0.01, "label": arm,
                "params": 2000, "flops": 1e6, "seconds": 60.0, **extra}

    path = tmp_path / "omniglot.json"
    path.write_text(json.dumps([
        entry("conv4", 0, 0.90, acc_inductive=0.85), entry("conv4", 1, 0.92),
        entry("conv4_support", 0, 0.87, acc_transductive=0.895), entry("conv4_support", 1, 0.90, acc_transductive=0.915),
    ]))
    assert results_table.main(["--norm", str(path)]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| 5-way 1-shot | Conv-4 |"))
    # today's 91.00 (batch statistics) against the support-trained runs one image at a time, paired by seed
    assert "| 0, 1 | **91.00** ± 1.41 | **85.00** (1 seed) | **88.50** ± 2.12 | **90.50** ± 1.41 | -2.50 |" in row
    assert "0: 87.00 ± 1.00 / 90.00, 1: 90.00 ± 1.00 / 92.00 |" in row
    path.write_text(json.dumps([entry("conv4", 0, 0.90), entry("conv4_support", 0, 0.87, acc_transductive=0.9),
                                entry("conv4_tasknorm", 0, 0.895, acc_transductive=0.91),
                                entry("conv4_lastlayer", 0, 0.905, acc_transductive=0.91)]))
    assert results_table.main(["--norm", str(path)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 5-way 1-shot | Conv-4")]
    assert rows[0].startswith("| 5-way 1-shot | Conv-4 | 0 |") and "| -3.00 |" in rows[0]
    assert rows[1].startswith("| 5-way 1-shot | Conv-4, TaskNorm-I | 0 |") and "| -0.50 |" in rows[1]
    assert rows[2].startswith("| 5-way 1-shot | Conv-4, last layer layer-normalised | 0 |") and "| +0.50 |" in rows[2]
    path.write_text(json.dumps([entry("search", 0, 0.95), entry("search_pick", 0, 0.94, acc_inductive=0.88),
                                entry("search_pick_tasknorm", 0, 0.92, acc_transductive=0.94)]))
    assert results_table.main(["--norm", str(path)]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if "searched pick" in line)
    # against the search arm's figure at the same seed and the pick trained alone as today (its
    # one-image figure is "as today, one image")
    assert row.startswith("| 5-way 1-shot | searched pick, trained alone, TaskNorm-I | 0 | **95.00** (1 seed); "
                          "the pick alone: **94.00** (1 seed) | **88.00** (1 seed) | **92.00** (1 seed) | "
                          "**94.00** (1 seed) | -3.00; against the pick alone: -2.00 |")
    path.write_text(json.dumps([entry("search_pick", 0, 0.94), entry("search_pick_support", 0, 0.935)]))
    assert results_table.main(["--norm", str(path)]) == 0  # another budget's file: no search run in it
    row = next(line for line in capsys.readouterr().out.splitlines() if "searched pick" in line)
    assert row.startswith("| 5-way 1-shot | searched pick, trained alone | 0 | the pick alone: **94.00** (1 seed) | "
                          "— | **93.50** (1 seed) | — | against the pick alone: -0.50 | 0: 93.50 ± 1.00 |")


def test_results_table_lists_every_arm_with_its_costs():
    from bench import results_table

    def entry(arm, seed, acc, params, flops, **extra):
        return {"setting": "20w1s", "arm": arm, "seed": seed, "acc": acc, "ci95": 0.01, "params": params,
                "flops": flops, **extra}

    runs = [entry("largest", 1, 0.80, 412000, 27.4e6), entry("largest", 0, 0.84, 412000, 27.4e6),
            entry("conv4", 0, 0.77, 113000, 9.8e6, acc_inductive=0.70), entry("search", 0, 0.81, 137000, 5.9e6)]
    latency = {("20w1s", id(runs[0])): 2.5, ("20w1s", id(runs[1])): 2.3, ("20w1s", id(runs[2])): 1.0}
    rows = results_table.arms_table(runs, latency).splitlines()
    assert rows[2] == "| 20-way 1-shot | Conv-4 | 0 | **77.00** (1 seed) | **70.00** (1 seed) | 113k | 9.8 | 1.00 |"
    assert rows[3] == "| 20-way 1-shot | largest network | 0, 1 | **82.00** ± 2.83 | — | 412k | 27.4 | 2.40 |"
    assert rows[4] == "| 20-way 1-shot | searched | 0 | **81.00** (1 seed) | — | 137k | 5.9 | — |"
    budget = [dict(entry("zero_cost_flops3M", 0, 0.90, 30000, 2.9e6), setting="5w1s"),
              dict(entry("search_flops3M", 0, 0.92, 50000, 2.3e6), setting="5w1s")]
    rows = results_table.arms_table(budget, {}).splitlines()
    assert rows[2:] == ["| 5-way 1-shot | searched within 3 MFLOPs | 0 | **92.00** (1 seed) | — | 50k | 2.3 | — |",
                        "| 5-way 1-shot | best zero-cost pick within 3 MFLOPs | 0 | **90.00** (1 seed) | — | 30k | 2.9 | — |"]
    assert results_table.arms_table([], {}) == ""


def test_budget_pairs_carry_a_paired_t_interval():
    from bench import results_table

    def entry(arm, seed, acc):
        return {"setting": "5w1s", "arm": arm, "seed": seed, "acc": acc}

    runs = [entry("search_flops3M", s, a) for s, a in enumerate((0.92, 0.93, 0.90))]
    runs += [entry("zero_cost_flops3M", s, a) for s, a in enumerate((0.90, 0.90, 0.90))]
    row = results_table.budget_pairs_table(runs + [entry("search_params40k", 0, 0.9)]).splitlines()[-1]
    # differences +2, +3, 0: mean 5/3, sd 1.528, t(2) 4.303 -> half width 3.795
    assert row == "| 5-way 1-shot, within 3 MFLOPs | 0, 1, 2 | +2.00, +3.00, +0.00 | **+1.67** | -2.1 to +5.5 | 2 of 3 |"
    assert results_table.budget_pairs_table(runs[:1] + runs[3:4]) == ""  # one pair: no interval


def test_budget_table_sets_search_against_random_search_zero_cost_largest_and_oracle(tmp_path, capsys):
    from bench import budget_table

    def truth(label, acc, budgets):
        runs = [{"seed": s, "test_acc": acc} for s in (0, 1)]
        return {"label": label, "test_acc": acc, "runs": runs, "budgets": budgets}

    entries = [truth("a", 0.90, ["flops3M"]), truth("b", 0.80, ["flops3M"]), truth("c", 0.70, ["flops3M"]),
               truth("big", 0.95, []), truth("near", 0.93, ["flops3M"]), truth("one_seed", 0.99, ["flops3M"])]
    entries[-1]["runs"] = entries[-1]["runs"][:1]  # one seed: not in the table yet
    entries[-2]["group"] = "faithfulness"  # a base's neighbour: the oracle's, not a random sample
    searches = [{"budget": "flops3M", "strategy": "evolution", "label": "a"},
                {"budget": "flops3M", "strategy": "evolution", "label": "b"},
                {"budget": "flops3M", "strategy": "random", "label": "c"},
                {"budget": "flops3M", "strategy": "random", "label": "not_trained"}]
    files = {"ground_truth": entries, "searches": searches, "ranking": {"chosen_rule": "rule: depth_flops"},
             "archs": {"rule_picks": {"flops3M:depth_flops": "c", "flops3M:params": "b"}}}
    for name, content in files.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(content))
    out = tmp_path / "table.json"
    assert budget_table.main([*(x for n in files for x in (f"--{n}", str(tmp_path / f"{n}.json"))), "--out", str(out)]) == 0
    row = json.loads(out.read_text())["rows"]["flops3M"]
    assert row["search"] == pytest.approx(0.85) and row["random_search"] is None  # one random pick untrained
    assert row["random_search_picks"] == [0.70, None]
    assert row["zero_cost"] == ["c", 0.70] and row["largest"] == ["b", 0.80]
    assert row["random"] == pytest.approx(0.80) and row["random_n"] == 3 and row["oracle"] == ["near", 0.93]
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| flops3M"))
    # random search: its picks one by one while one is untrained
    assert "| 85.00 | 90.00, 80.00 | 70.00, not trained | 70.00 | 80.00 | 80.00 (3) | 93.00 | +15.00 | +8.00 |" in line


def test_adapt_omniglot_bench_measures_the_saved_model_alone_and_as_a_batch_on_unseen_characters(tmp_path):
    """The bench behind the docs' one-image figures on unseen alphabets runs with adapt.py's
    defaults and records, per task, the loaded model's one-image accuracy beside the batch figure."""
    from bench import adapt_omniglot
    from tests.test_robust_adapt import tiny_checkpoint

    ckpt = tiny_checkpoint(tmp_path / "tiny.ckpt", tmp_path, ways=3)
    out = tmp_path / "adapt.json"
    assert adapt_omniglot.main(["--ckpt_path", str(ckpt), "--root", str(ROOT / "data/omniglot"), "--tasks", "2",
                                "--ways", "3", "--shots", "2", "--held_out", "2", "--modes", "given", "scratch",
                                "--scorings", "2", "--out", str(out)]) == 0
    written = json.loads(out.read_text())
    assert set(written["rows"]) == {"given", "scratch"}
    assert all(r["arch"] == "conv3x3@16-conv3x3@16" for r in written["rows"]["given"])  # the checkpoint's
    for mode, rows in written["rows"].items():
        assert [r["task"] for r in rows] == [0, 1]
        for r in rows:  # 3 characters x 2 held-out drawings: accuracies are sixths
            assert 0 <= r["inductive"] <= 1 and round(6 * r["inductive"], 6) == round(6 * r["inductive"])
            assert round(6 * r["transductive"], 6) == round(6 * r["transductive"])
        mean, ci = written["summary"][mode]["inductive"]
        assert mean == pytest.approx(sum(r["inductive"] for r in rows) / 2) and ci >= 0


def test_results_bench_runs_the_normalisation_arms_in_every_setting_and_says_what_it_skips(tmp_path, capsys):
    from bench import results

    assert results.main(["--settings", "20w1s", "--arms", "conv4_tasknorm", "conv4_support", "search_flops3M",
                         "--seeds", "0", "--list", "--out", str(tmp_path / "none.json")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "not run (budget arms exist at 5-way 1-shot only): 20w1s search_flops3M" in out
    commands = [line for line in out if line.startswith("python train.py")]
    assert len(commands) == 2 and all("omniglot_20w1s.yaml" in c and "--model.meta.norm=support" in c for c in commands)
    assert sum("--model.meta.norm_layer=task_norm_i" in c for c in commands) == 1


def test_norm_diagnosis_statistics_take_the_batchs_own_at_the_named_layers_only():
    """``QueryAtLayers`` at every layer is the transductive pass, at none the support pass, and
    at one layer differs from both (BatchNorm; TaskNorm-I at its initial blend)."""
    import torch

    from bench.support_norm_diagnosis import QueryAtLayers, StatisticsFrom
    from lightning_metanas.ops import NormStatistics
    from lightning_metanas.supernet import SuperNet

    arch = Architecture(("conv3x3", "max_pool3x3"), (8, 16))
    torch.manual_seed(0)
    support, query = torch.randn(3, 1, 14, 14), torch.randn(6, 1, 14, 14)
    for task_norm in (False, True):
        net = SuperNet(SearchSpace(ops=("conv3x3", "max_pool3x3"), widths=(8, 16), depths=(2,)), 3, 1,
                       task_norm=task_norm)

        def applied(stats):
            net(support, arch, stats.record())
            return net(query, arch, stats.apply())

        transductive, inductive = net(query, arch), applied(NormStatistics())
        torch.testing.assert_close(applied(QueryAtLayers({0, 1})), transductive)
        torch.testing.assert_close(applied(QueryAtLayers(set())), inductive)
        last = applied(QueryAtLayers({1}))
        assert (last - transductive).abs().max() > 1e-3 and (last - inductive).abs().max() > 1e-3
        mean_only, var_only = applied(QueryAtLayers({1}, "mean")), applied(QueryAtLayers({1}, "var"))
        assert (mean_only - last).abs().max() > 1e-3 and (var_only - last).abs().max() > 1e-3
        # another pass's pairs: the support's own give the support pass, the query's own the transductive one
        for images, expected in ((support, inductive), (query, transductive)):
            source = NormStatistics()
            net(images, arch, source.record())
            torch.testing.assert_close(applied(StatisticsFrom(source)), expected)


@pytest.mark.parametrize("last_norm", ["task", "layer"])
def test_norm_diagnosis_reproduces_eval_pys_two_figures_on_the_same_validation_tasks(tmp_path, last_norm):
    """The diagnosis adapts each task once and classifies it under every variant; its
    transductive and support figures are eval.py's on the same tasks, and it names every layer
    that takes a task's statistics (not a layer-normalised last one)."""
    from bench import support_norm_diagnosis

    run("train.py", *TINY, *logs(tmp_path, "diag"), "--trainer.max_epochs=1", "--test=false",
        "--model.train_arch=reference", f"--model.meta.last_norm={last_norm}")
    ckpt = tmp_path / "diag" / "version_0" / "checkpoints" / "last.ckpt"
    out, evaluated = tmp_path / "diagnosis.json", tmp_path / "eval.json"
    assert support_norm_diagnosis.main(["--ckpt_path", str(ckpt), "--tasks", "6", "--bank", "4", "--out", str(out)]) == 0
    run("eval.py", "--ckpt_path", str(ckpt), "--split", "val", "--data.val_tasks", "6", "--out", str(evaluated))
    record, reference = json.loads(out.read_text())[0], json.loads(evaluated.read_text())
    results = record["results"]
    assert results["transductive"]["acc"] == pytest.approx(reference["acc_transductive"], abs=1e-4)
    assert results["support"]["acc"] == pytest.approx(reference["acc_support"], abs=1e-4)
    layers = len(Architecture.of(reference["arch"]).ops) - (last_norm == "layer")
    assert {f"query at layer {i}" for i in range(layers)} <= set(results)
    assert f"query at layer {layers}" not in results
    assert {"support + meta-training bank (4)", "support + shifted views", "support, weights before the last step",
            "support, weights before adaptation"} <= set(results)
    assert len(record["variance_ratio"]) == layers and all(r > 0 for r in record["variance_ratio"])
    assert all(0 <= r["acc"] <= 1 and r["ci95"] >= 0 for r in results.values())
    row = support_norm_diagnosis.table([record]).splitlines()[-1]
    assert f"| 6 | {100 * results['transductive']['acc']:.2f} | **{100 * results['support']['acc']:.2f}** |" in row
    assert ("last layer layer-normalised" in row) == (last_norm == "layer")


def test_results_bench_runs_another_budget_into_its_own_file(tmp_path, capsys, monkeypatch):
    """``--epochs N``: every command meta-trains N epochs, and the runs are not appended to the
    file the tables read (omniglot.json) but to omniglot_epochsN.json, whose runs it skips."""
    from bench import results

    monkeypatch.setattr(results, "ROOT", tmp_path)
    (tmp_path / "bench/results").mkdir(parents=True)
    (tmp_path / "bench/results/omniglot_epochs28.json").write_text(json.dumps([
        {"setting": "5w1s", "arm": "conv4", "seed": 0}]))
    assert results.main(["--settings", "5w1s", "--arms", "conv4", "conv4_support", "--seeds", "0", "1",
                         "--epochs", "28", "--list"]) == 0
    commands = [line for line in capsys.readouterr().out.splitlines() if line.startswith("python train.py")]
    assert len(commands) == 3 and all(c.endswith("--trainer.max_epochs=28") for c in commands)
    assert not any("--model.meta.norm=support" not in c and "seed_everything=0" in c for c in commands)  # done there
    with pytest.raises(SystemExit):
        results.main(["--epochs", "0", "--list"])


def test_eval_steps_chooses_the_count_on_validation_one_image_at_a_time_and_ties_to_fewer_steps():
    from bench.eval_steps import choose_steps

    def rec(seed, steps, acc, split="val", arm="a"):
        return {"results": "r.json", "setting": "5w1s", "arm": arm, "seed": seed, "split": split, "steps": steps,
                "acc_support": acc, "acc_transductive": 0.99}

    records = [rec(0, 3, 0.80), rec(1, 3, 0.84), rec(0, 10, 0.83), rec(1, 10, 0.81),  # 10 ties 3: fewer
               rec(0, 20, 0.95),  # one seed only: not a candidate
               rec(0, 5, 0.99, split="test"), rec(1, 5, 0.99, split="test"),  # test never chooses
               rec(0, 1, 0.99, arm="b"), rec(1, 1, 0.99, arm="b"),  # another arm's
               dict(rec(0, 2, 0.99), setting="20w1s"), dict(rec(1, 2, 0.99), setting="20w1s")]  # another setting's
    assert choose_steps(records, "r.json", "5w1s", "a") == 3
    records += [rec(1, 20, 0.70)]  # 20 complete now: mean 0.825 beats 0.82
    assert choose_steps(records, "r.json", "5w1s", "a") == 20
    assert choose_steps(records, "other.json", "5w1s", "a") is None


def test_eval_steps_bench_sweeps_validation_then_reports_the_chosen_count_and_the_protocols_on_test(tmp_path, capsys):
    """Each cell is eval.py's figure for the run's best checkpoint at that step count; --chosen
    evaluates the validation choice and the checkpoint's own count on test, and the table sets them side by side."""
    from bench import eval_steps

    name = "5w1s_conv4_support_seed0_28ep"
    run("train.py", *TINY, *logs(tmp_path / "runs", name), "--trainer.max_epochs=1", "--test=false",
        "--model.train_arch=reference", "--model.meta.norm=support")
    ckpt = tmp_path / "runs" / name / "version_0" / "checkpoints" / "last.ckpt"
    results = tmp_path / "results.json"
    results.write_text(json.dumps([{"setting": "5w1s", "arm": "conv4_support", "seed": 0, "epochs": 28,
                                    "best_checkpoint": "last.ckpt", "label": "conv4"}]))
    out, reference = tmp_path / "steps.json", tmp_path / "eval.json"
    common = ["--results", str(results), "--arms", "conv4_support", "--seeds", "0", "--runs", str(tmp_path / "runs"),
              "--out", str(out), "--lanes", "1"]
    with pytest.raises(SystemExit):  # nothing chosen yet
        eval_steps.main(common + ["--split", "test", "--chosen"])
    assert eval_steps.main(common + ["--split", "val", "--steps", "1", "2"]) == 0
    assert eval_steps.main(common + ["--split", "val", "--steps", "1"]) == 0  # resumed: nothing to do
    val = json.loads(out.read_text())
    assert sorted(r["steps"] for r in val) == [1, 2] and {r["split"] for r in val} == {"val"}
    run("eval.py", "--ckpt_path", str(ckpt), "--split", "val", "--model.meta.eval_inner_steps", "1",
        "--model.meta.norm", "support", "--out", str(reference))
    expected = json.loads(reference.read_text())
    one = next(r for r in val if r["steps"] == 1)
    assert one["acc_support"] == pytest.approx(expected["acc_support"], abs=1e-6)
    assert one["acc_transductive"] == pytest.approx(expected["acc_transductive"], abs=1e-6)
    chosen = eval_steps.choose_steps(val, one["results"], "5w1s", "conv4_support")
    assert chosen == max(val, key=lambda r: (r["acc_support"], -r["steps"]))["steps"]
    assert eval_steps.main(common + ["--split", "test", "--chosen"]) == 0
    test = [r for r in json.loads(out.read_text()) if r["split"] == "test"]
    protocol = eval_steps.protocol_steps(ckpt)  # the checkpoint's own eval_inner_steps
    assert sorted(r["steps"] for r in test) == sorted({protocol, chosen})
    capsys.readouterr()
    assert eval_steps.main(["--out", str(out), "--table"]) == 0
    row = capsys.readouterr().out.splitlines()[-1]
    at_protocol = next(r for r in test if r["steps"] == protocol)
    assert f"| `{one['results']}` | 5w1s | conv4_support | 0 |" in row
    assert (f"| {chosen} | {protocol} | **{100 * at_protocol['acc_support']:.2f} ± 0.00** / "
            f"{100 * at_protocol['acc_transductive']:.2f} ± 0.00 (1 seeds) |") in row
