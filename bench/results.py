"""RESULTS.md's equal-budget table: the searched architecture vs Conv-4 vs the largest network of
the space, four Omniglot settings, several seeds; and, at 5-way 1-shot, the budgeted search vs
the budget's best zero-cost pick. Resumable.

Every run meta-trains for the setting's budget (``configs/results/omniglot_<setting>.yaml``);
the arms differ only in what they train:

* ``conv4``: Conv-4, the MAML baseline (``--model.train_arch=reference``);
* ``largest``: the space's largest subnet alone (``--model.train_arch=largest``), the rule that
  needs no search;
* ``search``: the search (``configs/results/search.yaml``: a fair-sampling warm-up for half the
  epochs, every generation at once, then the best alone);
* ``search_<budget>`` / ``zero_cost_<budget>`` (5-way 1-shot): the search within a cost budget
  of ``bench/ground_truth.BUDGETS``, and the first choice of the zero-cost rule chosen on
  validation over the whole space within that budget, trained alone;
* ``<arm>_support`` (e.g. ``conv4_support``): the arm meta-trained and meta-tested with each
  query image normalised by the adapted support images' statistics (``--model.meta.norm=support``),
  the way a deployed model classifies one image at a time;
* ``<arm>_tasknorm`` (e.g. ``conv4_tasknorm``): as ``_support``, with TaskNorm-I layers
  (``--model.meta.norm_layer=task_norm_i``: the support statistics blended with each image's own);
* ``<arm>_lastlayer``: as ``_support``, with a last layer that needs no task statistics
  (``--model.meta.last_norm=layer``: each image layer-normalised there), where one image at a time loses most (RESULTS.md, "Where the gap sits");
* ``search_pick`` (and ``search_pick_tasknorm``, ...): the architecture the ``search`` arm picked
  at the same setting and seed (read from ``--out``), meta-trained alone from scratch with the
  setting's budget: what a user does who searches once the usual way, then trains the pick for
  deployment with the normalisation deployment uses.

Each run records its architecture's parameters, multiply-accumulates and one-image latency
(its ratio to Conv-4 timed beside it, ``latency.latency_ms``; measured when the run ends, so
other runs may share the cores: ``bench/ground_truth.py`` holds the quiet figures). Runs go
side by side in lanes (one torch thread each); each is appended to ``--out`` when it ends.

    .venv/bin/python bench/results.py                              # the four settings, three arms, seeds 0-2
    .venv/bin/python bench/results.py --arms largest --seeds 0 1 2
    .venv/bin/python bench/results.py --settings 5w1s --arms search_flops3M zero_cost_flops3M
    .venv/bin/python bench/results.py --settings 5w1s --arms conv4 conv4_support --seeds 0 --epochs 28
    .venv/bin/python bench/results_table.py
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import cpu_model, git_commit, load, run_in_lanes, run_train, save  # noqa: E402
from bench.ground_truth import BUDGETS  # noqa: E402
from lightning_metanas.latency import latency_ms  # noqa: E402
from lightning_metanas.search_space import Architecture, SearchSpace  # noqa: E402
from lightning_metanas.supernet import SuperNet  # noqa: E402

SETTINGS = ("5w1s", "5w5s", "20w1s", "20w5s")
# the search's settings per setting: warm-up for half the epochs (the default, written out for
# the record), and on 20-way tasks fewer, smaller scoring tasks (20 classes x 5 queries x 100
# tasks would cost more scoring than the budget's training)
SEARCH_FLAGS = {
    "5w1s": ["--search.warmup_epochs=6"],
    "5w5s": ["--search.warmup_epochs=3"],
    "20w1s": ["--search.warmup_epochs=3", "--search.tasks_per_score=50", "--search.score_queries=3"],
    "20w5s": ["--search.warmup_epochs=2", "--search.tasks_per_score=50", "--search.score_queries=3"],
}
BUDGET_FLAGS = {"flops3M": "--search.max_flops=3000000", "params40k": "--search.max_params=40000",
                "latency_half": "--search.max_latency_vs_reference=0.5"}
NORM_SUFFIXES = ("_support", "_tasknorm", "_lastlayer")
ARM_NAMES = {"conv4": "Conv-4 (MAML baseline)", "largest": "largest network", "search": "searched"}
# arms run only when named (not in the default --arms), in every setting
EXTRA_ARMS = {"search_pick": "the searched arm's pick, trained alone"}
RULE_PICKS = ROOT / "bench/ground_truth/omniglot_5w1s_v2_archs.json"


def arm_command(setting: str, arm: str, runs: Optional[Path] = None, seed: Optional[int] = None,
                results: Optional[Path] = None) -> list[str]:
    """The arm's ``train.py`` flags (without seed and logger). ``search_pick`` arms need the
    ``seed`` and the ``results`` file whose ``search`` run at that setting and seed they train."""
    config = ["--config", f"configs/results/omniglot_{setting}.yaml"]
    if arm == "conv4":
        return config + ["--model.train_arch=reference"]
    if arm == "largest":
        return config + ["--model.train_arch=largest"]
    if arm == "search":
        return config + ["--config", "configs/results/search.yaml", *SEARCH_FLAGS[setting]]
    if arm.endswith("_tasknorm"):  # support-set statistics blended with each image's own (TaskNorm-I)
        return arm_command(setting, arm.removesuffix("_tasknorm"), runs, seed, results) + [
            "--model.meta.norm=support", "--model.meta.norm_layer=task_norm_i"]
    if arm.endswith("_lastlayer"):  # support statistics, and a last layer that needs none
        return arm_command(setting, arm.removesuffix("_lastlayer"), runs, seed, results) + [
            "--model.meta.norm=support", "--model.meta.last_norm=layer"]
    if arm.endswith("_support"):  # the same arm meta-trained and evaluated with support-set statistics
        return arm_command(setting, arm.removesuffix("_support"), runs, seed, results) + ["--model.meta.norm=support"]
    if arm == "search_pick":
        results = results or ROOT / "bench/results/omniglot.json"
        picked = [e for e in load(results) or [] if (e["setting"], e["arm"], e["seed"]) == (setting, "search", seed)]
        if seed is None or not picked:
            raise SystemExit(f"search_pick: no search run at {setting} seed {seed} in {results}; run that arm first")
        path = (runs or ROOT / "runs/results") / f"{setting}_search_pick_seed{seed}.arch.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        parse_label(picked[0]["label"]).save(path)
        return config + [f"--model.train_arch={path}"]
    kind = next((k for k in ("search_", "zero_cost_") if arm.startswith(k)), "")
    budget = arm[len(kind):]
    if setting == "5w1s" and kind == "search_" and budget in BUDGET_FLAGS:
        return arm_command(setting, "search") + [BUDGET_FLAGS[budget]]
    if setting == "5w1s" and kind == "zero_cost_" and budget in BUDGETS:
        rule = zero_cost_rule()
        label = load(RULE_PICKS)["rule_picks"].get(f"{budget}:{rule}")
        if label is None:
            raise SystemExit(f"no {rule} pick recorded for {budget} in {RULE_PICKS}")
        path = (runs or ROOT / "runs/results") / f"zero_cost_{budget}.arch.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        parse_label(label).save(path)
        return config + [f"--model.train_arch={path}"]
    raise SystemExit(f"unknown arm {arm!r} for {setting}")


def base_arm(arm: str) -> str:
    """The arm without its normalisation suffix (``conv4_tasknorm`` -> ``conv4``): the budget arms
    exist at 5-way 1-shot only, the others (and their normalisation forms) everywhere."""
    for suffix in NORM_SUFFIXES:
        arm = arm.removesuffix(suffix)
    return arm


def zero_cost_rule() -> str:
    """The size rule chosen on the validation column (``bench/ranking_table.py``)."""
    ranking = ROOT / "bench/ranking/omniglot_5w1s_v2.json"
    chosen = load(ranking).get("chosen_rule", "") if ranking.is_file() else ""
    rule = chosen.removeprefix("rule: ")
    return rule if rule in ("depth_params", "depth_flops", "params", "flops") else "depth_flops"


def parse_label(label: str) -> Architecture:
    ops, widths = zip(*(layer.split("@") for layer in label.split("-")))
    return Architecture(tuple(ops), tuple(int(w) for w in widths))


def seed_flags(seed: int) -> list[str]:
    """The run's one seed (train.py derives the model's, the data's and the search's from it)."""
    return [f"--seed_everything={seed}"]


def epoch_flags(epochs: Optional[int]) -> list[str]:
    """Another meta-training budget than the setting's config (``--epochs``)."""
    return [] if epochs is None else [f"--trainer.max_epochs={epochs}"]


def run_one(setting: str, arm: str, seed: int, args: argparse.Namespace) -> Optional[dict]:
    name = f"{setting}_{arm}_seed{seed}" + (f"_{args.epochs}ep" if args.epochs is not None else "")
    runs = Path(args.runs)
    flags = arm_command(setting, arm, runs, seed, Path(args.results)) + seed_flags(seed) + epoch_flags(args.epochs)
    run, _ = run_train(flags, runs / name, runs, name)
    if run is None:
        return None
    result = run.result
    arch = Architecture.of(result["arch"])
    net = SuperNet(SearchSpace(), result["ways"], 1)
    reference = latency_ms(SearchSpace().reference())
    ms = latency_ms(arch, ways=result["ways"])
    history = run.version / "checkpoints" / "search_history.json"
    return {
        "setting": setting, "arm": arm, "seed": seed,
        "acc": result["acc"], "ci95": result["acc_ci95"], "test_tasks": result["tasks"],
        "acc_inductive": result.get("acc_support"), "ci95_inductive": result.get("acc_support_ci95"),
        "acc_transductive": result.get("acc_transductive"), "ci95_transductive": result.get("acc_transductive_ci95"),
        "arch": arch.to_dict(), "label": str(arch),
        "params": net.num_parameters(arch), "flops": net.flops(arch, 28),
        "latency_ms": round(ms, 4), "latency_vs_conv4": round(ms / reference, 4),
        "best_checkpoint": Path(result["checkpoint"]).name,
        "generations": len(load(history)) if history.is_file() else 0,
        "seconds": round(run.seconds, 1), "epochs": args.epochs,
        "command": "python train.py " + " ".join(shlex.quote(f) for f in flags),
        "commit": args.commit, "machine": args.machine,
    }


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS)
    parser.add_argument("--arms", nargs="+", default=list(ARM_NAMES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", default=str(ROOT / "bench/results/omniglot.json"))
    parser.add_argument("--runs", default=str(ROOT / "runs/results"))
    parser.add_argument("--lanes", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=None,
                        help="meta-train for this many epochs instead of the setting's config; the runs go to "
                             "their own file (default bench/results/omniglot_epochsN.json), not the tables' one")
    parser.add_argument("--list", action="store_true", help="print the commands and stop")
    args = parser.parse_args(argv)
    default_out = str(ROOT / "bench/results/omniglot.json")
    args.results = args.out  # where search_pick arms read the search arm's picks
    if args.epochs is not None:
        if args.epochs < 1:
            parser.error(f"--epochs must be 1 or more, got {args.epochs}")
        if args.out == default_out:
            args.out = str(ROOT / f"bench/results/omniglot_epochs{args.epochs}.json")
    out = Path(args.out)
    done = {(e["setting"], e["arm"], e["seed"]) for e in load(out)}
    # slowest first, so that the lanes finish together
    order = {"20w5s": 0, "20w1s": 1, "5w5s": 2, "5w1s": 3}
    todo = sorted(
        ((s, a, seed) for seed in args.seeds for s in args.settings for a in args.arms
         if (s, a, seed) not in done and (base_arm(a) in ARM_NAMES | EXTRA_ARMS or s == "5w1s")),
        key=lambda job: (job[2], order[job[0]], job[1]),
    )
    skipped = sorted({(s, a) for s in args.settings for a in args.arms
                      if not (base_arm(a) in ARM_NAMES | EXTRA_ARMS or s == "5w1s")})
    if skipped:  # said, not silently dropped
        print("not run (budget arms exist at 5-way 1-shot only): " + ", ".join(f"{s} {a}" for s, a in skipped), flush=True)
    if args.list:
        for setting, arm, seed in todo:
            print(" ".join(["python train.py", *arm_command(setting, arm, Path(args.runs), seed, Path(args.results)),
                            *seed_flags(seed), *epoch_flags(args.epochs)]))
        return 0
    args.commit, args.machine = git_commit(), cpu_model()
    print(f"{len(todo)} runs to do, {args.lanes} lanes", flush=True)

    def record(item: tuple[str, str, int], entry: dict) -> None:
        save(out, load(out) + [entry])
        print(f"{item}: {100 * entry['acc']:.2f} ± {100 * entry['ci95']:.2f} {entry['label']} "
              f"{entry['seconds']:.0f} s", flush=True)

    run_in_lanes(todo, lambda item: run_one(*item, args), record, args.lanes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
