"""The SuperNet: every operation and sampled subnet runs with the right shapes, Conv-4 counts
match the MAML network, unused paths get no gradient, and one inner step and the
meta-gradient equal hand-written ones."""
import random

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from lightning_metanas.maml import TaskAdapter
from lightning_metanas.ops import OPERATIONS
from lightning_metanas.search_space import Architecture, SearchSpace
from lightning_metanas.supernet import SuperNet


@pytest.mark.parametrize("name", sorted(OPERATIONS))
@pytest.mark.parametrize("c_in, c_out", [(1, 16), (16, 16), (16, 8)])
def test_every_operation_keeps_the_map_size_and_sets_the_channels(name, c_in, c_out):
    op = OPERATIONS[name](16, 16)
    y = op(torch.randn(3, c_in, 9, 9), c_out)
    assert y.shape == (3, c_out, 9, 9)
    # per-task batch statistics: each channel is normalised over the batch
    assert torch.allclose(y.mean(dim=(0, 2, 3)), torch.zeros(c_out), atol=1e-5)


def test_supernet_runs_every_sampled_architecture():
    space = SearchSpace()
    net = SuperNet(space, ways=5, in_channels=1)
    rng = random.Random(0)
    x = torch.randn(10, 1, 28, 28)
    for _ in range(40):
        arch = space.sample(rng)
        out = net(x, arch)
        assert out.shape == (10, 5) and torch.isfinite(out).all()


def test_conv4_path_counts_match_the_maml_network():
    net = SuperNet(SearchSpace(), ways=5, in_channels=1)
    conv4 = SearchSpace().reference()
    # 4 conv3x3 (no bias) + 4 BN affine pairs + head: the learn2learn Conv-4 minus conv biases
    expected = (1 * 64 * 9 + 3 * 64 * 64 * 9) + 4 * 2 * 64 + 64 * 5 + 5
    assert net.num_parameters(conv4) == expected
    # a stand-alone net of the same shape has exactly those parameters
    standalone = SuperNet(SearchSpace(ops=("conv3x3",), widths=(64,), depths=(4,)), 5, 1)
    assert sum(p.numel() for p in standalone.parameters()) == expected
    # feature map sizes 28 -> 14 -> 7 -> 3 -> 1, as in Conv-4
    assert net.flops(conv4, 28) == 64 * 9 * 28 * 28 + 64 * 64 * 9 * (14 * 14 + 7 * 7 + 3 * 3) + 64 * 5


def test_unused_paths_get_no_gradient():
    space = SearchSpace()
    net = SuperNet(space, ways=5, in_channels=1)
    arch = Architecture(("conv3x3", "skip", "sep_conv3x3"), (32, 32, 64))
    F.cross_entropy(net(torch.randn(5, 1, 28, 28), arch), torch.arange(5)).backward()
    used = {name for name, _ in net.parameters_of(arch)}
    for name, p in net.named_parameters():
        if name in used and name != "slots.1.skip.projection":  # skip 32->32 is the identity
            assert p.grad is not None, name
        elif name not in used:
            assert p.grad is None, name


def _task(ways=5, shots=1, queries=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(ways * shots, 1, 14, 14, generator=g)
    xq = torch.randn(ways * queries, 1, 14, 14, generator=g)
    return (xs, torch.arange(ways).repeat(shots)), (xq, torch.arange(ways).repeat(queries))


def _hand_written_step(net, arch, support, lr):
    params = dict(net.named_parameters())
    loss = F.cross_entropy(functional_call(net, params, (support[0], arch)), support[1])
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=True, allow_unused=True)
    return {n: p if g is None else p - lr * g for (n, p), g in zip(params.items(), grads)}


def test_one_maml_inner_step_equals_a_hand_written_sgd_step():
    torch.manual_seed(0)
    space = SearchSpace(widths=(8, 16), depths=(2, 3))
    net = SuperNet(space, ways=5, in_channels=1)
    arch = Architecture(("conv3x3", "sep_conv3x3", "max_pool3x3"), (16, 8, 16))
    support, _ = _task()
    adapter = TaskAdapter(net, inner_lr=0.3)
    path = adapter.adapt(arch, [support])
    names = adapter.used(arch)[0]
    assert names == [n for n, _ in net.parameters_of(arch)] and len(path) == 2
    expected = _hand_written_step(net, arch, support, 0.3)
    before = dict(net.named_parameters())
    changed = 0
    for name, value in zip(names, path[1]):
        torch.testing.assert_close(value, expected[name].detach(), rtol=0, atol=1e-6)
        changed += not torch.equal(value, before[name].detach())
    assert changed == len(names)  # exactly the used path moved; the rest is not in the loop


@pytest.mark.parametrize("mode", ["first_order", "second_order"])
def test_meta_gradient_equals_the_hand_written_one(mode):
    torch.manual_seed(1)
    space = SearchSpace(widths=(8, 16), depths=(2, 3))
    net = SuperNet(space, ways=5, in_channels=1)
    arch = Architecture(("conv5x5", "dil_conv3x3"), (8, 16))
    support, query = _task(seed=3)
    lr = 0.2
    second_order = mode == "second_order"

    result = TaskAdapter(net, lr).meta_gradient(arch, support, query, steps=1, mode=mode)
    by_id = {id(p): n for n, p in net.named_parameters()}
    got = {by_id[id(p)]: g for p, g in zip(result.params, result.grads) if g is not None}

    fast = _hand_written_step(net, arch, support, lr)
    if not second_order:  # first-order: treat the adapted weights as independent leaves
        fast = {n: p.detach().requires_grad_() for n, p in fast.items()}
    query_loss = F.cross_entropy(functional_call(net, fast, (query[0], arch)), query[1])
    wrt = list(fast.values()) if not second_order else list(net.parameters())
    names = list(fast) if not second_order else [n for n, _ in net.named_parameters()]
    grads = torch.autograd.grad(query_loss, wrt, allow_unused=True)
    expected = {n: g for n, g in zip(names, grads) if g is not None}
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6)
    if second_order:  # the second-order term is really there
        fo = TaskAdapter(net, lr).meta_gradient(arch, support, query, steps=1, mode="first_order")
        fo_grads = {by_id[id(p)]: g for p, g in zip(fo.params, fo.grads) if g is not None}
        assert fo_grads.keys() == got.keys()
        assert any(not torch.allclose(fo_grads[n], got[n]) for n in got)
