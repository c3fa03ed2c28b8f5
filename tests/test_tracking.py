"""Tracking of a search: W&B offline run files, PNGs, scored.json and the report after real
(tiny, synthetic) train.py runs in subprocesses, and the scoring progress helper."""
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_metanas.search_space import Architecture
from tests.test_train import ROOT, SEARCH, SYNTHETIC

PNGS = ["search_curve.png", "predicted_vs_measured.png", "accuracy_vs_params.png",
        "accuracy_vs_flops.png", "best_arch.png"]


def train(tmp_path, *args, wandb=False):
    env = dict(os.environ, PYTHONWARNINGS="ignore", WANDB_MODE="offline" if wandb else "disabled",
               WANDB_SILENT="true", WANDB_DIR=str(tmp_path), WANDB_DATA_DIR=str(tmp_path / "wandb-data"),
               WANDB_CACHE_DIR=str(tmp_path / "wandb-cache"), WANDB_CONFIG_DIR=str(tmp_path / "wandb-config"))
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, capture_output=True,
                          text=True, env=env, timeout=600)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def wandb_records(path: Path):
    """The records of an offline run's ``run-<id>.wandb`` file: a LevelDB-style log (7-byte
    ``:W&B`` header, 32 KiB blocks of chunks with a 7-byte header: crc, length, type) of
    ``wandb.proto`` Record messages (wandb >= 0.19 no longer ships a Python reader)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:7]
    block, pos, pending, chunks = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            pos += left
            continue
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 1:  # full
            chunks.append(chunk)
        elif kind == 2:  # first
            pending = chunk
        elif kind == 3:  # middle
            pending += chunk
        elif kind == 4:  # last
            chunks.append(pending + chunk)
    records = []
    for chunk in chunks:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(chunk)
        records.append(record)
    return records


def offline_wandb_run(tmp_path, *args):
    """train.py with an offline W&B run: the run's file, its records, and its history records."""
    train(tmp_path, *args, wandb=True)
    (run_file,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    records = wandb_records(run_file)
    return run_file, records, [r.history for r in records if r.WhichOneof("record_type") == "history"]


def key(item) -> str:
    return "/".join(item.nested_key) if item.nested_key else item.key


@pytest.mark.slow
def test_offline_wandb_run_holds_population_curve_scatter_front_and_artifact(tmp_path):
    # configs/wandb.yaml itself: a W&B run beside the run's own CSV logger, under its name
    args = [*SEARCH, "--config", str(ROOT / "configs" / "wandb.yaml"), *SYNTHETIC, "--trainer.max_epochs=3",
            f"--trainer.logger.init_args.save_dir={tmp_path}", "--trainer.logger.init_args.name=metanas",
            # let the predictor steer from the second generation on, whatever its tau on 6 points
            "--search.predictor.min_tau=-1"]
    run_file, records, history = offline_wandb_run(tmp_path, *args)
    logged = {key(item) for h in history for item in h.item}
    # per generation: the population table, the search curve, the scatter, the front, the PNGs
    for name in ("search/population/_type", "search/curve_table/_type",
                 "search/predicted_vs_measured_table/_type", "search/front_table/_type",
                 "search/plots/search_curve/_type", "search/plots/best_arch/_type",
                 "search/plots/accuracy_vs_params/_type", "search/best_score", "train/loss", "val/acc",
                 "test/acc"):
        assert name in logged, name
    generations = [h for h in history if any(key(i) == "search/population/_type" for i in h.item)]
    assert len(generations) == 3
    config = {}
    for r in records:
        if r.WhichOneof("record_type") == "config":
            for item in r.config.update:
                config[key(item)] = json.loads(item.value_json)
    # custom charts: a line series for the curve, scatters for the predictor and the front
    assert config["_wandb/visualize/search/curve"]["panel_config"]["panelDefId"] == "wandb/lineseries/v0"
    for chart in ("predicted_vs_measured", "front"):
        assert config[f"_wandb/visualize/search/{chart}"]["panel_config"]["panelDefId"] == "wandb/scatter/v0"
    # the full LightningCLI configuration, the search's settings included
    assert config["trainer"]["max_epochs"] == 3
    assert config["search"]["population_size"] == 4 and config["search"]["predictor"]["min_tau"] == -1
    assert config["tracking"] == {"plots": True, "wandb_media": True, "log_config": True, "report": True}
    assert config["data"]["dataset"] == "synthetic" and config["model"]["meta"]["meta_gradient"] == "first_order"

    run_dir = tmp_path / "metanas" / "version_0"
    best = json.loads((run_dir / "checkpoints" / "best_arch.json").read_text())
    artifacts = [r.artifact for r in records
                 if r.WhichOneof("record_type") == "artifact" and r.artifact.type == "architecture"]
    assert len(artifacts) == 3 and "latest" in artifacts[-1].aliases
    assert artifacts[-1].name.startswith("best_arch-") and "generation-2" in artifacts[-1].aliases
    (entry,) = artifacts[-1].manifest.contents
    assert entry.path == "best_arch.json"
    assert json.loads(Path(entry.local_path).read_text()) == best  # inside the W&B run folder
    assert run_file.parent in Path(entry.local_path).parents
    assert json.loads(artifacts[-1].metadata)["architecture"] == str(Architecture.of(best))

    # the population table's file: the documented columns, one row per member
    files = run_file.parent / "files"
    (table,) = [p for p in files.glob("media/table/search/population_*.table.json")
                if json.loads(p.read_text())["data"][0][0] == 2]
    table = json.loads(table.read_text())
    assert table["columns"] == ["generation", "architecture", "accuracy", "score", "predicted", "params", "flops", "born"]
    assert len(table["data"]) == 4
    scatter = [json.loads(p.read_text()) for p in files.glob("media/table/search/predicted_vs_measured_table_*.json")]
    assert scatter and scatter[0]["columns"] == ["architecture", "predicted", "measured"]
    assert any(t["data"] for t in scatter)  # the predictor steered at least one generation

    # the same run also left the local files (CSVLogger first in the list)
    for name in PNGS:
        assert (run_dir / "checkpoints" / name).is_file(), name
    assert (run_dir / "report.html").is_file() and (run_dir / "test_result.json").is_file()


@pytest.mark.slow
def test_csv_search_run_writes_pngs_scored_json_report_and_test_result(tmp_path):
    proc = train(tmp_path, *SEARCH, *SYNTHETIC, f"--trainer.logger.init_args.save_dir={tmp_path}",
                 "--trainer.logger.init_args.name=csv", "--trainer.max_epochs=3")
    run_dir = tmp_path / "csv" / "version_0"
    out = run_dir / "checkpoints"
    for name in PNGS + ["training_curves.png"]:
        assert (out / name).stat().st_size > 2000, name
    assert not list(tmp_path.glob("**/wandb"))  # no W&B files without a WandbLogger
    scored = json.loads((out / "scored.json").read_text())
    history = json.loads((out / "search_history.json").read_text())
    best = json.loads((out / "best_arch.json").read_text())
    assert scored["generation"] == history[-1]["generation"] == 2
    assert scored["best"] == best
    assert len(scored["population"]) == 4
    assert sum(h["real_scorings"] for h in history) >= len(scored["archive"]) > 4
    for row in scored["archive"]:
        assert row["params"] > 0 and row["flops"] > 0 and 0 <= row["score"] <= 1
        assert row["architecture"] == str(Architecture.of(row["arch"]))
    assert sum(r["in_population"] for r in scored["archive"]) == 4
    # train.py's meta-test result, read by the report written after meta-testing
    test = json.loads((run_dir / "test_result.json").read_text())
    assert set(test) >= {"acc", "acc_ci95", "tasks", "ways", "shots", "arch"}
    assert test["tasks"] == 6 and test["ways"] == 3 and test["shots"] == 1
    page = (run_dir / "report.html").read_text()
    assert f"{100 * test['acc']:.2f}%" in page
    assert str(Architecture.of(best)) in page
    assert "meta-test:" in proc.stdout


def test_scoring_progress_advances_a_rich_task_and_removes_it(tmp_path):
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import Callback, RichProgressBar
    from pytorch_lightning.demos.boring_classes import BoringModel

    from callbacks.progress import scoring_progress

    seen = []

    class Scores(Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            bar = trainer.progress_bar_callback
            before = len(bar.progress.tasks)
            with scoring_progress(trainer, 3, "generation 0: scoring") as advance:
                task = bar.progress.tasks[-1]
                for _ in range(3):
                    advance(1)
                seen.append((len(bar.progress.tasks) - before, task.completed, task.total))
            seen.append(len(bar.progress.tasks) - before)

    trainer = pl.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=0, logger=False,
                         enable_checkpointing=False, enable_model_summary=False,
                         callbacks=[RichProgressBar(), Scores()], default_root_dir=tmp_path)
    trainer.fit(BoringModel())
    assert seen == [(1, 3, 3), 0]

    quiet = pl.Trainer(max_epochs=1, limit_train_batches=1, logger=False, enable_progress_bar=False,
                       enable_checkpointing=False, enable_model_summary=False, default_root_dir=tmp_path)
    with scoring_progress(quiet, 5) as advance:  # no bar: a no-op
        advance(1)


@pytest.mark.slow
def test_wandb_logs_each_of_the_generations_of_one_epoch_as_its_own_step(tmp_path):
    """All generations at one epoch's end (the measured search): each is a history record of its
    own, with its own population table and ``search/generation``, and the run keeps its name."""
    args = ["--config", "configs/search_quick.yaml", *SYNTHETIC, "--trainer.max_epochs=2", "--search.warmup_epochs=0",
            "--search.generations=3", "--search.population_size=4", "--search.offspring=2", "--search.pool_size=4",
            "--search.tournament_size=2", "--search.tasks_per_score=3", "--search.score_queries=2",
            f"--trainer.logger.init_args.save_dir={tmp_path}", "--trainer.logger.init_args.name=quick",
            "--wandb.offline=true"]
    _, records, history = offline_wandb_run(tmp_path, *args)
    generations = []
    for h in history:
        items = {key(i): i.value_json for i in h.item}
        if "search/best_score" in items:
            generations.append(json.loads(items["search/generation"]))
    assert generations == [0, 1, 2]  # three steps, not one averaged
    tables = [h for h in history if any(key(i) == "search/population/_type" for i in h.item)]
    assert len(tables) == 3
    names = [r.run.display_name for r in records if r.WhichOneof("record_type") == "run"]
    assert names and names[0] == "quick/version_0"
    assert (tmp_path / "quick" / "version_0" / "report.html").is_file()
