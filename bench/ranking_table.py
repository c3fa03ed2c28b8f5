"""Ranking fidelity, step 2: every method against the version-2 ground truth, chosen on the
validation column, reported on every column, beside the rules that need no search.

    .venv/bin/python bench/ranking_table.py            # markdown on stdout, JSON next to the scores

A *method* is a SuperNet training (``bench/ranking.py``) and a size-prior strength applied to its
raw scores (``scoring.size_weighted``, the search's own score). The method, the prior and the best
zero-cost rule are each chosen by Kendall tau against the **validation** accuracy of the ground
truth (mean of its two training seeds); test and inductive test columns are read once, for the
table. Baselines: the size rules of ``lightning_metanas.zero_cost`` (depth then parameters or
FLOPs, parameters, FLOPs) and NASWOT (Mellor et al. 2021) at initialisation on 5 validation
tasks. The difference between the chosen SuperNet's tau and the chosen rule's carries a paired
bootstrap 95% interval over architectures, overall and within each cost budget.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import load, save  # noqa: E402
from lightning_metanas.metrics import kendall_tau  # noqa: E402
from lightning_metanas.ranking import rank_agreement  # noqa: E402
from lightning_metanas.scoring import size_weighted  # noqa: E402
from lightning_metanas.search_space import Architecture, SearchSpace  # noqa: E402
from lightning_metanas.supernet import SuperNet  # noqa: E402
from lightning_metanas.zero_cost import size_key  # noqa: E402

PRIORS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4)
COLUMNS = {"val_acc": "validation", "test_acc": "test", "test_acc_inductive": "test, one image at a time"}
RULES = ("depth_params", "depth_flops", "params", "flops", "naswot")


def within_depth_tau(scores: Sequence[float], truth: Sequence[float], depths: Sequence[int]) -> Optional[float]:
    """Kendall tau over the pairs of equal depth, each depth weighted by its pairs."""
    total, pairs = 0.0, 0
    for depth in sorted(set(depths)):
        idx = [i for i, d in enumerate(depths) if d == depth]
        if len(idx) < 3:
            continue
        n = len(idx) * (len(idx) - 1) // 2
        total += n * kendall_tau([scores[i] for i in idx], [truth[i] for i in idx])
        pairs += n
    return total / pairs if pairs else None


def bootstrap_difference(a: Sequence[float], b: Sequence[float], truth: Sequence[float], draws: int = 2000,
                         seed: int = 0) -> tuple[float, float, float]:
    """``tau(a) - tau(b)`` against ``truth`` and its paired percentile-bootstrap 95% interval
    (architectures resampled with replacement, the same resample for both)."""
    rng = random.Random(seed)
    n = len(truth)
    diffs = []
    for _ in range(draws):
        idx = [rng.randrange(n) for _ in range(n)]
        t = [truth[i] for i in idx]
        diffs.append(kendall_tau([a[i] for i in idx], t) - kendall_tau([b[i] for i in idx], t))
    diffs.sort()
    return kendall_tau(a, truth) - kendall_tau(b, truth), diffs[int(0.025 * draws)], diffs[int(0.975 * draws) - 1]


def naswot_scores(entries: list[dict], out: Path, tasks: int = 5) -> dict[str, float]:
    """NASWOT of every architecture (cached in ``out``): each of the first ``tasks`` validation
    tasks of the benchmark's data (all 16 images of each of its 5 classes) is one batch."""
    cached = load(out) if out.is_file() else {}
    missing = [e for e in entries if e["label"] not in cached]
    if missing:
        import torch

        from lightning_metanas.data import EpisodicDataModule
        from lightning_metanas.zero_cost import naswot

        data = EpisodicDataModule(dataset="omniglot", ways=5, shots=1, queries=15, val_tasks=tasks)
        data.setup("fit")
        val = data.task_dataset("val")
        batches = [torch.cat([val[i].support_x, val[i].query_x]) for i in range(tasks)]
        for e in missing:
            cached[e["label"]] = naswot(Architecture.of(e["arch"]), batches, ways=5)
        save(out, cached)
    return {e["label"]: cached[e["label"]] for e in entries}


def rule_scores(entries: list[dict], naswot: dict[str, float]) -> dict[str, list[float]]:
    out = {}
    for rule in RULES:
        if rule == "naswot":
            out[rule] = [naswot[e["label"]] for e in entries]
        else:
            out[rule] = [size_key(rule, e["params"], e["flops"], len(e["arch"]["ops"])) for e in entries]
    return out


def table(entries: list[dict], methods: dict[str, list[float]], rules: dict[str, list[float]],
          choose: Callable[[dict[str, list[float]]], str]) -> dict:
    """Every method's and rule's agreement with every column; the choices made on validation."""
    depths = [len(e["arch"]["ops"]) for e in entries]
    rows = {}
    for name, scores in {**methods, **{f"rule: {r}": s for r, s in rules.items()}}.items():
        row = {}
        for column in COLUMNS:
            truth = [e[column] for e in entries]
            row[column] = rank_agreement(scores, truth) | {"within_depth_tau": within_depth_tau(scores, truth, depths)}
        rows[name] = row
    return {"rows": rows, "chosen_method": choose(methods), "chosen_rule": choose({f"rule: {r}": s for r, s in rules.items()})}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ground_truth", default=str(ROOT / "bench/ground_truth/omniglot_5w1s_v2.json"))
    parser.add_argument("--scores", default=str(ROOT / "bench/ranking"), help="folder of *_scores.json")
    parser.add_argument("--out", default=str(ROOT / "bench/ranking/omniglot_5w1s_v2.json"))
    parser.add_argument("--min_seeds", type=int, default=2, help="architectures with at least this many runs")
    parser.add_argument("--draws", type=int, default=2000, help="bootstrap resamples")
    args = parser.parse_args(argv)
    entries = [e for e in load(Path(args.ground_truth)) if len(e["runs"]) >= args.min_seeds]
    score_files = sorted(Path(args.scores).glob("omniglot_5w1s_*_scores.json"))
    supernet_scores = {json.loads(p.read_text())["training"]: {s["label"]: s["accuracy"]
                                                               for s in json.loads(p.read_text())["entries"]}
                       for p in score_files}
    entries = [e for e in entries if all(e["label"] in s for s in supernet_scores.values())]
    if len(entries) < 10:
        parser.error(f"{len(entries)} architectures with {args.min_seeds} seeds and every SuperNet's score: too few")
    largest = SuperNet(SearchSpace(), ways=5).largest_num_parameters()
    methods = {f"{training} + size prior {prior:g}": [size_weighted(s[e["label"]][0], e["params"], largest, prior)
                                                       for e in entries]
               for training, s in supernet_scores.items() for prior in PRIORS}
    rules = rule_scores(entries, naswot_scores(entries, Path(args.scores) / "naswot.json"))
    val = [e["val_acc"] for e in entries]

    def choose(candidates: dict[str, list[float]]) -> str:
        return max(candidates, key=lambda name: kendall_tau(candidates[name], val))

    result = table(entries, methods, rules, choose)
    chosen, rule = result["chosen_method"], result["chosen_rule"]
    result["bootstrap"] = {}
    for column in COLUMNS:
        truth = [e[column] for e in entries]
        diff, low, high = bootstrap_difference(methods[chosen], rules[rule.removeprefix("rule: ")], truth, args.draws)
        result["bootstrap"][column] = {"difference": diff, "low": low, "high": high}
    result["within_budget"] = {}
    budgets = sorted({b for e in entries for b in e["budgets"]})
    for budget in budgets:
        idx = [i for i, e in enumerate(entries) if budget in e["budgets"]]
        if len(idx) < 5:
            continue
        truth = [val[i] for i in idx]
        sub_rules = {r: [rules[r][i] for i in idx] for r in rules}
        best_rule = max(sub_rules, key=lambda r: kendall_tau(sub_rules[r], truth))
        a = [methods[chosen][i] for i in idx]
        diff, low, high = bootstrap_difference(a, sub_rules[best_rule], truth, args.draws)
        result["within_budget"][budget] = {"architectures": len(idx), "supernet_tau": kendall_tau(a, truth),
                                           "best_rule": best_rule, "rule_tau": kendall_tau(sub_rules[best_rule], truth),
                                           "difference": diff, "low": low, "high": high}
    result |= {"architectures": len(entries), "seeds": args.min_seeds, "priors": list(PRIORS),
               "ground_truth": os.path.relpath(args.ground_truth, ROOT),
               "command": "python bench/ranking_table.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    save(Path(args.out), result)
    print(markdown(result))
    return 0


def markdown(result: dict) -> str:
    def cell(row: dict, column: str) -> str:
        r = row[column]
        within = "–" if r["within_depth_tau"] is None else f"{r['within_depth_tau']:.3f}"
        return f"{r['kendall_tau']:.3f} / {within}"

    chosen, rule = result["chosen_method"], result["chosen_rule"]
    best_per_training: dict[str, str] = {}
    for name in result["rows"]:
        if not name.startswith("rule: "):
            training = name.split(" + ")[0]
            current = best_per_training.get(training)
            if current is None or result["rows"][name]["val_acc"]["kendall_tau"] > result["rows"][current]["val_acc"]["kendall_tau"]:
                best_per_training[training] = name
    shown = list(best_per_training.values()) + [n for n in result["rows"] if " + size prior 0" == n[-15:] and n not in best_per_training.values()]
    shown += [n for n in result["rows"] if n.startswith("rule: ")]
    lines = [f"{result['architectures']} architectures (mean of {result['seeds']} training seeds each). "
             "Kendall tau / tau within equal depth; chosen on the validation column (marked *).", "",
             "| method | " + " | ".join(COLUMNS.values()) + " | top-1's GT rank (val) |",
             "|---|" + "---|" * (len(COLUMNS) + 1)]
    for name in shown:
        row = result["rows"][name]
        mark = " *" if name in (chosen, rule) else ""
        lines.append(f"| {name}{mark} | " + " | ".join(cell(row, c) for c in COLUMNS)
                     + f" | {row['val_acc']['top1_ground_truth_rank']} |")
    lines.append("")
    for column, label in COLUMNS.items():
        b = result["bootstrap"][column]
        lines.append(f"- {label}: tau({chosen}) - tau({rule}) = {b['difference']:+.3f}, "
                     f"95% interval [{b['low']:+.3f}, {b['high']:+.3f}]")
    for budget, b in result["within_budget"].items():
        lines.append(f"- within {budget} ({b['architectures']} architectures, validation): SuperNet {b['supernet_tau']:.3f}, "
                     f"best rule {b['best_rule']} {b['rule_tau']:.3f}: difference {b['difference']:+.3f} "
                     f"[{b['low']:+.3f}, {b['high']:+.3f}]")
    lines.append(f"\nCommand: `{result['command']}`")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
