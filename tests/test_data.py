"""Tests of the data package: Omniglot loading and splits, rotations, episodes, errors.

The real Omniglot tests use the zips shipped in ``data/omniglot`` (the first run decodes them,
~10 s, and leaves the git-ignored cache ``data/omniglot/.cache/omniglot-28px-*.u8``). Everything that writes
caches or needs broken files works on small fake zips in ``tmp_path``.
"""

from __future__ import annotations

import random
import zipfile
from pathlib import Path

import pytest
import torch

import learn2learn as l2l
import pytorch_lightning as pl

from tests.helpers import make_fake_omniglot, same_batches
from lightning_metanas.data import (
    DataError,
    EpisodicDataModule,
    LabelledImages,
    RandomClassRotation90,
    load_omniglot,
    make_synthetic,
    omniglot_split,
    synthetic_split,
)

OMNIGLOT = Path(__file__).parents[1] / "data/omniglot"
SMALL = dict(ways=5, shots=1, queries=3, meta_batch_size=4, train_batches=2,
             val_tasks=7, test_tasks=5, eval_batch_size=3)


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------
def _assert_batch(batch, b: int, ways: int, shots: int, queries: int, size: int) -> None:
    sx, sy, qx, qy = batch
    assert sx.shape == (b, ways * shots, 1, size, size) and sx.dtype == torch.float32
    assert qx.shape == (b, ways * queries, 1, size, size) and qx.dtype == torch.float32
    assert sy.shape == (b, ways * shots) and sy.dtype == torch.long
    assert qy.shape == (b, ways * queries) and qy.dtype == torch.long
    for t in range(b):
        assert set(sy[t].tolist()) == set(qy[t].tolist()) == set(range(ways))
        assert torch.bincount(sy[t]).tolist() == [shots] * ways
        assert torch.bincount(qy[t]).tolist() == [queries] * ways


@pytest.fixture(scope="module")
def omniglot() -> LabelledImages:
    return load_omniglot(OMNIGLOT)


@pytest.fixture(scope="module")
def omniglot_dm(omniglot) -> EpisodicDataModule:
    dm = EpisodicDataModule(root=str(OMNIGLOT), **SMALL)
    dm.setup("fit")
    return dm


# ---------------------------------------------------------------------------------------
# Omniglot loading and split
# ---------------------------------------------------------------------------------------
def test_omniglot_has_all_characters_and_drawings(omniglot):
    assert omniglot.images.shape == (32460, 1, 28, 28)
    assert omniglot.images.dtype == torch.float32
    assert float(omniglot.images.min()) >= 0.0 and float(omniglot.images.max()) <= 1.0
    assert omniglot.num_classes == 1623
    assert torch.bincount(omniglot.labels).tolist() == [20] * 1623
    # ink is 1 (learn2learn's benchmark inverts ToTensor's output): mostly background
    assert 0.02 < float(omniglot.images.mean()) < 0.3
    assert omniglot.class_names[0].startswith("images_background/")
    assert omniglot.class_names[-1].startswith("images_evaluation/")


def test_omniglot_split_sizes_disjoint_deterministic():
    train, val, test = omniglot_split(split_seed=0)
    assert (len(train), len(val), len(test)) == (1100, 100, 423)
    assert set(train) | set(val) | set(test) == set(range(1623))
    assert len(set(train) | set(val) | set(test)) == 1623
    assert omniglot_split(split_seed=0) == (train, val, test)
    assert omniglot_split(split_seed=1) != (train, val, test)
    assert train != sorted(train)  # shuffled, as learn2learn's benchmark does


def test_omniglot_cache_reused_rebuilt_and_optional(tmp_path):
    root = make_fake_omniglot(tmp_path / "omni")
    first = load_omniglot(root, image_size=12)
    [cache] = (root / ".cache").glob("omniglot-12px-gray-inverted-*.u8")
    assert first.images.shape == (64, 1, 12, 12) and first.num_classes == 16
    written = cache.stat().st_mtime_ns
    assert same_batches(load_omniglot(root, image_size=12), first)
    assert cache.stat().st_mtime_ns == written  # read back, not decoded again
    assert same_batches(load_omniglot(root, image_size=12, cache=False), first)  # in memory: the same

    cache.write_bytes(b"garbage")  # unreadable cache: rebuilt, not fatal
    with pytest.warns(UserWarning, match="unreadable image cache"):
        assert same_batches(load_omniglot(root, image_size=12), first)
    cache.write_bytes(cache.read_bytes()[:-100])  # truncated (a full disk): rebuilt
    with pytest.warns(UserWarning, match="truncated image cache"):
        assert same_batches(load_omniglot(root, image_size=12), first)

    # other zips (a character gained a drawing): a new cache, the stale one removed
    make_fake_omniglot(root, drawings={"images_evaluation/A1/c3": 5})
    assert load_omniglot(root, image_size=12).images.shape[0] == 65
    [rebuilt] = (root / ".cache").glob("omniglot-12px-*.u8")
    assert rebuilt != cache and not cache.exists()
    assert not list(root.glob("*.pt"))


# ---------------------------------------------------------------------------------------
# rotations
# ---------------------------------------------------------------------------------------
def test_rotation_turns_every_image_of_a_class_alike():
    base = torch.arange(16.0).reshape(1, 4, 4)  # no rotational symmetry
    images = torch.stack([base + 100 * c + s for c in range(4) for s in range(3)])
    labels = torch.arange(4).repeat_interleave(3)
    meta = l2l.data.MetaDataset(torch.utils.data.TensorDataset(images, labels))
    taskset = l2l.data.Taskset(meta, [
        l2l.data.transforms.NWays(meta, n=4),
        l2l.data.transforms.KShots(meta, k=3),
        l2l.data.transforms.LoadData(meta),
        RandomClassRotation90(meta),
    ])
    distinct_turns_seen = False
    for seed in range(20):
        random.seed(seed)
        x, y = taskset.sample()
        turns: dict[int, set[int]] = {}
        for img, label in zip(x, y.tolist()):
            k = [k for k in range(4) if any(torch.equal(torch.rot90(img, -k, dims=(-2, -1)),
                                                        o) for o in images[labels == label])]
            assert len(k) == 1
            turns.setdefault(label, set()).add(k[0])
        assert all(len(ks) == 1 for ks in turns.values()), turns
        distinct_turns_seen |= len({next(iter(ks)) for ks in turns.values()}) > 1
    assert distinct_turns_seen  # the late-binding bug would give every class the same turn


# ---------------------------------------------------------------------------------------
# episodes
# ---------------------------------------------------------------------------------------
def test_omniglot_batches_shapes_and_labels(omniglot_dm):
    train = list(omniglot_dm.train_dataloader())
    assert len(train) == 2
    for batch in train:
        _assert_batch(batch, 4, 5, 1, 3, 28)
    val = list(omniglot_dm.val_dataloader())
    assert [b[0].shape[0] for b in val] == [3, 3, 1]
    for batch in val:
        _assert_batch(batch, batch[0].shape[0], 5, 1, 3, 28)
    test = list(omniglot_dm.test_dataloader())
    assert sum(b[0].shape[0] for b in test) == 5
    assert omniglot_dm.image_channels == 1


def test_tasks_come_from_their_split(omniglot_dm, omniglot):
    label_of = {img.numpy().tobytes(): int(c) for img, c in zip(omniglot.images, omniglot.labels)}
    splits = omniglot_dm.class_splits()
    for split in ("train", "val", "test"):
        ids = set(splits[split])
        for i in range(3):
            task = omniglot_dm.task_dataset(split)[i]
            for x, y in ((task.support_x, task.support_y), (task.query_x, task.query_y)):
                seen: dict[int, int] = {}  # task label -> dataset class
                for img, label in zip(x, y.tolist()):
                    # each image is, up to a quarter turn, an image of a class of this split
                    found = {label_of.get(torch.rot90(img, k, dims=(-2, -1)).numpy().tobytes())
                             for k in range(4)} - {None}
                    assert len(found) == 1 and found <= ids
                    assert seen.setdefault(label, found.pop()) in ids
                assert len(set(seen.values())) == omniglot_dm.ways


def test_omniglot_tasks_did_not_change_with_the_dataset_registry(omniglot_dm):
    """Omniglot goes through the common decoder and cache since the dataset registry; its
    tasks must be those drawn before (RESULTS.md was measured on them), bit for bit: hashes
    taken with the code before the change."""
    import hashlib

    def digest(task):
        h = hashlib.sha256()
        for t in task:
            h.update(t.contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    expected = {"val": {0: "ff8eeb185457d9f8", 1: "cc88b1d256e6a5ec", 6: "9f6a61b339c284df"},
                "test": {0: "f6e96684e4df3b91", 4: "ef0a9d6a088d5130"},
                "train": {(0, 0): "00f9995f2fa66bbe", (1, 5): "f9f9327eb49bb22e"}}
    for split, tasks in expected.items():
        dataset = omniglot_dm.task_dataset(split)
        assert {key: digest(dataset[key]) for key in tasks} == tasks, split


def test_eval_tasks_are_fixed_and_global_random_untouched(omniglot_dm):
    random.seed(123)
    state = random.getstate()
    first = list(omniglot_dm.val_dataloader())
    assert random.getstate() == state
    again = list(omniglot_dm.val_dataloader())
    assert all(same_batches(a, b) for a, b in zip(first, again))
    fresh = EpisodicDataModule(root=str(OMNIGLOT), **SMALL)
    fresh.setup("validate")
    assert same_batches(fresh.task_dataset("val")[4], omniglot_dm.task_dataset("val")[4])
    assert same_batches(fresh.task_dataset("test")[2], omniglot_dm.task_dataset("test")[2])
    assert not same_batches(omniglot_dm.task_dataset("val")[0], omniglot_dm.task_dataset("val")[1])


def test_train_tasks_change_per_epoch_and_rank_and_resume(omniglot_dm):
    dm = EpisodicDataModule(root=str(OMNIGLOT), **SMALL)
    dm.setup("fit")
    epoch0 = list(dm.train_dataloader())
    epoch1 = list(dm.train_dataloader())  # a plain loop: each pass is a new epoch
    assert not same_batches(epoch0[0], epoch1[0])
    assert dm.state_dict()["train_next_epoch"] == 2
    assert dict(dm.hparams) == dm.settings()  # saved in checkpoints: what eval.py rebuilds the data from
    assert EpisodicDataModule(**dm.settings()).settings() == dm.settings()

    resumed = EpisodicDataModule(root=str(OMNIGLOT), **SMALL)
    resumed.setup("fit")
    resumed.load_state_dict({"train_next_epoch": 1})
    assert all(same_batches(a, b) for a, b in zip(list(resumed.train_dataloader()), epoch1))

    train = dm.task_dataset("train")
    assert same_batches(train[(0, 3)], train[(0, 3)])
    rank0 = train[(0, 3)]
    train.rank = 1
    try:
        assert not same_batches(train[(0, 3)], rank0)
    finally:
        train.rank = 0


class _Recorder(pl.LightningModule):
    """Records the first support image of every training batch, per epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen: dict[int, list[torch.Tensor]] = {}

    def training_step(self, batch, batch_idx):
        sx, sy, qx, qy = batch
        self.seen.setdefault(self.current_epoch, []).append(sx[:, 0].clone())
        return (self.weight * sx.mean()).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_plain_trainer_gives_new_tasks_each_epoch_and_checkpoints_counter(tmp_path):
    dm = EpisodicDataModule(dataset="synthetic", image_size=14, ways=3, shots=1, queries=2,
                            meta_batch_size=2, train_batches=2, val_tasks=2, eval_batch_size=2)
    model = _Recorder()
    trainer = pl.Trainer(max_epochs=2, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, accelerator="cpu", devices=1)
    trainer.fit(model, datamodule=dm)
    assert sorted(model.seen) == [0, 1] and len(model.seen[0]) == 2
    assert not torch.equal(model.seen[0][0], model.seen[1][0])
    expected = dm.task_dataset("train")[(1, 0)].support_x[0]
    assert torch.equal(model.seen[1][0][0], expected)  # epoch 1 batch 0 is key (1, 0)

    trainer.save_checkpoint(tmp_path / "last.ckpt")
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert ckpt["EpisodicDataModule"]["train_next_epoch"] == 2


# ---------------------------------------------------------------------------------------
# synthetic
# ---------------------------------------------------------------------------------------
def test_synthetic_datamodule_batches():
    dm = EpisodicDataModule(dataset="synthetic", image_size=14, ways=5, shots=2, queries=3,
                            meta_batch_size=4, train_batches=3, val_tasks=5, eval_batch_size=2)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert len(batches) == 3
    for batch in batches:
        _assert_batch(batch, 4, 5, 2, 3, 14)
    val = list(dm.val_dataloader())
    assert [b[0].shape[0] for b in val] == [2, 2, 1]
    assert [len(ids) for ids in dm.class_splits().values()] == [36, 12, 12]


def test_synthetic_is_learnable_and_split():
    data = make_synthetic(image_size=14)
    assert data.images.shape == (1200, 1, 14, 14)
    assert float(data.images.min()) >= 0 and float(data.images.max()) <= 1
    # nearest prototype (class mean) recovers the label: classes are well separated
    means = torch.stack([data.images[data.labels == c].mean(0) for c in range(60)])
    dists = torch.cdist(data.images.flatten(1), means.flatten(1))
    assert float((dists.argmin(1) == data.labels).float().mean()) > 0.99
    train, val, test = synthetic_split(0)
    assert (len(train), len(val), len(test)) == (36, 12, 12)
    assert set(train) | set(val) | set(test) == set(range(60))


def test_workers_give_the_same_tasks():
    kwargs = dict(dataset="synthetic", image_size=14, ways=3, shots=1, queries=2,
                  meta_batch_size=2, train_batches=2, val_tasks=4, eval_batch_size=2)
    serial = EpisodicDataModule(**kwargs)
    serial.setup("fit")
    parallel = EpisodicDataModule(**kwargs, num_workers=1)
    parallel.setup("fit")
    for a, b in zip(serial.val_dataloader(), parallel.val_dataloader()):
        assert same_batches(a, b)
    for a, b in zip(serial.train_dataloader(), parallel.train_dataloader()):
        assert same_batches(a, b)


# ---------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------
def test_missing_root(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as err:
        EpisodicDataModule(root=str(missing))
    assert str(missing) in str(err.value) and "data.root" in str(err.value)
    assert isinstance(err.value, FileNotFoundError)


def test_missing_zip(tmp_path):
    root = make_fake_omniglot(tmp_path / "omni")
    (root / "images_evaluation.zip").unlink()
    with pytest.raises(DataError) as err:
        load_omniglot(root)
    assert str(root / "images_evaluation.zip") in str(err.value)
    assert "data.root" in str(err.value)


@pytest.mark.parametrize("damage", ["not_a_zip", "truncated"])
def test_broken_zip_names_the_file(tmp_path, damage):
    root = make_fake_omniglot(tmp_path / "omni")
    path = root / "images_background.zip"
    content = path.read_bytes()
    path.write_bytes(b"<html>404</html>" if damage == "not_a_zip" else content[: len(content) // 2])
    dm = EpisodicDataModule(root=str(root), ways=2, shots=1, queries=1)
    with pytest.raises(DataError) as err:
        dm.setup("fit")
    assert str(path) in str(err.value) and "zip" in str(err.value)


def test_undecodable_image_names_the_member(tmp_path):
    root = make_fake_omniglot(tmp_path / "omni")
    with zipfile.ZipFile(root / "images_evaluation.zip", "a") as archive:
        archive.writestr("images_evaluation/A0/c0/9999_05.png", b"not a png")
    with pytest.raises(DataError) as err:
        load_omniglot(root, cache=False)
    assert "images_evaluation/A0/c0/9999_05.png" in str(err.value)
    assert "images_evaluation.zip" in str(err.value)


def test_small_class_named_at_setup(tmp_path):
    root = make_fake_omniglot(tmp_path / "omni", drawings={"images_background/A1/c2": 2})
    dm = EpisodicDataModule(root=str(root), ways=1, shots=1, queries=3)
    with pytest.warns(UserWarning, match="16 characters"), pytest.raises(DataError) as err:
        dm.setup("fit")
    message = str(err.value)
    assert "images_background/A1/c2" in message and "data.shots + data.queries" in message


@pytest.mark.parametrize(
    "kwargs, needles",
    [
        (dict(ways=101), ["data.ways=101", "100", "val"]),
        (dict(shots=5, queries=16), ["data.shots + data.queries", "21", "20"]),
        (dict(dataset="mnist"), ["'mnist'", "'omniglot'", "'synthetic'", "data.dataset"]),
        (dict(ways=0), ["data.ways must be an integer >= 1, got 0"]),
        (dict(meta_batch_size=-1), ["data.meta_batch_size must be an integer >= 1, got -1"]),
        (dict(dataset="synthetic", ways=13), ["data.ways=13", "12"]),
        (dict(dataset="synthetic", shots=10, queries=11), ["data.shots + data.queries", "20"]),
    ],
)
def test_bad_settings_rejected_before_loading(kwargs, needles):
    with pytest.raises(DataError) as err:
        EpisodicDataModule(root=str(OMNIGLOT), **kwargs)
    for needle in needles:
        assert needle in str(err.value)
