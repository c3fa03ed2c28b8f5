"""One HTML page per run: the plots, the best architecture, the search and the meta-test result.

    python -m lightning_metanas.report runs/search_quick/version_0
    python -m lightning_metanas.report runs/search_quick/version_0 --regenerate --out /tmp/r.html

RUN_DIR is a run folder (``runs/<name>/version_N``: ``config.yaml``, ``metrics.csv``,
``checkpoints/``) or its ``checkpoints/`` folder. Read when present: ``config.yaml``,
``metrics.csv``, ``test_result.json`` (written by train.py after meta-testing), and next to the
checkpoints ``best_arch.json``, ``search_history.json``, ``scored.json`` and the PNG plots
(drawn again from the JSON files when missing, or always with ``--regenerate``). Writes
``RUN_DIR/report.html``: plain HTML and CSS, images embedded, no script and no network
resource, so it opens anywhere, also offline and as an e-mail attachment.
"""
from __future__ import annotations

import argparse
import base64
import csv
import datetime
import html
import json
import re
import sys
from pathlib import Path
from typing import Any, Optional

import yaml

from lightning_metanas import plots
from lightning_metanas.errors import SettingsError

SCORED = "scored.json"
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


def read_metrics(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def read_run(run_dir: str | Path) -> dict[str, Any]:
    """Everything the report shows, from files only."""
    run, out = run_dirs(run_dir)
    config = None
    if (run / "config.yaml").is_file():
        config = yaml.safe_load((run / "config.yaml").read_text())
    found = {
        "run_dir": run,
        "out_dir": out,
        "config": config,
        "config_text": (run / "config.yaml").read_text() if config is not None else None,
        "metrics": read_metrics(run / "metrics.csv"),
        "best_arch": _json(out / "best_arch.json"),
        "history": _json(out / "search_history.json") or [],
        "scored": _json(out / SCORED),
        "test": _json(run / TEST_RESULT),
    }
    if not any(found[k] for k in ("config", "metrics", "best_arch", "history", "scored", "test")):
        raise ReportError(
            f"{run} holds none of config.yaml, metrics.csv, {TEST_RESULT}, checkpoints/best_arch.json, "
            f"checkpoints/search_history.json, checkpoints/{SCORED}: is it a run folder "
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


def _evolution_settings(config: Optional[dict]) -> Optional[dict]:
    callbacks = _nested(config, "trainer", "callbacks") or []
    if isinstance(callbacks, dict):
        callbacks = [callbacks]
    for cb in callbacks:
        if isinstance(cb, dict) and str(cb.get("class_path", "")).endswith("EvolutionCallback"):
            return _nested(cb, "init_args", "evolution")
    return None


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
        "best_arch": out / plots.BEST_ARCH,
    }
    if history or scored or best:
        missing = regenerate or not all(p.is_file() for p in expected.values())
        if missing:
            rows = (scored or {}).get("archive", [])
            ways = (scored or {}).get("ways") or _nested(found["config"], "data", "ways")
            size = (scored or {}).get("image_size") or _nested(found["config"], "data", "image_size")
            channels = (scored or {}).get("image_channels")
            shape = f"{size}x{size}" if size else None
            if shape and channels:
                shape = f"{channels}x{shape}"
            best = best or (scored or {}).get("best")
            plots.write_search_plots(out, history, rows, best=best, ways=ways, input_shape=shape)
        images.update({k: p for k, p in expected.items() if p.is_file()})
    if found["metrics"]:
        images["training_curves"] = plots.plot_training_curves(found["metrics"], out / plots.TRAINING_CURVES)
    return images


# -- HTML -------------------------------------------------------------------------------------
CSS = """
body { font-family: "DejaVu Sans", Helvetica, Arial, sans-serif; margin: 0; background: #f4f5f7; color: #222; }
header { background: #2d3e50; color: white; padding: 18px 32px; }
header h1 { margin: 0 0 4px 0; font-size: 24px; }
header .sub { color: #c8d2dc; font-size: 13px; }
main { padding: 16px 32px 40px 32px; max-width: 1200px; }
section { background: white; border-radius: 8px; padding: 14px 20px; margin: 16px 0;
          box-shadow: 0 1px 3px rgba(0,0,0,0.12); }
h2 { font-size: 18px; margin: 4px 0 12px 0; color: #2d3e50; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; }
.card { background: white; border-radius: 8px; padding: 12px 18px; min-width: 170px;
        box-shadow: 0 1px 3px rgba(0,0,0,0.12); }
.card .label { font-size: 12px; color: #666; text-transform: uppercase; letter-spacing: 0.04em; }
.card .value { font-size: 24px; font-weight: bold; color: #2d3e50; }
.card .note { font-size: 12px; color: #666; }
.grid { display: flex; flex-wrap: wrap; gap: 12px; }
.grid figure { margin: 0; flex: 1 1 460px; }
figure img { max-width: 100%; border: 1px solid #e1e4e8; border-radius: 4px; }
figcaption { font-size: 12px; color: #555; margin-top: 4px; }
table { border-collapse: collapse; font-size: 13px; margin: 4px 0; }
th, td { border-bottom: 1px solid #e1e4e8; padding: 4px 10px; text-align: left; }
th { background: #f0f2f5; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
code, pre { font-family: "DejaVu Sans Mono", monospace; font-size: 12px; }
pre { background: #f6f8fa; padding: 10px; overflow-x: auto; border-radius: 4px; }
.muted { color: #777; }
.best { background: #fff6d6; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _num(value: Any, digits: int = 3) -> str:
    if value is None or value == "":
        return "&ndash;"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 1000:
        return f"{value:,}"
    return _e(value)


def _pct(value: Optional[float]) -> str:
    return "&ndash;" if value is None else f"{100 * value:.2f}%"


def _image(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{_e(alt)}">'


_NUMBER = re.compile(r"^(&plusmn; )?[-+]?[0-9][0-9,.]*%?$")


def _table(header: list[str], rows: list[list[str]], highlight: Optional[int] = None, numeric: bool = True) -> str:
    head = "".join(f"<th>{h}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cells = "".join(f'<td class="num">{c}</td>' if numeric and _NUMBER.match(c) else f"<td>{c}</td>" for c in row)
        body.append(f'<tr{" class=best" if i == highlight else ""}>{cells}</tr>')
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _card(label: str, value: str, note: str = "") -> str:
    return (f'<div class="card"><div class="label">{_e(label)}</div><div class="value">{value}</div>'
            f'<div class="note">{note}</div></div>')


def _last(metrics: list[dict[str, str]], key: str) -> Optional[float]:
    values = [float(r[key]) for r in metrics if r.get(key) not in (None, "")]
    return values[-1] if values else None


def _max(metrics: list[dict[str, str]], key: str) -> Optional[float]:
    values = [float(r[key]) for r in metrics if r.get(key) not in (None, "")]
    return max(values) if values else None


def _arch_str(arch: Optional[dict]) -> str:
    return plots.arch_label(arch) if arch else "&ndash;"


def render(found: dict[str, Any], images: dict[str, Path]) -> str:
    config, metrics, history = found["config"], found["metrics"], found["history"]
    scored, best, test = found["scored"] or {}, found["best_arch"], found["test"]
    best = best or scored.get("best")
    run: Path = found["run_dir"]
    data = _nested(config, "data") or {}
    ways, shots = (test or {}).get("ways") or data.get("ways"), (test or {}).get("shots") or data.get("shots")
    task = f"{ways}-way {shots}-shot" if ways and shots else ""
    title = f"{_e(data.get('dataset', 'run'))} {_e(task)}".strip()
    rows = scored.get("archive", [])
    best_row = next((r for r in rows if best and r["arch"] == {"ops": list(best["ops"]), "widths": list(best["widths"])}), None)

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>lightning_metanas report: {_e(run)}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<header><h1>Across-task NAS run: {title}</h1>",
        f'<div class="sub">{_e(run.resolve())} &middot; report written '
        f"{datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}</div></header><main>",
    ]

    # headline numbers
    cards = []
    if test:
        note = f"&plusmn; {_pct(test.get('acc_ci95'))} (95%), {_e(test.get('tasks'))} tasks"
        cards.append(_card("meta-test accuracy", _pct(test.get("acc")), note))
    else:
        cards.append(_card("meta-test accuracy", "&ndash;", "no test_result.json (run with --test=true)"))
    val = _max(metrics, "val/acc")
    if val is not None:
        cards.append(_card("best validation accuracy", _pct(val), f"last {_pct(_last(metrics, 'val/acc'))}"))
    if history:
        cards.append(_card("best search score", _num(history[-1]["best_score"]),
                           f"mean {_num(history[-1]['mean_score'])} at generation {history[-1]['generation']}"))
        cards.append(_card("generations", str(len(history)),
                           f"{len(rows)} architectures scored" if rows else ""))
    if best_row:
        cards.append(_card("best architecture size", _num(best_row["params"]) + " params",
                           f"{_num(best_row['flops'])} MACs per image"))
    parts.append(f'<div class="cards">{"".join(cards)}</div>')

    # best architecture
    if best:
        layers = [[str(i + 1), _e(op), str(w)] for i, (op, w) in enumerate(zip(best["ops"], best["widths"]))]
        parts.append("<section><h2>Best architecture</h2>")
        parts.append(f"<p><code>{_e(_arch_str(best))}</code></p>")
        if "best_arch" in images:
            parts.append(f"<figure>{_image(images['best_arch'], 'best architecture')}</figure>")
        parts.append(_table(["layer", "operation", "channels"], layers))
        if test and test.get("arch") and test["arch"] != {"ops": list(best["ops"]), "widths": list(best["widths"])}:
            parts.append(f'<p class="muted">Meta-tested architecture (from the best checkpoint): '
                         f"<code>{_e(_arch_str(test['arch']))}</code></p>")
        parts.append("</section>")

    # plots
    figures = [
        ("search_curve", "Best and mean score of the population per generation (and the predictor's Kendall tau)."),
        ("accuracy_vs_params", "Score vs parameters of every architecture scored (its latest score, "
                               "measured with the weights of the generation that scored it); the Pareto front in red."),
        ("accuracy_vs_flops", "Score vs multiply-accumulates per image; the Pareto front in red."),
        ("predicted_vs_measured", "The predictor's estimate against the score then measured."),
        ("training_curves", "Meta-training loss and accuracy, validation accuracy (from metrics.csv)."),
    ]
    shown = [(k, c) for k, c in figures if k in images]
    if shown:
        parts.append('<section><h2>Plots</h2><div class="grid">')
        for key, caption in shown:
            parts.append(f"<figure>{_image(images[key], key)}<figcaption>{_e(caption)}</figcaption></figure>")
        parts.append("</div></section>")

    # the population and the front
    if scored.get("population"):
        population = sorted(scored["population"], key=lambda r: r["score"], reverse=True)
        table_rows = [[_e(r["architecture"]), _num(r["score"]), _num(r.get("predicted")),
                       _num(r.get("params")), _num(r.get("flops")), _e(r.get("born", ""))] for r in population]
        parts.append(f"<section><h2>Final population (generation {_e(scored.get('generation'))})</h2>")
        parts.append(_table(["architecture", "score", "predicted", "params", "MACs", "born"], table_rows, highlight=0))
        parts.append("</section>")
    if rows:
        front = [rows[i] for i in plots.pareto_front([(r["params"], r["score"]) for r in rows])]
        parts.append(f"<section><h2>Pareto front: score vs parameters ({len(front)} of {len(rows)})</h2>")
        parts.append(_table(["architecture", "score", "params", "MACs"],
                            [[_e(r["architecture"]), _num(r["score"]), _num(r["params"]), _num(r["flops"])]
                             for r in front]))
        pairs = plots.predicted_pairs(rows)
        tau = plots.kendall_tau(*zip(*pairs)) if len(pairs) >= 2 else None
        parts.append(f'<p class="muted">Predictor: {len(pairs)} architectures had a prediction'
                     + (f", Kendall tau between predicted and measured {tau:.2f}" if tau is not None else "")
                     + ".</p></section>")

    # the search, generation by generation
    if history:
        table_rows = [[str(h["generation"]), _num(h["best_score"]), _num(h["mean_score"]), _num(h.get("diversity")),
                       _num(h.get("real_scorings")), _num(h.get("predictor_tau")),
                       f"<code>{_e(_arch_str(h.get('best_arch')))}</code>"] for h in history]
        parts.append("<section><h2>Search history</h2>")
        parts.append(_table(["generation", "best", "mean", "diversity", "scored", "predictor tau", "best architecture"],
                            table_rows))
        parts.append("</section>")

    # meta-test and settings
    if test:
        parts.append("<section><h2>Meta-test</h2>")
        parts.append(_table(["accuracy", "95% interval", "tasks", "ways", "shots", "architecture"],
                            [[_pct(test.get("acc")), "&plusmn; " + _pct(test.get("acc_ci95")), _num(test.get("tasks")),
                              _num(test.get("ways")), _num(test.get("shots")),
                              f"<code>{_e(_arch_str(test.get('arch')))}</code>"]]))
        parts.append("</section>")
    if config is not None:
        evolution = _evolution_settings(config) or {}
        meta = _nested(config, "model", "meta") or {}
        space = _nested(config, "model", "search_space") or {}
        settings = [
            ("dataset", data.get("dataset")), ("task", task), ("queries per class", data.get("queries")),
            ("meta-batch size", data.get("meta_batch_size")), ("epochs", _nested(config, "trainer", "max_epochs")),
            ("meta-gradient", meta.get("meta_gradient")), ("inner steps (train / eval)",
                                                           f"{meta.get('inner_steps')} / {meta.get('eval_inner_steps')}"),
            ("operations", ", ".join(space.get("ops", []))), ("widths", space.get("widths")),
            ("depths", space.get("depths")), ("population / offspring",
                                              f"{evolution.get('population_size')} / {evolution.get('offspring')}"
                                              if evolution else None),
            ("selection", evolution.get("selection")), ("tasks per score", evolution.get("tasks_per_score")),
            ("seed", config.get("seed_everything")),
        ]
        parts.append("<section><h2>Settings</h2>")
        parts.append(_table(["setting", "value"], [[_e(k), _e(v)] for k, v in settings if v not in (None, "", [])],
                            numeric=False))
        parts.append(f"<details><summary>config.yaml</summary><pre>{_e(found['config_text'])}</pre></details>")
        parts.append("</section>")
    parts.append("</main></body></html>")
    return "\n".join(parts) + "\n"


def write_report(
    run_dir: str | Path,
    out: Optional[str | Path] = None,
    test_result: Optional[dict] = None,
    regenerate: bool = False,
) -> Path:
    """Write the report of ``run_dir`` (default ``RUN_DIR/report.html``) and return its path.
    ``test_result`` (acc, acc_ci95, tasks, ways, shots, arch) overrides ``test_result.json``."""
    found = read_run(run_dir) if test_result is None else _read_with_test(run_dir, test_result)
    images = ensure_plots(found, regenerate=regenerate)
    path = Path(out) if out is not None else found["run_dir"] / REPORT
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(found, images), encoding="utf-8")
    return path


def _read_with_test(run_dir: str | Path, test_result: dict) -> dict[str, Any]:
    try:
        found = read_run(run_dir)
    except ReportError:
        run, out = run_dirs(run_dir)
        found = {"run_dir": run, "out_dir": out, "config": None, "config_text": None, "metrics": [],
                 "best_arch": None, "history": [], "scored": None, "test": None}
    found["test"] = test_result
    return found


def main(argv: Optional[list[str]] = None) -> Path:
    parser = argparse.ArgumentParser(
        prog="python -m lightning_metanas.report",
        description="Write an HTML report (plots, best architecture, search, meta-test) of a run folder.",
    )
    parser.add_argument("run_dir", help="a run folder, e.g. runs/search_quick/version_0 (or its checkpoints/)")
    parser.add_argument("--out", default=None, help="where to write the page (default: RUN_DIR/report.html)")
    parser.add_argument("--regenerate", action="store_true",
                        help="draw the search plots again from the JSON files even if the PNGs exist")
    args = parser.parse_args(argv)
    path = write_report(args.run_dir, out=args.out, regenerate=args.regenerate)
    print(f"report: {path}")
    return path


if __name__ == "__main__":
    try:
        main()
    except SettingsError as err:
        sys.exit(f"error: {err}")
