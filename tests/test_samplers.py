"""Sampling rules: what each promises about a meta-batch's architectures."""
import random
from collections import Counter

import pytest

from lightning_metanas.samplers import PopulationSampler, SpaceSampler, draw
from lightning_metanas.search_space import SearchSpace

SPACE = SearchSpace()


def test_uniform_rule_draws_what_the_space_samples_one_by_one():
    # the default rule keeps the draws (and so every earlier run) unchanged
    a, b = random.Random(3), random.Random(3)
    assert draw(SPACE, a, 32, "uniform") == [SPACE.sample(b) for _ in range(32)]


@pytest.mark.parametrize("count", [21, 32, 63])
def test_fair_rule_trains_every_candidate_of_a_slot_equally_often(count):
    archs = draw(SPACE, random.Random(0), count, "fair")
    assert len(archs) == count
    depths = Counter(a.depth for a in archs)
    assert max(depths.values()) - min(depths.values()) <= 1 and set(depths) == set(SPACE.depths)
    for slot in range(SPACE.max_depth):
        ops = Counter(a.ops[slot] for a in archs if a.depth > slot)
        widths = Counter(a.widths[slot] for a in archs if a.depth > slot)
        reaching = sum(a.depth > slot for a in archs)
        # each candidate appears floor or ceil of its fair share
        assert all(reaching // len(SPACE.ops) <= ops[o] <= -(-reaching // len(SPACE.ops)) for o in SPACE.ops)
        assert all(reaching // len(SPACE.widths) <= widths[w] <= -(-reaching // len(SPACE.widths)) for w in SPACE.widths)
    for arch in archs:
        SPACE.validate(arch)


def test_fair_rule_is_seeded_and_varies_between_batches():
    assert draw(SPACE, random.Random(5), 32, "fair") == draw(SPACE, random.Random(5), 32, "fair")
    rng = random.Random(5)
    assert draw(SPACE, rng, 32, "fair") != draw(SPACE, rng, 32, "fair")


def test_sandwich_rule_holds_the_largest_and_smallest_subnets():
    archs = draw(SPACE, random.Random(1), 32, "sandwich")
    largest, smallest = archs[0], archs[1]
    assert largest.depth == 5 and set(largest.widths) == {64}
    assert smallest.depth == 3 and set(smallest.widths) == {32}
    assert len(archs) == 32
    rest = Counter(a.depth for a in archs[2:])
    assert max(rest.values()) - min(rest.values()) <= 1


def test_population_sampler_under_fair_rule_keeps_the_share_and_deals_members():
    rng = random.Random(0)
    population = [SPACE.sample(rng) for _ in range(4)]
    sampler = PopulationSampler(SPACE, population, population[0], uniform_share=0.25, rule="fair")
    draws = sampler.sample_batch(random.Random(2), 400)
    members = Counter(d for d in draws if d in population)
    assert 0.15 < 1 - sum(members.values()) / 400 < 0.35
    assert max(members.values()) - min(members.values()) <= 1  # members dealt evenly


def test_uniform_sampler_passes_its_rule_on():
    sampler = SpaceSampler(SPACE, rule="fair")
    assert sampler.sample_batch(random.Random(4), 14) == draw(SPACE, random.Random(4), 14, "fair")
    with pytest.raises(ValueError, match="sampling rule"):
        draw(SPACE, random.Random(0), 3, "round_robin")
