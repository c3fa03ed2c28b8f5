"""The tables of ``bench/robust_adapt.py``: per network, every (setting, mode) cell with its
accuracy one image at a time, its paired difference to ``naive`` on the same tasks, balanced
accuracy, the transductive figure, and the suspects' precision and recall.

    .venv/bin/python bench/robust_adapt_table.py                         # test split, printed
    .venv/bin/python bench/robust_adapt_table.py --split val --file bench/robust_adapt/omniglot_val.json
    .venv/bin/python bench/robust_adapt_table.py --write RESULTS.md      # the split's block between its markers

A remedy is judged by the paired difference: the same tasks, the same support images, only the
fine-tuning differs, so the interval of the difference is far narrower than either accuracy's.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.adapt_omniglot import mean_ci  # noqa: E402
from bench.common import load  # noqa: E402

SETTING_ORDER = ("clean-1shot", "clean-5shot", "noise20", "noise40", "imbalance-1-2-3-5-10", "imbalance-1-1-1-1-10")
MODE_ORDER = ("naive", "default", "default_layers1", "balanced", "drop", "balanced_drop", "smooth", "sce", "sgd10", "sgd20", "adam100")


def markers(split: str) -> tuple[str, str]:
    """The comments around a split's block in a Markdown file (``--write``)."""
    return f"<!-- robust_adapt_table:{split}:start -->", f"<!-- robust_adapt_table:{split}:end -->"


def pct(value: float, ci: Optional[float] = None) -> str:
    return f"{100 * value:.2f}" + (f" ± {100 * ci:.2f}" if ci is not None else "")


def paired(entry: dict, naive: Optional[dict]) -> str:
    """Mean difference to ``naive`` over the same tasks, with its 95% interval (``-`` for naive
    itself or when the tasks differ)."""
    if naive is None or entry is naive or len(naive["per_task"]["acc"]) != len(entry["per_task"]["acc"]):
        return "-"
    diff = [a - b for a, b in zip(entry["per_task"]["acc"], naive["per_task"]["acc"])]
    mean, ci = mean_ci(diff)
    return f"{100 * mean:+.2f} ± {100 * ci:.2f}"


def table(entries: list[dict], arch: str) -> list[str]:
    cells = {(e["setting"], e["mode"]): e for e in entries if e["arch"] == arch}
    lines = ["| setting | mode | one image at a time | vs naive (same tasks) | balanced | as a batch | "
             "suspects P / R | one-image classes' recall |", "|---|---|---|---|---|---|---|---|"]
    for setting in [s for s in SETTING_ORDER if any(k[0] == s for k in cells)]:
        naive = cells.get((setting, "naive"))
        modes = [m for m in MODE_ORDER if (setting, m) in cells]
        modes += sorted(m for s, m in cells if s == setting and m not in MODE_ORDER)  # e.g. *-3steps
        for mode in modes:
            e = cells[(setting, mode)]
            flags = (f"{e['flag_precision']:.2f} / {e['flag_recall']:.2f}" if "flag_precision" in e else "")
            rare = pct(e["rare_recall"], e["rare_recall_ci95"]) if "rare_recall" in e else ""
            lines.append(f"| {setting} | {mode} | {pct(e['acc'], e['acc_ci95'])} | {paired(e, naive)} | "
                         f"{pct(e['balanced_acc'])} | {pct(e['acc_transductive'])} | {flags} | {rare} |")
    return lines


def render(entries: list[dict], split: str) -> str:
    entries = [e for e in entries if e.get("split") == split]
    out = []
    for arch in dict.fromkeys(e["arch"] for e in entries):
        mine = [e for e in entries if e["arch"] == arch]
        tasks = sorted({e["tasks"] for e in mine})
        machines = sorted({e.get("machine", "?") for e in mine})
        out += [f"**`{arch}`** ({'/'.join(map(str, tasks))} tasks per cell, {split} classes; {', '.join(machines)}; "
                f"checkpoint `{mine[0]['checkpoint']}`)", "", *table(mine, arch), ""]
    commands = sorted({e["command"] for e in entries})
    out += ["Commands:", "", "```", *commands, "```"]
    return "\n".join(out)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--file", nargs="+", default=[str(ROOT / "bench/robust_adapt/omniglot.json")])
    parser.add_argument("--split", default="test", choices=("val", "test"))
    parser.add_argument("--write", default=None, help="Replace the block between the markers of this Markdown file.")
    args = parser.parse_args(argv)
    entries = [e for path in args.file for e in (load(Path(path)) or [])]
    text = render(entries, args.split)
    if args.write:
        START, END = markers(args.split)
        path = Path(args.write)
        doc = path.read_text()
        if START not in doc or END not in doc:
            raise SystemExit(f"{path} has no {START} ... {END} block to replace")
        path.write_text(re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: f"{START}\n{text}\n{END}", doc,
                               flags=re.S))
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
