"""Whether the two-layer suspect score becomes adapt.py's default: the rule, fixed before its
validation run, applied to the validation cells (never test).

    .venv/bin/python bench/robust_adapt_layers.py

Rule: the two-layer score (``--suspects.layers 2 --suspects.threshold 0.22``, chosen by
``bench/robust_adapt_threshold.py --layers 1 2 3``) replaces the one-layer default if, against
that default, it costs no clean or imbalanced validation cell more than 0.25 points (paired mean
over the same tasks) and its mean over the noisy cells (20% and 40% wrong labels, both networks)
is at least the default's. The one-layer default's per-task figure is what
``bench/robust_adapt_auto.py`` builds for the 10% share: the measured ``balanced`` adaptation
of the task, or ``balanced_drop`` when its one-layer suspects are at least 10% of the images.
The two-layer figures are the ``default`` cells of ``bench/robust_adapt/omniglot_val.json``
(``bench/robust_adapt.py --split val --tasks 100 --modes default``, run as mode ``layers2``).
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.adapt_omniglot import mean_ci  # noqa: E402
from bench.common import load  # noqa: E402

MAX_CLEAN_COST = 0.0025


def decide(auto_tasks: list[dict], cells: dict[tuple[str, str], dict]) -> tuple[list[dict], bool]:
    """Per (network, setting) the one- and two-layer accuracy and their paired difference, and
    whether the rule passes. ``auto_tasks``: ``auto_val.json``'s per-task records; ``cells``:
    the two-layer validation cells by (arch, setting)."""
    rows, noisy_two, noisy_one, passes = [], [], [], True
    for t in auto_tasks:
        if (t["arch"], t["setting"]) not in cells:
            continue
        one = [drop if listed / images >= 0.1 else keep
               for listed, images, keep, drop in zip(t["listed"], t["images"], t["acc_default"], t["acc_drop"])]
        two = cells[t["arch"], t["setting"]]["per_task"]["acc"]
        diff, ci = mean_ci([a - b for a, b in zip(two, one)])
        rows.append({"arch": t["arch"], "setting": t["setting"], "one": sum(one) / len(one),
                     "two": sum(two) / len(two), "difference": diff, "ci95": ci})
        if "noise" in t["setting"]:
            noisy_two, noisy_one = noisy_two + two, noisy_one + one
        elif diff < -MAX_CLEAN_COST:
            passes = False
    return rows, passes and bool(noisy_two) and sum(noisy_two) >= sum(noisy_one)


def main() -> int:
    auto = load(ROOT / "bench/robust_adapt/auto_val.json")
    cells = {(e["arch"], e["setting"]): e for e in load(ROOT / "bench/robust_adapt/omniglot_val.json")
             if e["mode"] == "default" and e["suspects"].get("layers") == 2 and e["tasks"] == 100}
    rows, passes = decide(auto["tasks"], cells)
    for r in rows:
        print(f"{r['arch']:66s} {r['setting']:22s} one layer {100 * r['one']:6.2f}  two layers "
              f"{100 * r['two']:6.2f}  difference {100 * r['difference']:+.2f} ± {100 * r['ci95']:.2f}")
    print("rule:", "the two-layer score becomes the default" if passes else "the one-layer default stays")
    return 0


if __name__ == "__main__":
    sys.exit(main())
