"""The per-budget table of RESULTS.md: the budgeted search's picks against what needs no search.

    .venv/bin/python bench/budget_table.py

Per budget of ``bench/ground_truth.BUDGETS`` (and without one), stand-alone accuracy (ground
truth version 2: mean of two training seeds; test, validation and one-image test columns) of:

* the search's picks (``bench/budget_search.py``): the mean over its seeds, and each;
* random search's picks (same SuperNet, tasks and number of real scorings): the mean over seeds;
* the best zero-cost pick: the first choice, over the whole space within the budget, of the
  size rule chosen on the validation column (``bench/ranking_table.py``);
* the largest network that fits (the parameter rule's first choice within the budget);
* a random network that fits: the mean over the ground truth's architectures within the budget,
  leaving out group ``faithfulness`` (the one-edit neighbours of a few bases added for
  ``bench/explain_faithfulness.py``: clustered around those bases, not a sample of the budget);
* the oracle: the best of the ground truth within the budget, every group (by test accuracy: an
  upper reference, not a method).

A pick not yet trained alone shows as "not trained" (``ground_truth.py --only <label>``); random
search's column lists its picks one by one until all are trained, then their mean.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import load, save  # noqa: E402
from bench.ground_truth import BUDGETS  # noqa: E402

LARGEST = "conv5x5@64-conv5x5@64-conv5x5@64-conv5x5@64-conv5x5@64"  # the space's largest network


def pct(value: Optional[float]) -> str:
    return "not trained" if value is None else f"{100 * value:.2f}"


def stand_alone(picks: list[dict], truth: dict) -> tuple[list[Optional[float]], Optional[float]]:
    """Each pick's stand-alone test accuracy (None: not trained yet) and their mean (None
    until every pick is trained)."""
    accs = [truth[r["label"]]["test_acc"] if r["label"] in truth else None for r in picks]
    done = [a for a in accs if a is not None]
    return accs, (statistics.fmean(done) if done and len(done) == len(accs) else None)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ground_truth", default=str(ROOT / "bench/ground_truth/omniglot_5w1s_v2.json"))
    parser.add_argument("--searches", default=str(ROOT / "bench/budget_search/omniglot_5w1s.json"))
    parser.add_argument("--ranking", default=str(ROOT / "bench/ranking/omniglot_5w1s_v2.json"))
    parser.add_argument("--archs", default=str(ROOT / "bench/ground_truth/omniglot_5w1s_v2_archs.json"),
                        help="the ground truth's architecture set, with each budget's rule picks")
    parser.add_argument("--out", default=str(ROOT / "bench/budget_search/table.json"))
    args = parser.parse_args(argv)
    truth = {e["label"]: e for e in load(Path(args.ground_truth)) if len(e["runs"]) >= 2}
    searches = load(Path(args.searches)) or []
    ranking = load(Path(args.ranking)) if Path(args.ranking).is_file() else {}
    rule = (ranking.get("chosen_rule") or "rule: depth_flops").removeprefix("rule: ")
    rule_picks = load(Path(args.archs))["rule_picks"]
    rows = {}
    lines = [f"Zero-cost rule (chosen on validation): {rule}. Stand-alone test accuracy, mean of 2 training seeds.", "",
             "| budget | search picks (mean of seeds) | each pick | random search | best zero-cost pick | "
             "largest that fits | random that fits (mean of n) | oracle | search - zero-cost | oracle - search |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for budget in ["none", *BUDGETS]:
        picks = [r for r in searches if r["budget"] == budget and r.get("strategy", "evolution") == "evolution"]
        if not picks:
            continue
        accs, search = stand_alone(picks, truth)
        randoms, random_search = stand_alone(
            [r for r in searches if r["budget"] == budget and r.get("strategy") == "random"], truth)
        members = [e for e in truth.values() if budget == "none" or budget in e["budgets"]]
        zero = rule_picks.get(f"{budget}:{rule}") if budget != "none" else None
        largest = rule_picks.get(f"{budget}:params") if budget != "none" else LARGEST
        zero_acc = truth[zero]["test_acc"] if zero in truth else None
        largest_acc = truth[largest]["test_acc"] if largest in truth else None
        sampled = [e for e in members if e.get("group") != "faithfulness"]
        random_acc = statistics.fmean(e["test_acc"] for e in sampled) if sampled else None
        oracle = max(members, key=lambda e: e["test_acc"]) if members else None
        rows[budget] = {"search": search, "picks": [(r["label"], a) for r, a in zip(picks, accs)],
                        "random_search": random_search, "random_search_picks": randoms,
                        "zero_cost": (zero, zero_acc), "largest": (largest, largest_acc), "random": random_acc,
                        "random_n": len(sampled), "oracle": (oracle["label"], oracle["test_acc"]) if oracle else None}
        each = ", ".join(pct(a) for a in accs)
        gap = f"{100 * (search - zero_acc):+.2f}" if search is not None and zero_acc is not None else "–"
        to_oracle = f"{100 * (oracle['test_acc'] - search):+.2f}" if search is not None and oracle else "–"
        # until every random-search pick is trained, each one (the mean would hide which are missing)
        random_cell = pct(random_search) if random_search is not None or not randoms else ", ".join(pct(a) for a in randoms)
        lines.append(f"| {budget} | {pct(search)} | {each} | {random_cell} | {pct(zero_acc)} | {pct(largest_acc)} | "
                     f"{pct(random_acc)} ({len(sampled)}) | {pct(oracle['test_acc'] if oracle else None)} | {gap} | {to_oracle} |")
    save(Path(args.out), {"rule": rule, "rows": rows})
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
