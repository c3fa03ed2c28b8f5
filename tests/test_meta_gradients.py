"""Meta-gradients in every mode: agreement between modes, with learn2learn, and through
``MetaNASModule.training_step``'s surrogate loss.

Tolerances:

* ``finite_difference`` vs ``second_order`` (float64, ``fd_epsilon=1e-6``, 3 inner steps at
  ``inner_lr=0.4``): ``1 - cos < 1e-6`` and relative error ``< 1e-5``; measured ~1e-9.
  ``first_order`` on the same tasks is at ``1 - cos`` 0.37 to 0.90, so FD is required to be
  at least 1e4 times closer.
  Why float64 and a small epsilon: ReLU and max pooling make the gradient piecewise smooth,
  with jumps where a unit switches on/off or a pooling window changes its argmax. When the
  segment ``theta +- eps v`` crosses such a kink, the central difference picks up
  ``jump / (2 eps)`` and nothing of the Hessian is left. At DARTS' ``fd_epsilon=0.01``
  (a parameter move of norm 0.01) this tiny network crosses several kinks per difference
  (measured: cosine to second-order ~0), so the test checks the algorithm where the
  Hessian is well defined on the whole segment; BENCHMARKS.md reports the agreement on Conv-4
  in float32 at the default and smaller epsilons.
* the project's inner loop vs learn2learn's ``clone()``/``adapt()`` (bench/l2l_reference.py;
  float32, 3 steps, first- and second-order meta-gradient): relative error
  of the whole meta-gradient ``< 1e-5``, elementwise ``rtol=1e-4, atol=1e-5``.
* surrogate value vs the mean query loss: ``rtol=1e-6``; surrogate gradient vs the mean of the
  per-task meta-gradients: ``rtol=1e-5, atol=1e-7``.
"""
import pytest
import torch
import torch.nn.functional as F

from lightning_metanas.maml import TaskAdapter
from lightning_metanas.meta_config import MetaConfig
from lightning_metanas.module import MetaNASModule
from bench.l2l_reference import l2l_adapt
from tests.helpers import ARCHS, MODES, SPACE, flat, one_task, small_supernet, task_batch

def _cos(a, b):
    return F.cosine_similarity(a, b, dim=0).item()


@pytest.mark.parametrize("arch", ARCHS, ids=str)
def test_finite_difference_matches_second_order_far_better_than_first_order(arch):
    net = small_supernet(torch.float64)
    adapter = TaskAdapter(net, inner_lr=0.4, fd_epsilon=1e-6)
    support, query = one_task(seed=2, dtype=torch.float64)
    grads = {
        mode: adapter.meta_gradient(arch, support, query, steps=3, mode=mode) for mode in MODES
    }
    none = {mode: [g is None for g in r.grads] for mode, r in grads.items()}
    assert none["finite_difference"] == none["second_order"] == none["first_order"]
    so, fd, fo = (flat(grads[m].grads) for m in ("second_order", "finite_difference", "first_order"))
    fd_gap, fo_gap = 1 - _cos(fd, so), 1 - _cos(fo, so)
    assert fd_gap < 1e-6, fd_gap
    assert ((fd - so).norm() / so.norm()).item() < 1e-5
    assert fo_gap > 0.1, fo_gap  # the second-order term is really there ...
    assert fd_gap < 1e-4 * fo_gap  # ... and finite differences recover it
    # all three modes adapt to the same weights: same query loss
    for mode in MODES:
        torch.testing.assert_close(grads[mode].loss, grads["second_order"].loss)


def test_finite_difference_is_central_differences_at_the_stated_epsilon():
    """One inner step by hand: (I - lr H) v with H v from g(theta +- eps v), eps = c / ||v||."""
    from torch.func import functional_call

    net = small_supernet(torch.float64)
    arch = ARCHS[1]
    lr, c = 0.3, 1e-3
    support, query = one_task(seed=5, dtype=torch.float64)
    used = net.parameters_of(arch)
    names = [n for n, _ in used]
    theta = [p.detach() for _, p in used]

    def grad_at(params, data):
        params = [p.detach().requires_grad_() for p in params]
        logits = functional_call(net, dict(zip(names, params)), (data[0], arch))
        return torch.autograd.grad(F.cross_entropy(logits, data[1]), params)

    adapted = [t - lr * g for t, g in zip(theta, grad_at(theta, support))]
    v = grad_at(adapted, query)
    eps = c / torch.linalg.vector_norm(flat(v)).item()
    plus = grad_at([t + eps * d for t, d in zip(theta, v)], support)
    minus = grad_at([t - eps * d for t, d in zip(theta, v)], support)
    expected = [d - lr * (gp - gm) / (2 * eps) for d, gp, gm in zip(v, plus, minus)]

    got = TaskAdapter(net, lr, fd_epsilon=c).meta_gradient(
        arch, support, query, steps=1, mode="finite_difference"
    )
    for g, e in zip(got.grads, expected):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_unused_paths_get_no_gradient_in_every_mode(mode):
    net = small_supernet()
    arch = ARCHS[2]
    support, query = one_task(seed=1)
    result = TaskAdapter(net, 0.4).meta_gradient(arch, support, query, steps=2, mode=mode)
    used = [n for n, _ in net.parameters_of(arch)]
    names = {id(p): n for n, p in net.named_parameters()}
    assert [names[id(p)] for p in result.params] == used
    for p, g in zip(result.params, result.grads):
        if names[id(p)] == "slots.1.skip.projection":  # identity: never read
            assert g is None
        else:
            assert g is not None and torch.isfinite(g).all(), names[id(p)]


@pytest.mark.parametrize("mode", ["first_order", "second_order"])
def test_meta_gradient_equals_learn2learn_clone_adapt(mode):
    net = small_supernet()
    arch = ARCHS[0]
    support, query = one_task(seed=3)
    result = TaskAdapter(net, 0.3).meta_gradient(arch, support, query, steps=3, mode=mode)
    names = {id(p): n for n, p in net.named_parameters()}
    got = {names[id(p)]: g for p, g in zip(result.params, result.grads) if g is not None}

    learner = l2l_adapt(net, arch, *support, steps=3, lr=0.3, create_graph=mode == "second_order")
    F.cross_entropy(learner(query[0], arch), query[1]).backward()
    expected = {n: p.grad for n, p in net.named_parameters() if p.grad is not None}

    assert got.keys() == expected.keys()
    a, b = flat(got.values()), flat(expected.values())
    assert ((a - b).norm() / b.norm()).item() < 1e-5
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-5)


def test_evaluate_equals_learn2learn_adaptation():
    net = small_supernet()
    arch = ARCHS[1]
    support, query = one_task(seed=4, queries=5)
    adapter = TaskAdapter(net, 0.3)
    result = adapter.evaluate(arch, support, query, steps=3)
    learner = l2l_adapt(net, arch, *support, steps=3, lr=0.3, create_graph=False)
    with torch.no_grad():
        logits = learner(query[0], arch)
    torch.testing.assert_close(result.loss, F.cross_entropy(logits, query[1]), rtol=1e-5, atol=1e-6)
    assert result.accuracy == (logits.argmax(-1) == query[1]).float().mean()
    assert all(p.grad is None for p in net.parameters())  # evaluation leaves no gradient


def _module(mode, train_arch=None):
    return MetaNASModule(
        ways=5,
        image_size=14,
        search_space=SPACE,
        meta=MetaConfig(inner_lr=0.3, inner_steps=2, meta_gradient=mode),
        train_arch=train_arch,
    )


@pytest.mark.parametrize("mode", MODES)
def test_training_step_returns_a_surrogate_of_the_mean_query_loss(mode):
    module = _module(mode)
    batch = task_batch()
    with pytest.warns(UserWarning, match="self.log"):  # no Trainer attached
        out = module.training_step(batch, 0)
    assert out.dim() == 0
    out.backward()

    # the archs the step drew (same rng), their adapted query losses and meta-gradients
    rng = module.step_rng()
    archs = module.sampler.sample_batch(rng, batch[0].shape[0])
    expected_grad: dict[str, torch.Tensor] = {}
    losses = []
    names = {id(p): n for n, p in module.supernet.named_parameters()}
    for t, arch in enumerate(archs):
        r = module.adapter.meta_gradient(
            arch, (batch[0][t], batch[1][t]), (batch[2][t], batch[3][t]), steps=2, mode=mode
        )
        losses.append(r.loss)
        for p, g in zip(r.params, r.grads):
            if g is not None:
                n = names[id(p)]
                expected_grad[n] = expected_grad.get(n, 0) + g / len(archs)
        # the value is the real query loss after adaptation (evaluate adapts the same way)
        evaluated = module.adapter.evaluate(
            arch, (batch[0][t], batch[1][t]), (batch[2][t], batch[3][t]), steps=2
        )
        torch.testing.assert_close(r.loss, evaluated.loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.detach(), torch.stack(losses).mean(), rtol=1e-6, atol=0)

    got = {n: p.grad for n, p in module.supernet.named_parameters() if p.grad is not None}
    assert got.keys() == expected_grad.keys()
    for n, g in got.items():
        assert torch.isfinite(g).all(), n
        torch.testing.assert_close(g, expected_grad[n], rtol=1e-5, atol=1e-7)


def test_second_order_training_step_gradient_equals_the_mean_meta_loss_gradient():
    """The surrogate route gives what one backward through all task graphs would."""
    module = _module("second_order", train_arch=None)
    batch = task_batch(seed=7)
    with pytest.warns(UserWarning):
        module.training_step(batch, 0).backward()
    got = {n: p.grad.clone() for n, p in module.supernet.named_parameters() if p.grad is not None}
    module.supernet.zero_grad(set_to_none=True)

    archs = module.sampler.sample_batch(module.step_rng(), batch[0].shape[0])
    losses = [
        module.adapter.meta_loss(
            archs[t],
            (batch[0][t], batch[1][t]),
            (batch[2][t], batch[3][t]),
            steps=2,
        ).loss
        for t in range(batch[0].shape[0])
    ]
    torch.stack(losses).mean().backward()
    expected = {n: p.grad for n, p in module.supernet.named_parameters() if p.grad is not None}
    assert got.keys() == expected.keys()
    for n in expected:  # float32 second-order sums in another order (2 threads): a few 1e-6 apart
        torch.testing.assert_close(got[n], expected[n], rtol=1e-4, atol=1e-5)


def test_meta_config_validates_the_new_settings():
    assert MetaConfig(meta_gradient="finite_difference").fd_epsilon == 1e-5
    with pytest.raises(ValueError, match="fd_epsilon"):
        MetaConfig(fd_epsilon=0)
    with pytest.raises(ValueError, match="finite_difference"):
        MetaConfig(meta_gradient="third_order")
    with pytest.raises(ValueError, match="fd_epsilon"):
        TaskAdapter(small_supernet(), 0.1, fd_epsilon=-1.0)


@pytest.mark.parametrize("mode", MODES)
def test_meta_batch_gradient_is_the_sum_of_task_meta_gradients_on_threads_or_not(mode):
    net = small_supernet()
    batch = task_batch(tasks=5, seed=11)
    archs = [ARCHS[t % len(ARCHS)] for t in range(5)]
    threads_before = torch.get_num_threads()
    parallel = TaskAdapter(net, 0.3, workers=2).meta_batch_gradient(archs, batch, 2, mode)
    assert torch.get_num_threads() == threads_before  # the process setting is left alone
    sequential = TaskAdapter(net, 0.3, workers=1).meta_batch_gradient(archs, batch, 2, mode)

    single = TaskAdapter(net, 0.3, workers=1)
    expected: dict = {}
    for t, arch in enumerate(archs):
        r = single.meta_gradient(
            arch, (batch[0][t], batch[1][t]), (batch[2][t], batch[3][t]), 2, mode
        )
        torch.testing.assert_close(parallel.losses[t], r.loss, rtol=1e-6, atol=0)
        assert parallel.accuracies[t] == r.accuracy
        for p, g in zip(r.params, r.grads):
            if g is not None:
                expected[p] = expected[p] + g if p in expected else g
    for result in (parallel, sequential):
        assert result.grads.keys() == expected.keys()
        for p, g in expected.items():
            torch.testing.assert_close(result.grads[p], g, rtol=1e-5, atol=1e-7)
    used = {id(p) for arch in archs for _, p in net.parameters_of(arch)}
    assert {id(p) for p in parallel.grads} <= used


def test_adapter_pickles_after_using_threads():
    import pickle

    net = small_supernet()
    adapter = TaskAdapter(net, 0.3, workers=2)
    batch = task_batch(tasks=2)
    adapter.meta_batch_gradient([ARCHS[0]] * 2, batch, steps=1, mode="first_order")
    clone = pickle.loads(pickle.dumps(adapter))
    assert not clone.threads.started  # threads are per process: started again on first use
    result = clone.meta_batch_gradient([ARCHS[0]] * 2, batch, steps=1, mode="first_order")
    assert all(torch.isfinite(g).all() for g in result.grads.values())


def test_module_deepcopies_and_pickles_with_its_adapter():
    import copy
    import pickle

    module = _module("first_order")
    with pytest.warns(UserWarning):
        module.training_step(task_batch(), 0)  # starts the worker threads
    for clone in (copy.deepcopy(module), pickle.loads(pickle.dumps(module))):
        assert clone.adapter.supernet is clone.supernet
        with pytest.warns(UserWarning):
            assert torch.isfinite(clone.training_step(task_batch(), 0))


def test_inner_loop_reproduces_its_recorded_numbers_on_every_way_of_running_tasks():
    """Restructuring the inner loop (one per-task code path, one dispatcher) must not move a
    number: bit for bit on the CPU model that recorded them, to 1e-6 relative on another."""
    import json

    from lightning_metanas.latency import cpu_model
    from tests.maml_fingerprints import PATH, fingerprints

    recorded = json.loads(PATH.read_text())
    now = fingerprints()
    assert set(now) == set(recorded["values"])
    exact = recorded["machine"] == cpu_model() and recorded["torch"] == torch.__version__
    for key, stats in recorded["values"].items():
        for name, values in stats.items():
            if exact:
                assert now[key][name] == values, (key, name)
            else:
                assert [float(v) for v in now[key][name]] == pytest.approx([float(v) for v in values], rel=1e-6), (key, name)


NORM_KINDS = pytest.mark.parametrize("task_norm, last_norm", [(False, "task"), (True, "task"), (False, "layer")],
                                     ids=["batch_norm", "task_norm_i", "last_layer_norm"])


@NORM_KINDS
@pytest.mark.parametrize("mode", MODES)
def test_support_normalisation_is_the_batch_one_when_the_query_is_the_support(mode, task_norm, last_norm):
    """Under ``norm=support`` a query image is normalised with the support images' statistics;
    when the query batch *is* the support batch the two coincide, so the meta-gradients (which
    differentiate through those statistics) must too: the support path is the same maths (with
    TaskNorm-I layers too, which blend them with each image's own, and with a last layer that
    takes no task statistics)."""
    net = small_supernet(torch.float64, task_norm=task_norm, last_norm=last_norm)
    support, _ = one_task(seed=4, dtype=torch.float64)
    grads = {}
    for norm in ("transductive", "support"):
        adapter = TaskAdapter(net, inner_lr=0.3, fd_epsilon=1e-6, norm=norm)
        grads[norm] = flat(adapter.meta_gradient(ARCHS[0], support, support, steps=2, mode=mode).grads)
    torch.testing.assert_close(grads["support"], grads["transductive"], rtol=1e-7, atol=1e-9)


@NORM_KINDS
def test_support_normalisation_runs_the_same_per_task_and_vectorised(task_norm, last_norm):
    net = small_supernet(torch.float64, task_norm=task_norm, last_norm=last_norm)
    batch = tuple(t.double() if t.is_floating_point() else t for t in task_batch(tasks=4, seed=9))
    results = [TaskAdapter(net, 0.3, norm="support", workers=1, vectorize=v).meta_batch_gradient(
        [ARCHS[1]] * 4, batch, 2, "first_order") for v in (False, True)]
    for p in results[0].grads:
        torch.testing.assert_close(results[0].grads[p], results[1].grads[p], rtol=1e-9, atol=1e-11)
    assert not torch.equal(results[0].losses, TaskAdapter(net, 0.3, workers=1).meta_batch_gradient(
        [ARCHS[1]] * 4, batch, 2, "first_order").losses)  # other images than the support: another loss
