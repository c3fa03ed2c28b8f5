"""One HTML page per run: the plots, the best architecture, the search and the meta-test result.

    python -m lightning_metanas.report runs/search_quick/version_0
    python -m lightning_metanas.report runs/search_quick/version_0 --regenerate --out /tmp/r.html

RUN_DIR is a run folder (``runs/<name>/version_N``: ``config.yaml``, ``metrics.csv``,
``checkpoints/``) or its ``checkpoints/`` folder. Read when present: ``config.yaml``,
``metrics.csv``, ``test_result.json`` (written by train.py after meta-testing), and next to the
checkpoints ``best_arch.json``, ``search_history.json``, ``scored.json``, ``why.json`` and the PNG plots
(drawn again from the JSON files when missing, or always with ``--regenerate``). Writes
``RUN_DIR/report.html``: plain HTML and CSS, images embedded, no script and no network
resource, so it opens anywhere, also offline and as an e-mail attachment.

Why one module of ~300 lines: reading a run folder, the page's context and the command line
serve one page (its markup is ``templates/report.html``).
"""
from __future__ import annotations

import base64
import csv
import datetime
import json
import sys
from pathlib import Path
from typing import Any, Optional

import jinja2
from jsonargparse import ArgumentParser
import yaml

from lightning_metanas import plots
from lightning_metanas.errors import SettingsError, run_main
from lightning_metanas.metrics import kendall_tau
from lightning_metanas.search_files import BEST_ARCH, HISTORY, SCORED, WHY, accuracy_cost_front
from lightning_metanas.search_space import Architecture

TEST_RESULT = "test_result.json"
REPORT = "report.html"


class ReportError(SettingsError):
    """A run directory that cannot be reported on, with what was expected."""


# -- reading a run --------------------------------------------------------------------------
def run_dirs(path: str | Path) -> tuple[Path, Path]:
    """(run directory, folder of the search outputs) for a run folder or its checkpoints/."""
    path = Path(path)
    if not path.is_dir():
        raise ReportError(f"run directory {path} does not exist (expected runs/<name>/version_N)")
    if path.name == "checkpoints":
        return path.parent, path
    checkpoints = path / "checkpoints"
    return path, checkpoints if checkpoints.is_dir() else path


def _json(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ReportError(f"{path} is not valid JSON: {err}") from None


RESUMED_FROM = "resumed_from.json"


def read_metrics(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def write_resume_record(run_dir: Path, checkpoint: Path, step: int) -> None:
    """Note in a resumed run's folder which run it continues and from which step, so its report
    and curves cover the whole run (``run_metrics``)."""
    previous = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    if previous.resolve() != run_dir.resolve():
        (run_dir / RESUMED_FROM).write_text(json.dumps({"run": str(previous), "step": step}) + "\n")


def run_metrics(run: Path, seen: Optional[set] = None) -> list[dict[str, str]]:
    """``metrics.csv`` of ``run``, preceded, for a resumed run, by the rows of the run it
    resumed (and so on back) logged before the step it resumed from."""
    rows = read_metrics(run / "metrics.csv")
    record = _json(run / RESUMED_FROM)
    seen = seen or {run.resolve()}
    if record is None or Path(record["run"]).resolve() in seen:
        return rows
    previous = Path(record["run"])
    seen.add(previous.resolve())
    earlier = [r for r in run_metrics(previous, seen) if not r.get("step") or float(r["step"]) < record["step"]]
    return earlier + rows


def read_run(run_dir: str | Path, test: Optional[dict] = None) -> dict[str, Any]:
    """Everything the report shows, from files only; ``test`` (a ``test_result`` record)
    stands for ``test_result.json``."""
    run, out = run_dirs(run_dir)
    config = None
    if (run / "config.yaml").is_file():
        config = yaml.safe_load((run / "config.yaml").read_text())
    found = {
        "run_dir": run,
        "out_dir": out,
        "config": config,
        "config_text": (run / "config.yaml").read_text() if config is not None else None,
        "metrics": run_metrics(run),
        "best_arch": _json(out / BEST_ARCH),
        "history": _json(out / HISTORY) or [],
        "scored": _json(out / SCORED),
        "why": _json(out / WHY),
        "test": test if test is not None else _json(run / TEST_RESULT),
    }
    if not any(found[k] for k in ("config", "metrics", "best_arch", "history", "scored", "test")):
        raise ReportError(
            f"{run} holds none of config.yaml, metrics.csv, {TEST_RESULT}, checkpoints/{BEST_ARCH}, "
            f"checkpoints/{HISTORY}, checkpoints/{SCORED}: is it a run folder "
            "(runs/<name>/version_N)?"
        )
    return found


def _nested(config: Optional[dict], *keys: str) -> Any:
    node: Any = config
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


# -- plots ------------------------------------------------------------------------------------
def ensure_plots(found: dict[str, Any], regenerate: bool = False) -> dict[str, Path]:
    """The PNGs the report shows: the search plots (drawn from the JSON files when absent or
    when ``regenerate``) and the training curves (drawn from metrics.csv)."""
    out: Path = found["out_dir"]
    images: dict[str, Path] = {}
    scored, history, best = found["scored"], found["history"], found["best_arch"]
    expected = {
        "search_curve": out / plots.SEARCH_CURVE,
        "predicted_vs_measured": out / plots.PREDICTED_VS_MEASURED,
        "accuracy_vs_params": out / plots.ACCURACY_VS_SIZE.format(size="params"),
        "accuracy_vs_flops": out / plots.ACCURACY_VS_SIZE.format(size="flops"),
        "best_arch": out / plots.BEST_ARCH_PNG,
    }
    if history or scored or best:
        missing = regenerate or not all(p.is_file() for p in expected.values())
        if missing:
            rows = (scored or {}).get("archive", [])
            ways = (scored or {}).get("ways") or _nested(found["config"], "data", "ways")
            size = (scored or {}).get("image_size") or _nested(found["config"], "data", "image_size")
            shape = plots.input_shape(size, (scored or {}).get("image_channels"))
            best = best or (scored or {}).get("best")
            plots.write_search_plots(out, history, rows, best=best, ways=ways, input_shape=shape)
        images.update({k: p for k, p in expected.items() if p.is_file()})
    if found["metrics"]:
        images["training_curves"] = plots.plot_training_curves(found["metrics"], out / plots.TRAINING_CURVES)
    return images


# -- the page -------------------------------------------------------------------------------
FIGURES = [  # (image, caption), in the order the page shows them
    ("search_curve", "Best and mean score of the population per generation (and the predictor's Kendall tau)."),
    ("accuracy_vs_params", "Score vs parameters of every architecture scored (its latest score, "
                           "measured with the weights of the generation that scored it); the Pareto front in red."),
    ("accuracy_vs_flops", "Score vs multiply-accumulates per image; the Pareto front in red."),
    ("predicted_vs_measured", "The predictor's estimate against the score then measured."),
    ("training_curves", "Meta-training loss and accuracy, validation accuracy (from metrics.csv)."),
]


def test_result(result: dict, ways: int, shots: int, arch: Architecture) -> dict:
    """``test_result.json``'s record of a meta-test (``MetaNASModule.last_result["test"]``),
    written by train.py and read by the report: the run's own figure (``acc``, under its
    ``norm``), and the figure under each normalisation (``acc_transductive``: query batch
    statistics, MAML's protocol; ``acc_support``: each image alone, as deployed)."""
    extra = {k: v for k, v in result.items() if k.startswith("acc_") and k != "acc_ci95"}
    return {"acc": result["acc"], "acc_ci95": result["acc_ci95"], "tasks": int(result["tasks"]),
            "norm": result.get("norm", "transductive"), **extra,
            "ways": ways, "shots": shots, "arch": arch.to_dict()}


def _label(arch: Optional[dict]) -> str:
    return str(Architecture.of(arch)) if arch else "\u2013"


def _num(value: Any) -> str:
    if value is None or value == "":
        return "\u2013"
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 1000:
        return f"{value:,}"
    return str(value)


def _shown_path(path: Path) -> str:
    """The run folder as a reader would type it: relative to the working directory when inside it."""
    resolved = path.resolve()
    try:
        return str(resolved.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(resolved)


def _budget_text(budget: dict) -> Optional[str]:
    names = {"max_params": "parameters", "max_flops": "MACs per image", "max_latency_ms": "ms per image",
             "max_latency_vs_reference": "× the reference network's time per image"}
    parts = [f"{names[k]} ≤ {v:,g}" for k, v in budget.items() if k in names]
    if "latency_bound_ms" in budget:  # a relative bound, in this run's milliseconds
        parts.append(f"{budget['latency_bound_ms']:,g} ms here (the reference: {budget['reference_latency_ms']:,g} ms)")
    return ", ".join(parts) or None


def _pct(value: Optional[float]) -> str:
    return "\u2013" if value is None else f"{100 * value:.2f}%"


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def why_context(why: Optional[dict]) -> Optional[dict]:
    """``why.json`` with each layer's rank of importance, and the layers in that order."""
    if not why:
        return None
    rank = {number: i + 1 for i, number in enumerate(why["importance"])}
    layers = [dict(layer, rank=rank[layer["layer"]]) for layer in why["layers"]]
    return dict(why, layers=layers, ranked=sorted(layers, key=lambda layer: layer["rank"]))


def context(found: dict[str, Any], images: dict[str, Path]) -> dict[str, Any]:
    """What the template shows, from the run's files (``read_run``) and plots: raw numbers,
    architectures with their labels."""
    config, test, scored = found["config"], found["test"], found["scored"] or {}
    data = _nested(config, "data") or {}
    ways, shots = (test or {}).get("ways") or data.get("ways"), (test or {}).get("shots") or data.get("shots")
    best = found["best_arch"] or scored.get("best")
    best = Architecture.of(best) if best else None
    archive = scored.get("archive", [])
    pairs = plots.predicted_pairs(archive)
    val = [float(r["val/acc"]) for r in found["metrics"] if r.get("val/acc") not in (None, "")]
    search = _nested(config, "search") or {}
    meta = _nested(config, "model", "meta") or {}
    space = _nested(config, "model", "search_space") or {}
    task = f"{ways}-way {shots}-shot" if ways and shots else ""
    settings = [
        ("dataset", data.get("dataset")), ("task", task), ("queries per class", data.get("queries")),
        ("meta-batch size", data.get("meta_batch_size")), ("epochs", _nested(config, "trainer", "max_epochs")),
        ("meta-gradient", meta.get("meta_gradient")),
        ("inner steps (train / eval)", f"{meta.get('inner_steps')} / {meta.get('eval_inner_steps')}" if meta else None),
        ("operations", ", ".join(space.get("ops", []))), ("widths", space.get("widths")), ("depths", space.get("depths")),
        ("population / offspring", f"{search.get('population_size')} / {search.get('offspring')}" if search else None),
        ("selection", search.get("selection")), ("strategy", search.get("strategy")),
        ("tasks per score", search.get("tasks_per_score")), ("size prior", search.get("size_prior")),
        ("cost budget", _budget_text(scored.get("budget") or {})), ("seed", (config or {}).get("seed_everything")),
    ]
    tested = Architecture.of(test["arch"]) if test and test.get("arch") else None
    return {
        "title": f"{data.get('dataset', 'run')} {task}".strip(),
        "run": _shown_path(found["run_dir"]),
        "written": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "test": test and dict(test, label=_label(test.get("arch"))),
        "val_best": max(val) if val else None,
        "val_last": val[-1] if val else None,
        "history": [dict(h, label=_label(h.get("best_arch"))) for h in found["history"]],
        "best": best and {"label": str(best), "layers": list(zip(best.ops, best.widths)),
                          "tested": str(tested) if tested and tested != best else None},
        "best_row": next((r for r in archive if best and Architecture.of(r["arch"]) == best), None),
        "why": why_context(found["why"]),
        "images": {name: _data_uri(path) for name, path in images.items()},
        "figures": [{"name": name, "src": _data_uri(images[name]), "caption": caption}
                    for name, caption in FIGURES if name in images],
        "generation": scored.get("generation"),
        "population": sorted(scored.get("population", []), key=lambda r: r["score"], reverse=True),
        "archive": archive,
        "front": accuracy_cost_front(archive) if archive and "accuracy" in archive[0] else
                 [archive[i] for i in plots.pareto_front([(r["params"], r["score"]) for r in archive])],
        "budget": scored.get("budget") or {},
        "budget_text": _budget_text(scored.get("budget") or {}),
        "predicted": len(pairs),
        "tau": kendall_tau(*zip(*pairs)) if pairs else None,
        "settings": [(k, v) for k, v in settings if v not in (None, "", [])] if config is not None else [],
        "config_text": found["config_text"],
    }


def render(found: dict[str, Any], images: dict[str, Path]) -> str:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"), autoescape=True,
        undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
    )
    environment.filters.update(num=_num, pct=_pct)
    return environment.get_template("report.html").render(context(found, images))


def write_report(
    run_dir: str | Path, out: Optional[str | Path] = None, test: Optional[dict] = None, regenerate: bool = False,
) -> Path:
    """Write the report of ``run_dir`` (default ``RUN_DIR/report.html``) and return its path.
    ``test`` (a ``test_result`` record) stands for ``test_result.json``."""
    found = read_run(run_dir, test)
    images = ensure_plots(found, regenerate=regenerate)
    path = Path(out) if out is not None else found["run_dir"] / REPORT
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(found, images), encoding="utf-8")
    return path


def main(argv: Optional[list[str]] = None) -> Path:
    parser = ArgumentParser(
        prog="python -m lightning_metanas.report",
        description="Write an HTML report (plots, best architecture, search, meta-test) of a run folder.",
    )
    parser.add_argument("run_dir", type=str, help="a run folder, e.g. runs/search_quick/version_0 (or its checkpoints/)")
    parser.add_argument("--out", type=Optional[str], default=None, help="where to write the page (default: RUN_DIR/report.html)")
    parser.add_argument("--regenerate", type=bool, default=False,
                        help="draw the search plots again from the JSON files even if the PNGs exist")
    args = parser.parse_args(argv)
    path = write_report(args.run_dir, out=args.out, regenerate=args.regenerate)
    print(f"report: {path}")
    return path


if __name__ == "__main__":
    sys.exit(run_main(main))
