"""Adaptation to a new alphabet: warm-started vs from-scratch architecture search, same budget.

    .venv/bin/python bench/adapt_omniglot.py --ckpt_path runs/search_quick/version_0/checkpoints/last.ckpt
    .venv/bin/python bench/adapt_omniglot.py --ckpt_path ... --budget 24 --seeds 0 1 2 --finetune_steps 100
    .venv/bin/python bench/adapt_omniglot.py --ckpt_path ... --init_random   # adds a random-weights row

The task: ONE Omniglot alphabet whose characters are all in the test split of the class split
the checkpoint was meta-trained with (``omniglot_split(split_seed)``), i.e. never seen in
meta-training: the first test alphabet (by name) with at least ``--min_characters`` test
characters, or ``--alphabet``. Its 20 drawings per character are written as PNGs (dark ink on
white paper, as in the original zips) into a temporary folder ``<character>/<drawing>.png``,
and ``adapt.py --invert true`` reads them back with ink = 1, as meta-training saw them. Each
character is one class (15 drawings train, 5 validation with the default ``--val_fraction``).

Then ``adapt.py`` runs, one subprocess per run (the same start-up cost for every run; the
times reported are measured inside), for every seed: warm start and from scratch (and
``--init random`` with ``--init_random``), with the same budget and seed. Any flag this script
does not know is passed on to ``adapt.py`` (e.g. ``--score_tasks 2``). Prints a markdown table
per run and the mean over seeds.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lightning_metanas.data import load_omniglot, omniglot_split  # noqa: E402
from lightning_metanas.search_space import Architecture  # noqa: E402


def checkpoint_split_seed(ckpt_path: str) -> int:
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    for key, state in checkpoint.items():
        if key.endswith("EpisodicDataModule") and isinstance(state, dict) and "settings" in state:
            settings = state["settings"]
            if settings.get("dataset") == "omniglot":
                return int(settings.get("split_seed", 0))
    return 0


def pick_alphabet(root: str, split_seed: int, min_characters: int, alphabet: str | None):
    """(alphabet name, [(character name, [20 ink images])]) of one test alphabet."""
    data = load_omniglot(root, image_size=28)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        test_ids = omniglot_split(split_seed, data.num_classes)[2]
    by_alphabet: dict[str, list[int]] = defaultdict(list)
    for c in sorted(test_ids):
        zip_folder, alpha, _ = data.class_names[c].split("/")
        by_alphabet[f"{zip_folder}/{alpha}"].append(c)
    if alphabet is not None:
        chosen = [a for a in by_alphabet if a == alphabet or a.split("/")[1] == alphabet]
        if not chosen:
            sys.exit(f"error: --alphabet {alphabet!r} has no test characters; test alphabets: "
                     + ", ".join(sorted(by_alphabet)))
        name = chosen[0]
    else:
        eligible = [a for a in sorted(by_alphabet) if len(by_alphabet[a]) >= min_characters]
        if not eligible:
            sys.exit(f"error: no test alphabet has >= {min_characters} characters")
        name = eligible[0]
    characters = []
    for c in by_alphabet[name]:
        images = data.images[data.labels == c]
        characters.append((data.class_names[c].split("/")[-1], images))
    return name, characters


def write_folder(characters, folder: Path) -> None:
    for character, images in characters:
        (folder / character).mkdir(parents=True)
        for i, ink in enumerate(images):
            paper = np.round(255 * (1 - ink[0].numpy())).astype(np.uint8)  # dark ink on white
            Image.fromarray(paper, mode="L").save(folder / character / f"{i:02d}.png")


def run_adapt(args: list[str], out: Path) -> dict:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, str(ROOT / "adapt.py"), *args, "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"adapt.py {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    print(proc.stdout.strip().splitlines()[-1], file=sys.stderr)
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt_path", required=True)
    parser.add_argument("--root", default="data/omniglot", help="Folder with the Omniglot zips.")
    parser.add_argument("--alphabet", default=None, help="Test alphabet to use (default: the first with enough characters).")
    parser.add_argument("--min_characters", type=int, default=10)
    parser.add_argument("--budget", type=int, default=24)
    parser.add_argument("--finetune_steps", type=int, default=100)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--init_random", action="store_true",
                        help="Also run from-scratch search with random weights (--init random).")
    args, passthrough = parser.parse_known_args()
    if not Path(args.ckpt_path).is_file():
        sys.exit(f"error: --ckpt_path {args.ckpt_path}: no such file")

    split_seed = checkpoint_split_seed(args.ckpt_path)
    name, characters = pick_alphabet(args.root, split_seed, args.min_characters, args.alphabet)
    modes = {"warm start": ["--warm_start", "true"], "from scratch": ["--warm_start", "false"]}
    if args.init_random:
        modes["scratch, random weights"] = ["--warm_start", "false", "--init", "random"]
    rows: dict[str, list[dict]] = defaultdict(list)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "task"
        write_folder(characters, folder)
        for seed in args.seeds:
            for mode, flags in modes.items():
                common = ["--ckpt_path", args.ckpt_path, "--data_root", str(folder), "--invert", "true",
                          "--budget", str(args.budget), "--finetune_steps", str(args.finetune_steps),
                          "--seed", str(seed), *passthrough]
                rows[mode].append(run_adapt(common + flags, Path(tmp) / f"{mode}-{seed}.json"))

    first = next(iter(rows.values()))[0]
    print(f"\nTask: Omniglot alphabet {name} (test split of split_seed={split_seed}): "
          f"{first['classes']} characters, {first['n_train']} train / {first['n_val']} validation "
          f"drawings; budget {args.budget} scorings, {args.finetune_steps} fine-tuning steps; "
          f"checkpoint {args.ckpt_path}\n")
    print("| search | seed | validation acc. | search score | search s | fine-tune s | scorings | predictor used | architecture |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for mode, results in rows.items():
        for r in results:
            arch = Architecture.of(r["arch"])
            print(f"| {mode} | {r['seed']} | {100 * r['val_acc']:.1f}% | {100 * r['search_score']:.1f}% | "
                  f"{r['search_seconds']:.1f} | {r['finetune_seconds']:.1f} | {r['scorings']} | "
                  f"{'yes' if r['predictor_used'] else 'no'} | {arch} |")
    print("\n| search | mean validation acc. (± std over seeds) | mean search s | mean fine-tune s |")
    print("| --- | --- | --- | --- |")
    for mode, results in rows.items():
        accs = [100 * r["val_acc"] for r in results]
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        print(f"| {mode} | {statistics.mean(accs):.1f}% ± {std:.1f} | "
              f"{statistics.mean(r['search_seconds'] for r in results):.1f} | "
              f"{statistics.mean(r['finetune_seconds'] for r in results):.1f} |")


if __name__ == "__main__":
    main()
