"""The search space as plain values: the operation registry, Conv-4 as a point of the space,
its size, architectures as JSON (round trip, bad files named), validation, the search's moves
(sample, mutate, crossover) staying in the space, and the predictor's encoding."""
import json
import random

import pytest

from lightning_metanas.ops import OPERATIONS
from lightning_metanas.search_space import Architecture, ArchitectureError, SearchSpace

REQUIRED_OPS = {"conv3x3", "conv5x5", "sep_conv3x3", "dil_conv3x3", "max_pool3x3", "avg_pool3x3", "skip"}


def test_registry_has_the_required_operations():
    assert REQUIRED_OPS <= set(OPERATIONS)


def test_conv4_is_a_point_of_the_default_space():
    space = SearchSpace()
    conv4 = space.reference()
    assert conv4 == Architecture(("conv3x3",) * 4, (64,) * 4)
    assert space.validate(conv4) is conv4


def test_size_counts_every_architecture():
    space = SearchSpace(ops=("conv3x3", "skip"), widths=(8, 16), depths=(1, 2))
    assert space.size() == 4 + 16
    seen = {space.sample(random.Random(i)) for i in range(2000)}
    assert len(seen) == 20


def test_label_and_comparison_of_architectures_and_their_json():
    """One label (str) and one comparison (==) for architectures, also as read from files."""
    arch = Architecture(("conv3x3", "skip"), (32, 64))
    assert str(arch) == "conv3x3@32-skip@64"
    assert Architecture.of(arch) is arch
    assert Architecture.of({"ops": ["conv3x3", "skip"], "widths": [32, 64]}) == arch
    assert Architecture.of({"ops": ["conv3x3", "skip"], "widths": [32, 48]}) != arch


def test_json_round_trip_and_file(tmp_path):
    arch = Architecture(("conv3x3", "skip", "sep_conv3x3"), (32, 64, 48))
    assert Architecture.from_json(json.dumps(arch.to_dict())) == arch
    assert arch.to_dict() == {"ops": ["conv3x3", "skip", "sep_conv3x3"], "widths": [32, 64, 48]}
    path = tmp_path / "arch.json"
    arch.save(path)
    assert Architecture.load(path) == arch
    assert hash(arch) == hash(Architecture.load(path))


@pytest.mark.parametrize(
    "text, message",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"ops": ["conv3x3"]}', "missing the field(s) ['widths']"),
        ('{"ops": ["conv3x3"], "widths": [64], "extra": 1}', "unknown field(s) ['extra']"),
        ('{"ops": ["conv3x3"], "widths": ["64"]}', "'widths' must be a list of integers"),
        ('{"ops": ["conv3x3", "skip"], "widths": [64]}', "2 ops but 1 widths"),
    ],
)
def test_malformed_architecture_json_names_the_problem(text, message):
    with pytest.raises(ArchitectureError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)").replace("]", r"\]")):
        Architecture.from_json(text)


def test_validate_names_the_offending_field():
    space = SearchSpace()
    with pytest.raises(ArchitectureError, match=r"ops\[1\] = 'conv7x7'.*allowed"):
        space.validate(Architecture(("conv3x3", "conv7x7", "skip"), (32, 32, 32)))
    with pytest.raises(ArchitectureError, match=r"widths\[2\] = 50 .*allowed: \[32, 48, 64\]"):
        space.validate(Architecture(("conv3x3",) * 3, (32, 32, 50)))
    with pytest.raises(ArchitectureError, match=r"2 layers; allowed depths: \[3, 4, 5\]"):
        space.validate(Architecture(("conv3x3",) * 2, (32, 32)))


def test_bad_search_space_settings_name_the_setting():
    with pytest.raises(ArchitectureError, match=r"search_space.ops: unknown operation\(s\) \['conv9x9'\]"):
        SearchSpace(ops=("conv3x3", "conv9x9"))
    with pytest.raises(ArchitectureError, match="search_space.widths"):
        SearchSpace(widths=(0, 32))
    with pytest.raises(ArchitectureError, match="search_space.depths"):
        SearchSpace(depths=())


def test_sample_mutate_crossover_stay_in_the_space():
    space = SearchSpace()
    rng = random.Random(0)
    population = [space.sample(rng) for _ in range(50)]
    for a, b in zip(population, population[1:]):
        child = space.mutate(a, rng)
        assert child != a
        space.validate(child)
        space.validate(space.crossover(a, b, rng))
    depths = {a.depth for a in population}
    assert depths == set(space.depths)


def test_crossover_takes_every_layer_from_a_parent():
    space = SearchSpace()
    rng = random.Random(1)
    a = Architecture(("conv3x3",) * 3, (32,) * 3)
    b = Architecture(("skip",) * 5, (64,) * 5)
    for _ in range(50):
        child = space.crossover(a, b, rng)
        assert child.depth in (3, 5)
        assert set(child.ops) <= {"conv3x3", "skip"} and set(child.widths) <= {32, 64}
        assert all(op == "skip" for op in child.ops[3:])


def test_encoding_is_fixed_length_and_distinguishes_architectures():
    space = SearchSpace()
    rng = random.Random(2)
    archs = {space.sample(rng) for _ in range(200)}
    codes = {tuple(space.encode(a)) for a in archs}
    assert len(codes) == len(archs)
    assert all(len(c) == space.encoding_size for c in codes)
