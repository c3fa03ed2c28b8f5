#!/usr/bin/env python
"""Classify images with a model saved by ``adapt.py --save``: each file's predicted class and
its top-k probabilities.

    python predict.py --model my_task.model.pt new_images/            # a folder (recursively)
    python predict.py --model my_task.model.pt a.png b.jpg --top_k 3 --out predictions.csv
    python predict.py --model my_task.model.pt new_images/ --out predictions.json --batch_size 1

Every image goes through the preprocessing saved with the model (size, channels, inversion,
normalisation) and is classified by a network whose BatchNorm statistics are fixed, so its
prediction does not depend on the other images or on ``--batch_size``. A file that does not
decode is reported by name (``error`` column) and the others are still predicted; the exit
status is then 1. ``--out`` writes CSV (``.csv``) or JSON (any other name). The model file is
loaded with ``torch.load(weights_only=True)``: nothing in it is executed.
"""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Optional

import torch
from jsonargparse import ArgumentParser

from lightning_metanas.adapted_model import AdaptedModel, top_k
from lightning_metanas.data.errors import DataError
from lightning_metanas.data.folder import IMAGE_SUFFIXES
from lightning_metanas.errors import SettingsError, require_int, run_main


def parse(args: Optional[list[str]] = None):
    parser = ArgumentParser(description="Classify images with a model saved by adapt.py --save.")
    parser.add_argument("--model", type=str, required=True, help="A model file written by adapt.py --save.")
    parser.add_argument("inputs", type=str, nargs="+", help="Image files and folders (searched recursively).")
    parser.add_argument("--top_k", type=int, default=1, help="Most probable classes to report per image.")
    parser.add_argument("--batch_size", type=int, default=64, help="Images per forward pass (results do not depend on it).")
    parser.add_argument("--out", type=Optional[str], default=None, help="Write the predictions as CSV (.csv) or JSON.")
    return parser.parse_args(args)


def image_files(inputs: list[str]) -> list[Path]:
    """The files named, and the image files under the folders named (sorted), in order."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.exists() or path.is_symlink():
            found.append(path)
        else:
            raise SettingsError(f"{item}: no such file or folder")
    if not found:
        raise SettingsError(f"no image files in {', '.join(inputs)} (suffixes: {', '.join(sorted(IMAGE_SUFFIXES))})")
    return found


def predict(model: AdaptedModel, files: list[Path], k: int, batch_size: int) -> list[dict]:
    """One row per file, in order: its top-``k`` classes and probabilities, or its error."""
    rows: list[dict] = [{"file": str(f)} for f in files]
    tensors, where = [], []
    for i, path in enumerate(files):
        try:
            tensors.append(model.preprocessing(path))
            where.append(i)
        except DataError as err:
            rows[i]["error"] = str(err)
    if tensors:
        logits = model.logits(torch.stack(tensors), batch_size)
        for i, best in zip(where, top_k(logits, model.class_names, k)):
            rows[i] |= {"prediction": best[0][0], "probability": best[0][1], "top_k": best}
    return rows


def write(rows: list[dict], out: Path, k: int) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() != ".csv":
        out.write_text(json.dumps(rows, indent=1) + "\n")
        return
    with open(out, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "prediction", "probability"]
                        + [c for j in range(2, k + 1) for c in (f"class_{j}", f"probability_{j}")] + ["error"])
        for row in rows:
            ranked = row.get("top_k", [])
            extra = [v for name, p in ranked[1:] for v in (name, f"{p:.6f}")]
            extra += [""] * (2 * (k - 1) - len(extra))
            probability = f"{row['probability']:.6f}" if "probability" in row else ""
            writer.writerow([row["file"], row.get("prediction", ""), probability, *extra, row.get("error", "")])


def main(args: Optional[list[str]] = None) -> int:
    cli = parse(args)
    k, batch_size = require_int("--top_k", cli.top_k), require_int("--batch_size", cli.batch_size)
    model = AdaptedModel.load(cli.model)
    rows = predict(model, image_files(cli.inputs), k, batch_size)
    for row in rows:
        if "error" in row:
            print(f"{row['file']}\terror: {row['error']}")
        else:
            print(f"{row['file']}\t{row['prediction']}\t{row['probability']:.4f}"
                  + "".join(f"\t{name} {p:.4f}" for name, p in row["top_k"][1:]))
    if cli.out:
        write(rows, Path(cli.out), k)
    failed = [r["file"] for r in rows if "error" in r]
    if failed:
        print(f"error: {len(failed)} of {len(rows)} file(s) could not be read: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def cli_main(args: Optional[list[str]] = None) -> int:
    status = [0]

    def body() -> None:
        status[0] = main(args)

    return run_main(body) or status[0]


if __name__ == "__main__":
    sys.exit(cli_main())
