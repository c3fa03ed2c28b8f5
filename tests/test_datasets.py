"""Image datasets on disk: the two layouts, the decoded-image cache, RGB, and the equivalence of
the folder path with Omniglot's zip path. Bad inputs through train.py: tests/test_reliability.py.

Everything runs on small generated datasets (``bench/fake_miniimagenet.py``) or a trimmed copy
of the shipped Omniglot zips, in ``tmp_path``.
"""
from __future__ import annotations

import pickle
import threading
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench.fake_miniimagenet import write_fake_dataset
from lightning_metanas.data import (
    DATASETS,
    DataError,
    EpisodicDataModule,
    decode_images,
    load_image_folder,
    read_split_layout,
)
from lightning_metanas.data.folder import image_folder_listing
from scripts.omniglot_to_folders import class_name, export
from tests.helpers import same_batches
from tests.test_data import OMNIGLOT

TASKS = dict(ways=3, shots=1, queries=2, meta_batch_size=2, train_batches=2, val_tasks=3,
             test_tasks=3, eval_batch_size=2, image_size=16)


def tiny(root: Path, layout: str = "folders", **kwargs) -> Path:
    """A small RGB dataset: 4 / 3 / 3 classes of 6 images, 20x20 JPEGs."""
    options = dict(classes=(4, 3, 3), per_class=6, size=20, workers=1) | kwargs
    return write_fake_dataset(root, layout=layout, **options)


def module(root: Path, dataset: str = "folder", **kwargs) -> EpisodicDataModule:
    dm = EpisodicDataModule(dataset=dataset, root=str(root), **(TASKS | kwargs))
    dm.setup("fit")
    return dm


def batches(dm: EpisodicDataModule) -> list:
    return [*dm.train_dataloader(), *dm.val_dataloader(), *dm.test_dataloader()]


def cache_files(root: Path) -> list[Path]:
    return sorted((root / ".cache").glob("*.u8"))


# ---------------------------------------------------------------------------------------
# the layouts
# ---------------------------------------------------------------------------------------
def test_split_folders_and_csv_splits_give_the_same_rgb_tasks(tmp_path):
    folders = module(tiny(tmp_path / "folders"))
    tables = module(tiny(tmp_path / "csv", layout="csv"))
    assert folders.image_channels == tables.image_channels == 3  # from the data
    assert folders.class_splits() == tables.class_splits() == {
        "train": [0, 1, 2, 3], "val": [4, 5, 6], "test": [7, 8, 9]}
    assert folders.labelled_images().class_names == tables.labelled_images().class_names == [f"n{c:08d}" for c in range(10)]
    assert not folders.rotations and folders.normalize and not folders.invert  # image conventions
    a, b = batches(folders), batches(tables)
    assert len(a) == 2 + 2 + 2 and all(same_batches(x, y) for x, y in zip(a, b))
    sx, sy, qx, qy = a[0]
    assert sx.shape == (2, 3, 3, 16, 16) and qx.shape == (2, 6, 3, 16, 16)
    assert torch.bincount(qy[0]).tolist() == [2, 2, 2]

    # normalised per channel with the train split's statistics, and only those
    shown = folders.labelled_images().images  # as the tasks show them: normalised
    pixels = torch.stack([shown[i] for i in range(24)])  # the 4 train classes' images
    assert torch.allclose(pixels.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(pixels.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4)
    unnormalised = module(tmp_path / "folders", normalize=False)
    raw = torch.stack([unnormalised.labelled_images().images[i] for i in range(24)])
    saved = folders.state_dict()["normalization"]  # for adapt.py, in every checkpoint
    assert torch.allclose(torch.tensor(saved["mean"]), raw.mean(dim=(0, 2, 3)), atol=1e-6)
    mean, std = (torch.tensor(saved[k]).view(3, 1, 1) for k in ("mean", "std"))
    assert torch.allclose(shown[30], (unnormalised.labelled_images().images[30] - mean) / std, atol=1e-5)


def test_registry_entries_and_settings_saved_resolved(tmp_path):
    assert {"omniglot", "synthetic", "folder", "miniimagenet", "tieredimagenet", "cifarfs",
            "fc100"} <= set(DATASETS)
    dm = module(tiny(tmp_path / "mini"), dataset="miniimagenet")
    settings = dm.settings()
    assert (settings["normalize"], settings["invert"], settings["rotations"]) == (True, False, False)
    assert EpisodicDataModule(**settings).settings() == settings  # what eval.py rebuilds
    with pytest.raises(DataError, match="miniImageNet directory not found: .*nowhere; set --data.root"):
        EpisodicDataModule(dataset="miniimagenet", root=str(tmp_path / "nowhere"))


def test_mixed_modes_become_rgb_and_channels_follow_the_setting(tmp_path, capsys):
    root = tiny(tmp_path / "mixed")
    gray = root / "train" / "n00000000" / "n0000000000000002.jpg"
    Image.open(gray).convert("L").save(gray)
    dm = module(root)
    assert dm.image_channels == 3
    assert "1 grayscale images among colour ones were replicated to RGB" in capsys.readouterr().err
    pixels = dm.labelled_images().images.uint8(1)[0]
    assert np.array_equal(pixels[0], pixels[1]) and np.array_equal(pixels[0], pixels[2])
    as_gray = module(root, channels=1)
    assert as_gray.image_channels == 1 and as_gray.task_dataset("val")[0].query_x.shape[1] == 1
    assert len(cache_files(root)) == 2  # one cache per channel setting


# ---------------------------------------------------------------------------------------
# the cache
# ---------------------------------------------------------------------------------------
def test_cache_is_read_back_keyed_by_size_and_rebuilt_when_the_files_change(tmp_path, capsys):
    root = tiny(tmp_path / "data")
    first = batches(module(root))
    [cache] = cache_files(root)
    assert cache.name.startswith("folder-16px-auto-") and "decoding 60 images" in capsys.readouterr().err
    written = cache.stat().st_mtime_ns
    assert all(same_batches(x, y) for x, y in zip(batches(module(root)), first))
    assert cache.stat().st_mtime_ns == written and "decoding" not in capsys.readouterr().err

    module(root, image_size=12)  # another size or setting: its own cache, all kept
    module(root, invert=True)
    assert len(cache_files(root)) == 3

    changed = root / "val" / "n00000005" / "n0000000500000003.jpg"
    Image.new("RGB", (20, 20), (255, 0, 0)).save(changed)  # an image changed: decoded again
    after = batches(module(root))
    assert "decoding 60 images" in capsys.readouterr().err
    assert not cache.exists() and len(cache_files(root)) == 3  # only the stale one removed
    assert not all(same_batches(x, y) for x, y in zip(after, first))


def test_store_pickles_without_its_pixels_and_workers_see_the_same_tasks(tmp_path):
    root = write_fake_dataset(tmp_path / "big", classes=(4, 3, 3), per_class=6, size=64, workers=1)
    dm = module(root, image_size=64)
    store = dm.labelled_images().images  # the store the task datasets read from
    blob = pickle.dumps(store)
    assert len(blob) < 4000 < 60 * 3 * 64 * 64  # the path and statistics, not the images
    assert torch.equal(pickle.loads(blob)[7], store[7])
    parallel = module(root, image_size=64, num_workers=1)
    for a, b in zip(dm.val_dataloader(), parallel.val_dataloader()):
        assert same_batches(a, b)


def test_one_process_decodes_while_the_others_wait(tmp_path, capsys):
    listing = image_folder_listing(tiny(tmp_path / "data") / "train")
    stores = []

    def load():
        stores.append(decode_images(listing, "folder", 16, cache_dir=tmp_path / "cache"))

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert capsys.readouterr().err.count("decoding 24 images") == 1
    assert all(torch.equal(s.tensor(), stores[0].tensor()) for s in stores)


def test_unwritable_cache_folder_decodes_in_memory(tmp_path):
    root = tiny(tmp_path / "data")
    blocked = tmp_path / "a_file"
    blocked.write_text("not a folder")
    with pytest.warns(UserWarning, match="set --data.cache_dir to a writable folder"):
        dm = module(root, cache_dir=str(blocked / "cache"))
    assert dm.labelled_images().images.path is None and not (root / ".cache").exists()
    assert all(same_batches(x, y) for x, y in zip(batches(dm), batches(module(root))))


# ---------------------------------------------------------------------------------------
# Omniglot through the folder path
# ---------------------------------------------------------------------------------------
def trimmed_omniglot(out: Path, per_zip: int = 40) -> Path:
    """The first ``per_zip`` characters of each shipped zip, all 20 drawings, same names."""
    out.mkdir(parents=True)
    for name in ("images_background.zip", "images_evaluation.zip"):
        with zipfile.ZipFile(OMNIGLOT / name) as source, zipfile.ZipFile(out / name, "w") as target:
            members = [i for i in source.infolist() if i.filename.count("/") == 3 and not i.is_dir()]
            keep = sorted({m.filename.rsplit("/", 1)[0] for m in members})[:per_zip]
            for m in members:
                if m.filename.rsplit("/", 1)[0] in keep:
                    target.writestr(m.filename, source.read(m))
    return out


def _by_class(task) -> list[tuple[bytes, bytes]]:
    """A task as its classes' (support, query) images, in an order independent of labels."""
    sx, sy, qx, qy = task
    groups = [(sx[sy == c].numpy().tobytes(), qx[qy == c].numpy().tobytes()) for c in sy.unique()]
    return sorted(groups)


def test_folder_path_gives_the_zip_paths_images_split_and_tasks(tmp_path):
    zips = trimmed_omniglot(tmp_path / "zips")
    settings = dict(ways=5, shots=1, queries=3, image_size=28, val_tasks=6, test_tasks=6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Omniglot has 80 characters instead of 1623"
        folders = export(zips, tmp_path / "folders")
        zip_path = module(zips, dataset="omniglot", **settings)
    folder_path = module(folders, dataset="folder", invert=True, normalize=False, rotations=True, **settings)
    assert folder_path.image_channels == 1

    zip_data, folder_data = zip_path.labelled_images(), folder_path.labelled_images()
    names = [class_name(n) for n in folder_data.class_names]
    for split in ("train", "val", "test"):  # the same classes in the same order
        assert [zip_data.class_names[c] for c in zip_path.class_splits()[split]] == \
            [names[c] for c in folder_path.class_splits()[split]]
    zip_images = zip_data.images.tensor()
    for c, name in enumerate(names):  # the same pixels
        assert torch.equal(folder_data.images.tensor()[folder_data.labels == c],
                           zip_images[zip_data.labels == zip_data.class_names.index(name)])
    for split, keys in (("val", range(6)), ("test", range(6)), ("train", [(0, 0), (0, 3), (2, 1)])):
        a, b = zip_path.task_dataset(split), folder_path.task_dataset(split)
        for key in keys:  # the same classes, drawings, support/query and rotations; only the
            # numbering of a task's classes differs (learn2learn numbers them through a set
            # of their dataset-wide ids, which differ between the two paths)
            assert _by_class(a[key]) == _by_class(b[key]), (split, key)


# ---------------------------------------------------------------------------------------
# adapt.py's loader is the same decoder
# ---------------------------------------------------------------------------------------
def test_adapt_loader_reads_a_split_folder_like_meta_training(tmp_path):
    root = tiny(tmp_path / "data")
    dm = module(root)
    mean, std = dm.state_dict()["normalization"].values()
    task = load_image_folder(root / "test", image_size=16, channels=3, mean=mean, std=std)
    assert task.class_names == ["n00000007", "n00000008", "n00000009"]
    test_ids = dm.class_splits()["test"]
    expected = torch.stack([dm.labelled_images().images[i] for i in range(len(dm.labelled_images().labels))
                            if int(dm.labelled_images().labels[i]) in test_ids])
    assert torch.equal(task.images, expected)
    assert read_split_layout(root, "x").splits == ([0, 1, 2, 3], [4, 5, 6], [7, 8, 9])


# ---------------------------------------------------------------------------------------
# RGB end to end: train.py (fast_dev_run, then a short search), eval.py, adapt.py
# ---------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")
def test_rgb_dataset_end_to_end(tmp_path):
    import json

    import adapt as adapt_cli
    import eval as eval_cli
    import train
    from tests.test_train import SEARCH, SYNTHETIC, logs, run

    root = tiny(tmp_path / "rgb", classes=(6, 4, 4), per_class=8)
    rgb = ["--data.dataset=folder", f"--data.root={root}", "--data.image_size=16"]
    assert train.cli_main([*SYNTHETIC, *rgb, *logs(tmp_path, "dev"), "--trainer.fast_dev_run=true"]) == 0

    run("train.py", *SEARCH, *SYNTHETIC, *rgb, *logs(tmp_path, "search"), "--trainer.max_epochs=2")
    run_dir = tmp_path / "search" / "version_0"
    checkpoints = run_dir / "checkpoints"
    checkpoint = torch.load(checkpoints / "last.ckpt", weights_only=True)
    assert checkpoint["hyper_parameters"]["image_channels"] == 3
    assert checkpoint["state_dict"]["supernet.slots.0.conv3x3.weight"].shape[1] == 3
    assert len(checkpoint["EpisodicDataModule"]["normalization"]["mean"]) == 3
    assert json.loads((checkpoints / "scored.json").read_text())["image_channels"] == 3
    assert all((checkpoints / f).is_file() for f in ("best_arch.json", "search_history.json",
                                                     "search_curve.png", "accuracy_vs_flops.png"))
    assert "<td>dataset</td><td>folder</td>" in (run_dir / "report.html").read_text()
    assert json.loads((run_dir / "test_result.json").read_text())["ways"] == 3

    result = eval_cli.main(["--ckpt_path", str(checkpoints / "last.ckpt"), "--model.eval_arch",
                            str(checkpoints / "best_arch.json"), "--data.test_tasks", "4"])
    assert result["tasks"] == 4 and 0.0 <= result["acc"] <= 1.0

    # a split folder is a labelled image folder: adapt to the test classes
    record = adapt_cli.main(["--ckpt_path", str(checkpoints / "last.ckpt"), "--data.root",
                             str(root / "test"), "--search.on_task", "true", "--search.scorings", "2", "--finetune.steps", "5",
                             "--search.tasks_per_score", "1", "--search.score_shots", "2", "--search.score_queries", "2"])
    assert (record["preprocessing"]["channels"], record["classes"], record["scorings"]) == (3, 4, 2)
    normalization = checkpoint["EpisodicDataModule"]["normalization"]
    assert (record["preprocessing"]["mean"], record["preprocessing"]["std"]) == (normalization["mean"], normalization["std"])
