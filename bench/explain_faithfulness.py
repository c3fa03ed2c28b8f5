"""Faithfulness of the explanation: does the SuperNet's counterfactual (``lightning_metanas.explain``)
say how accuracy changes when one layer of an architecture is edited and the network is trained alone?

    .venv/bin/python bench/explain_faithfulness.py            # explanations, edits, figures
    .venv/bin/python bench/explain_faithfulness.py --labels   # neighbours still to train alone
    .venv/bin/python bench/ground_truth.py --only $(.venv/bin/python bench/explain_faithfulness.py --labels)

For each base architecture (Conv-4, the results table's 5-way 1-shot searched pick, a budgeted
search's pick; ``--bases``) that the version-2 ground truth holds with both training seeds, the
bench explains it with the SuperNet of ``bench/ranking.py`` (fair sampling, the ground truth's
budget) the way the search scores: the first ``--tasks`` validation tasks with 5 query images
per class, the search's adaptation steps and size prior. Each ground-truth architecture (both
seeds) one edit from a base is an *edit*: its predicted change is the explanation's ``delta``
(its score minus the base's; ``accuracy_delta`` without the size prior), its measured change the
difference of the two-seed means of stand-alone accuracy, on the validation, test and one-image
test columns. Pairs of such neighbours that are themselves one edit apart are reported apart
(their predicted change is the difference of two counterfactual scores of the same explanation;
each pair once, from the neighbour whose edit the explanation lists first).

The interval of a measured change is ``1.96 * sqrt(se_a**2 + se_b**2)``, where an architecture's
standard error is the larger of half its two seeds' spread (``|seed0 - seed1| / 2``, the
standard error of a two-run mean) and the task sampling's (mean 95% interval of its runs over
their 600 tasks / 1.96 / sqrt 2): two seeds alone can agree by chance. The sign figure counts
the edits whose measured change exceeds that interval. Which prediction (with or without the
prior) and which size rule (the baseline, ``zero_cost.SIZE_RULES``) are read is chosen on the
validation column; every column is reported. Writes ``bench/explain_faithfulness/omniglot_5w1s.json``;
an explanation already there (same checkpoint, tasks and prior) is reused, so a rerun after more
ground-truth runs finish only recomputes the figures.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import cpu_model, git_commit, load, save  # noqa: E402
from bench.ground_truth import neighbours, parse  # noqa: E402
from bench.ranking import GROUND_TRUTH, SCORE_TASKS, validation_tasks  # noqa: E402
from bench.ranking_table import COLUMNS, bootstrap_difference  # noqa: E402
from lightning_metanas.costs import CostModel  # noqa: E402
from lightning_metanas.explain import WhyConfig, counterfactuals, explain, one_edits  # noqa: E402
from lightning_metanas.metrics import kendall_tau  # noqa: E402
from lightning_metanas.module import MetaNASModule  # noqa: E402
from lightning_metanas.scoring import Scorer, Tasks  # noqa: E402
from lightning_metanas.search_config import SearchConfig  # noqa: E402
from lightning_metanas.search_space import Architecture, SearchSpace  # noqa: E402
from lightning_metanas.zero_cost import SIZE_RULES, size_key  # noqa: E402

CKPT = ROOT / "runs/ranking_v2/supernet_fair/version_0/checkpoints/last.ckpt"
OUT = ROOT / "bench/explain_faithfulness/omniglot_5w1s.json"
INTERVALS = {"val_acc": "val_ci95", "test_acc": "ci95", "test_acc_inductive": "ci95_inductive"}
PREDICTIONS = ("score", "accuracy")  # the explanation's change of score (with the size prior) and of raw accuracy


def default_bases() -> dict[str, Optional[str]]:
    """Conv-4, the 5-way 1-shot seed-0 searched pick of the results table, and the seed-0 pick of
    the search within 3 MFLOPs (``bench/budget_search.py``, else ``bench/results.py``'s arm)."""
    results = load(ROOT / "bench/results/omniglot.json") or []
    budgeted = [r for r in load(ROOT / "bench/budget_search/omniglot_5w1s.json") or []
                if r["budget"] == "flops3M" and r.get("strategy", "evolution") == "evolution" and r["seed"] == 0]
    budgeted += [r for r in results if r["setting"] == "5w1s" and r["arm"] == "search_flops3M" and r["seed"] == 0]
    searched = [r for r in results if r["setting"] == "5w1s" and r["arm"] == "search" and r["seed"] == 0]
    return {"reference": str(SearchSpace().reference()), "searched": searched[0]["label"] if searched else None,
            "budget": budgeted[0]["label"] if budgeted else None}


def standard_error(entry: dict, column: str) -> float:
    runs = entry["runs"]
    seeds = abs(runs[0][column] - runs[1][column]) / 2
    tasks = statistics.mean(r[INTERVALS[column]] for r in runs) / 1.96 / math.sqrt(2)
    return max(seeds, tasks)


def edit_record(base: dict, other: dict, row_base: dict, row_other: dict, how: str) -> dict:
    """One edit from ``base`` to ``other`` (ground-truth entries; rows of the explanation)."""
    record = {"base": base["label"], "neighbour": other["label"], "edit": how,
              "predicted": {name: row_other[name] - row_base[name] for name in PREDICTIONS},
              "size_rules": {rule: size_key(rule, other["params"], other["flops"], len(other["arch"]["ops"]))
                             - size_key(rule, base["params"], base["flops"], len(base["arch"]["ops"]))
                             for rule in SIZE_RULES}}
    for column in COLUMNS:
        record[column] = other[column] - base[column]
        record[column + "_interval"] = 1.96 * math.hypot(standard_error(base, column), standard_error(other, column))
    return record


def agreement(edits: list[dict], predicted: list[float], column: str) -> dict:
    """Kendall tau of ``predicted`` against the measured change, and the share of edits whose
    sign it gets right among those whose measured change exceeds its interval."""
    measured = [e[column] for e in edits]
    clear = [i for i, e in enumerate(edits) if abs(e[column]) > e[column + "_interval"]]
    right = sum(predicted[i] * measured[i] > 0 for i in clear)
    return {"edits": len(edits), "tau": kendall_tau(predicted, measured), "beyond_interval": len(clear),
            "sign_right": right, "sign_share": right / len(clear) if clear else None,
            "sign_share_all": sum(p * m > 0 for p, m in zip(predicted, measured)) / len(edits) if edits else None}


def figures(edits: list[dict], draws: int) -> dict:
    """Every prediction and size rule against every column; the ones chosen on validation."""
    series = {f"explanation ({name})": [e["predicted"][name] for e in edits] for name in PREDICTIONS}
    series |= {f"rule: {rule}": [e["size_rules"][rule] for e in edits] for rule in SIZE_RULES}
    rows = {name: {column: agreement(edits, values, column) for column in COLUMNS} for name, values in series.items()}
    if len(edits) < 2:
        return {"rows": rows}

    def best(prefix: str) -> str:
        return max((n for n in rows if n.startswith(prefix)), key=lambda n: rows[n]["val_acc"]["tau"] or -2.0)

    chosen, rule = best("explanation"), best("rule")
    difference = {column: dict(zip(("difference", "low", "high"), bootstrap_difference(
        series[chosen], series[rule], [e[column] for e in edits], draws))) for column in COLUMNS}
    return {"rows": rows, "chosen": chosen, "chosen_rule": rule, "tau_minus_rule": difference}


def explained(base: Architecture, model: Optional[MetaNASModule], tasks: Optional[Tasks], size_prior: float,
              cache: dict) -> dict:
    """The explanation of ``base`` (from ``cache`` when there)."""
    if str(base) in cache:
        return cache[str(base)]
    hp = model.hparams
    costs = CostModel(model.space, hp.ways, hp.image_channels, hp.image_size, supernet=model.supernet)
    scorer = Scorer.on_tasks(model.adapter, tasks, model.meta.eval_inner_steps, size_prior)
    why = explain(base, model.space, scorer, costs, config=WhyConfig(), tasks=len(tasks[0]),
                  steps=model.meta.eval_inner_steps)
    print(f"{base}: {why['cost']['scorings']} scorings in {why['cost']['seconds']:.0f} s", flush=True)
    return why


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", default=str(CKPT), help="the SuperNet (bench/ranking.py --training fair)")
    parser.add_argument("--ground_truth", default=str(GROUND_TRUTH))
    parser.add_argument("--bases", nargs="*", default=None, help="labels of the base architectures (default: "
                        "Conv-4, the 5w1s searched pick of bench/results, the 3-MFLOP budget search's pick)")
    parser.add_argument("--tasks", type=int, default=SCORE_TASKS, help="scoring tasks (the search's: 100)")
    parser.add_argument("--size_prior", type=float, default=SearchConfig().size_prior)
    parser.add_argument("--draws", type=int, default=2000, help="bootstrap resamples of the tau difference")
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--labels", action="store_true",
                        help="print the bases and one-edit neighbours not yet in the ground truth with 2 seeds, and stop")
    args = parser.parse_args(argv)
    space = SearchSpace()
    named = {label: label for label in args.bases} if args.bases is not None else default_bases()
    bases = {role: parse(label) for role, label in named.items() if label}
    truth = {Architecture.of(e["arch"]): e for e in load(Path(args.ground_truth)) or [] if len(e.get("runs", [])) >= 2}
    if args.labels:
        wanted = [a for base in bases.values() for a in [base, *neighbours(space, base)]]
        print(" ".join(dict.fromkeys(str(a) for a in wanted if a not in truth)))
        return 0
    out = Path(args.out)
    previous = load(out) or {}
    settings = {"ckpt": str(Path(args.ckpt).resolve().relative_to(ROOT)) if Path(args.ckpt).resolve().is_relative_to(ROOT)
                else args.ckpt, "tasks": args.tasks, "size_prior": args.size_prior}
    cache = previous.get("explanations", {}) if previous.get("settings") == settings else {}
    present = {role: base for role, base in bases.items() if base in truth}
    model = tasks = None
    if any(str(b) not in cache for b in present.values()):
        model = MetaNASModule.load_from_checkpoint(args.ckpt, map_location="cpu", weights_only=True)
        tasks = validation_tasks(Path(args.ckpt), 0, count=args.tasks)
    explanations = {str(b): explained(b, model, tasks, args.size_prior, cache) for b in present.values()}
    edits, among = [], []
    for base in present.values():
        why = explanations[str(base)]
        rows = counterfactuals(why)
        hows = {e.arch: e.label for e in one_edits(space, base)}
        near = [a for a in rows if a != base and a in truth]
        edits += [edit_record(truth[base], truth[a], rows[base], rows[a], hows[a]) for a in near]
        for i, a in enumerate(near):  # neighbour pairs one edit apart, each once
            steps = {e.arch: e.label for e in one_edits(space, a)}
            among += [edit_record(truth[a], truth[b], rows[a], rows[b], steps[b]) for b in near[i + 1:] if b in steps]
    missing = {role: {"base": named[role], "in_ground_truth": parse(named[role]) in truth,
                      "neighbours_missing": [str(a) for a in neighbours(space, parse(named[role])) if a not in truth]}
               for role in named if named[role]}
    save(out, {
        "command": "python bench/explain_faithfulness.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "commit": git_commit(), "machine": cpu_model(), "settings": settings,
        "interval": "1.96 * sqrt(se_base^2 + se_neighbour^2), se = max(|seed0 - seed1| / 2, mean run ci95 / 1.96 / sqrt(2))",
        "bases": named, "coverage": missing,
        "base_edits": figures(edits, args.draws), "neighbour_pairs": figures(among, args.draws),
        "edits": edits, "pairs": among, "explanations": explanations,
    })
    print(f"{len(edits)} edits of {len(present)} base(s), {len(among)} neighbour pairs -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
