"""Task-balancing strategies against their papers' math: closed forms, optimality conditions, toy problems,
and, for every strategy, finiteness, seeded reproducibility and an exact state_dict round trip."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from hfmtl.balancing import BALANCERS, GradientCombiner, LossWeighting, get_balancer, task_gradient_norms
from hfmtl.errors import ConfigError

TASKS = ["a", "b", "c"]
OPTIONS = {"fixed": {"weights": {"a": 1.0, "b": 2.0, "c": 0.5}}, "dwa": {"window_steps": 2}}
LOSS_WEIGHTINGS = ["equal", "fixed", "initial_loss", "rlw", "uncertainty", "dwa", "gradnorm", "famo"]
COMBINERS = ["pcgrad", "gradvac", "cagrad", "mgda", "imtl_g", "nash_mtl", "aligned_mtl"]


def build(name: str, seed: int = 0, tasks=TASKS, **options):
    return get_balancer(name, tasks, seed=seed, **{**OPTIONS.get(name, {}), **options})


def randn(*shape: int, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def drive(balancer, step: int) -> list[torch.Tensor]:
    """One step of `balancer` as a trainer would run it, on inputs that depend only on `step`."""
    gen = torch.Generator().manual_seed(1000 + step)
    if isinstance(balancer, GradientCombiner):
        grads = torch.randn(len(TASKS), 16, generator=gen)
        out = balancer(grads)
        torch.testing.assert_close(out.grad, out.weights @ grads)
        return [out.grad, out.weights]
    losses = {n: torch.rand((), generator=gen) + 0.1 for n in TASKS}
    out = balancer(losses)
    if balancer.name == "gradnorm":
        balancer.update(losses, {n: torch.rand((), generator=gen) + 0.5 for n in TASKS})
    elif balancer.name == "famo":
        balancer.update(losses, {n: loss * (0.8 + 0.2 * torch.rand((), generator=gen)) for n, loss in losses.items()})
    elif balancer.name == "uncertainty":  # the trainer's optimizer moves the log-variances
        params = list(balancer.parameters())
        with torch.no_grad():
            for p, g in zip(params, torch.autograd.grad(out.loss, params)):
                p -= 0.1 * g
    return [out.loss.detach(), *out.weights.values()]


def reload(state: dict) -> dict:
    """Through bytes, as a checkpoint: everything must load with weights_only=True."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


# --- every strategy ------------------------------------------------------------------------------------


def test_registry_lists_every_strategy():
    assert sorted(BALANCERS) == sorted(LOSS_WEIGHTINGS + COMBINERS)
    for name in LOSS_WEIGHTINGS:
        assert issubclass(BALANCERS[name], LossWeighting)
    for name in COMBINERS:
        assert issubclass(BALANCERS[name], GradientCombiner)


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("pcgard", {}, "did you mean 'pcgrad'"),
        ("dwa", {"temprature": 1.0}, "no option 'temprature'; did you mean 'temperature'"),
        ("fixed", {}, "needs the option 'weights'"),
        ("fixed", {"weights": {"a": 1.0}}, "missing ['b', 'c']"),
        ("fixed", {"weights": {"a": 1, "b": 1, "c": -1}}, "weights.c must be a number in [0.0, inf]"),
        ("dwa", {"temperature": 0}, "temperature must be a number"),
        ("cagrad", {"c": "big"}, "c must be a number"),
        ("gradvac", {"beta": 2}, "beta must be a number in [0.0, 1.0]"),
    ],
)
def test_config_errors_are_one_clear_line(name, options, message):
    with pytest.raises(ConfigError) as err:
        get_balancer(name, TASKS, **options)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("name", LOSS_WEIGHTINGS + COMBINERS)
def test_outputs_finite_reproducible_and_state_round_trip(name):
    first, second = build(name, seed=7), build(name, seed=7)
    outputs = [drive(first, step) for step in range(4)]
    assert all(torch.isfinite(t).all() for step in outputs for t in step)
    for step, expected in enumerate(outputs):  # same seed, same inputs: identical numbers
        assert all(torch.equal(x, y) for x, y in zip(drive(second, step), expected))

    resumed = build(name, seed=123)  # another seed: the RNG must come from the state dict
    resumed.load_state_dict(reload(first.state_dict()))
    for step in range(4, 7):
        assert all(torch.equal(x, y) for x, y in zip(drive(resumed, step), drive(first, step)))


@pytest.mark.parametrize("name", LOSS_WEIGHTINGS)
def test_loss_weightings_on_a_subset_of_tasks(name):
    balancer = build(name)
    losses = {"c": torch.tensor(2.0), "a": torch.tensor(0.5)}
    if balancer.needs_all_tasks:
        with pytest.raises(ValueError, match="needs every task at every step; missing"):
            balancer(losses)
        return
    out = balancer(losses)
    assert list(out.weights) == ["a", "c"]  # run order, whatever the dict order
    assert torch.isfinite(out.loss)
    with pytest.raises(ValueError, match="unknown task"):
        balancer({"zzz": torch.tensor(1.0)})


@pytest.mark.parametrize("name", COMBINERS)
def test_combiners_on_a_subset_zero_rows_and_overflow(name):
    combiner = build(name)
    grads = randn(2, 8, seed=1)
    out = combiner(grads, ["c", "a"])
    assert out.task_names == ("c", "a") and torch.isfinite(out.grad).all()
    torch.testing.assert_close(out.grad, out.weights @ grads)

    with_zero = torch.cat([randn(2, 8, seed=2), torch.zeros(1, 8)])
    assert torch.isfinite(combiner(with_zero).grad).all()

    overflow = randn(3, 8, seed=3)
    overflow[1, 0] = float("inf")
    out = combiner(overflow)
    assert out.diagnostics["nonfinite"] == 1.0 and not torch.isfinite(out.grad).all()


# --- gradient combiners -----------------------------------------------------------------------------------


def _project(g: torch.Tensor, onto: torch.Tensor) -> torch.Tensor:
    return g - (g @ onto) / (onto @ onto) * onto


def test_pcgrad_two_tasks_closed_form():
    g1, g2 = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])  # g1 . g2 = -1: conflict
    out = build("pcgrad")(torch.stack([g1, g2]), ["a", "b"])
    torch.testing.assert_close(out.grad, _project(g1, g2) + _project(g2, g1))
    torch.testing.assert_close(out.grad, torch.tensor([0.5, 1.5]))
    assert out.diagnostics == {"conflicts": 1.0, "projections": 2.0}
    # each rewritten gradient is orthogonal to the other task's gradient
    rewritten = out.coefficients @ torch.stack([g1, g2])
    assert abs(float(rewritten[0] @ g2)) < 1e-6 and abs(float(rewritten[1] @ g1)) < 1e-6

    agreeing = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    out = build("pcgrad")(agreeing, ["a", "b"])
    torch.testing.assert_close(out.grad, agreeing.sum(0))
    assert out.diagnostics["projections"] == 0.0


def test_pcgrad_random_order_is_seeded():
    # three mutually conflicting gradients: the result depends on the projection order
    grads = torch.tensor([[1.0, 0.0], [-0.6, 0.8], [-0.6, -0.8]])
    results = {tuple(build("pcgrad", seed=s)(grads).grad.tolist()) for s in range(12)}
    assert len(results) > 1
    assert torch.equal(build("pcgrad", seed=3)(grads).grad, build("pcgrad", seed=3)(grads).grad)


@pytest.mark.parametrize("seed", range(6))
def test_mgda_two_tasks_closed_form(seed):
    g1, g2 = randn(2, 5, seed=seed, dtype=torch.float64)
    if seed == 0:  # g1 short and along g2: the min-norm point is g1 itself (gamma clipped to 1)
        g1 = 0.1 * g2
    gamma = float(torch.clamp(((g2 - g1) @ g2) / (g1 - g2).square().sum(), 0, 1))
    out = build("mgda")(torch.stack([g1, g2]), ["a", "b"])
    torch.testing.assert_close(out.grad, gamma * g1 + (1 - gamma) * g2)
    torch.testing.assert_close(out.weights.sum(), torch.tensor(1.0, dtype=torch.float64))


@pytest.mark.parametrize("seed", range(4))
def test_mgda_min_norm_point_satisfies_kkt(seed):
    grads = randn(5, 4, seed=seed, dtype=torch.float64) + torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    out = build("mgda", tasks=list("abcde"))(grads)
    theta, w = out.grad, out.weights
    assert (w >= 0).all() and abs(float(w.sum()) - 1) < 1e-9
    # min over the simplex of ||G^T w||^2: every g_t . theta >= ||theta||^2, with equality where w_t > 0
    slack = grads @ theta - theta @ theta
    assert float(slack.min()) > -1e-5
    assert float(slack[w > 1e-6].abs().max()) < 1e-5


def test_cagrad_c_zero_is_the_mean_gradient():
    grads = randn(3, 10, seed=0)
    out = build("cagrad", c=0.0)(grads)
    torch.testing.assert_close(out.grad, grads.mean(0))


def test_cagrad_maximises_the_worst_task_improvement_in_its_ball():
    grads = torch.tensor([[1.0, 0.2, 0.0], [-0.7, 1.0, 0.1], [0.1, -0.4, 1.0]], dtype=torch.float64)
    c = 0.5
    d = build("cagrad", c=c)(grads).grad
    g0 = grads.mean(0)
    radius = c * g0.norm()
    torch.testing.assert_close((d - g0).norm(), radius)  # on the boundary of the ball
    # no point of the ball improves the worst task more than d does
    directions = randn(4000, 3, seed=1, dtype=torch.float64)
    scales = torch.rand(4000, 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64) ** (1 / 3)
    candidates = g0 + radius * scales * directions / directions.norm(dim=1, keepdim=True)
    assert float((grads @ d).min()) >= float((candidates @ grads.T).min(dim=1).values.max()) - 1e-6


@pytest.mark.parametrize("seed", range(4))
def test_nash_mtl_solves_its_bargaining_equation(seed):
    grads = randn(3, 20, seed=seed, dtype=torch.float64) * torch.tensor([[1.0], [3.0], [0.2]], dtype=torch.float64)
    out = build("nash_mtl")(grads)
    alpha, gram = out.weights, grads @ grads.T
    assert (alpha > 0).all()
    torch.testing.assert_close(gram @ alpha, 1 / alpha, rtol=1e-5, atol=0)  # G^T G alpha = 1 / alpha
    torch.testing.assert_close(out.grad.norm() ** 2, torch.tensor(3.0, dtype=torch.float64))  # ||g||^2 = T
    assert out.diagnostics["residual"] < 1e-9


def test_nash_mtl_stays_finite_when_the_bargaining_equation_has_no_solution():
    grads = randn(2, 6, seed=0, dtype=torch.float64)
    grads = torch.cat([grads, -grads.sum(0, keepdim=True)])  # 1 g1 + 1 g2 + 1 g3 = 0: no alpha > 0 solves it
    out = build("nash_mtl")(grads)
    assert (out.weights > 0).all() and torch.isfinite(out.grad).all()
    assert float(out.grad.norm()) <= math.sqrt(3) + 1e-6


@pytest.mark.parametrize("tasks", [3, 4])
def test_imtl_g_equal_projections_on_every_unit_gradient(tasks):
    grads = randn(tasks, 12, seed=tasks, dtype=torch.float64) * torch.arange(1, tasks + 1).unsqueeze(1)
    out = build("imtl_g", tasks=[f"t{i}" for i in range(tasks)])(grads)
    units = grads / grads.norm(dim=1, keepdim=True)
    projections = units @ out.grad
    torch.testing.assert_close(projections, projections[0].expand(tasks), rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(out.weights.sum(), torch.tensor(1.0, dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("dependent", [False, True])
def test_aligned_mtl_has_condition_number_one_on_the_span(dependent, dtype):
    grads = randn(3, 10, seed=0, dtype=dtype) * torch.tensor([[5.0], [1.0], [0.3]], dtype=dtype)
    if dependent:  # rank 2: the alignment acts on the span
        grads[2] = grads[0] - 2 * grads[1]
    out = build("aligned_mtl")(grads)
    aligned = out.coefficients @ grads
    singular = torch.linalg.svdvals(aligned.double())
    original = torch.linalg.svdvals(grads.double())
    rank = 2 if dependent else 3
    tolerance = 1e-4 if dtype == torch.float32 else 1e-9
    torch.testing.assert_close(singular[:rank], original[rank - 1].expand(rank), rtol=tolerance, atol=0)
    assert all(float(v) < tolerance * float(singular[0]) for v in singular[rank:])
    assert out.diagnostics["rank"] == rank
    torch.testing.assert_close(out.grad, aligned.mean(0), rtol=tolerance, atol=tolerance)  # default weights 1/T


def test_gradvac_lifts_a_pair_to_its_cosine_target():
    gradvac = build("gradvac", tasks=["a", "b"], beta=0.5)
    # step 1: cosine 0.8 is above the initial targets 0: nothing changes, targets -> 0.5 * 0.8
    first = torch.tensor([[1.0, 0.0], [0.8, 0.6]])
    out = gradvac(first)
    torch.testing.assert_close(out.grad, first.sum(0))
    torch.testing.assert_close(gradvac.targets, torch.tensor([[0.0, 0.4], [0.4, 0.0]], dtype=torch.float64))
    # step 2: cosine 0.1 < target 0.4: each rewritten gradient reaches cosine 0.4 with the other one
    angle = math.acos(0.1)
    second = torch.tensor([[2.0, 0.0], [0.5 * math.cos(angle), 0.5 * math.sin(angle)]], dtype=torch.float64)
    out = gradvac(second)
    rewritten = out.coefficients @ second
    cosine = torch.nn.functional.cosine_similarity
    torch.testing.assert_close(cosine(rewritten[0], second[1], dim=0), torch.tensor(0.4, dtype=torch.float64))
    torch.testing.assert_close(cosine(rewritten[1], second[0], dim=0), torch.tensor(0.4, dtype=torch.float64))
    assert out.diagnostics["adjustments"] == 2.0
    torch.testing.assert_close(gradvac.targets[0, 1], torch.tensor(0.25, dtype=torch.float64))  # 0.5*0.4 + 0.5*0.1


# --- loss weightings ----------------------------------------------------------------------------------------


def test_uncertainty_learns_each_tasks_noise_variance():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(512, 4, generator=gen)
    noise = {"clean": 0.3, "noisy": 1.0}
    targets = {n: x @ torch.randn(4, generator=gen) + s * torch.randn(512, generator=gen) for n, s in noise.items()}
    torch.manual_seed(0)
    heads = nn.ModuleDict({n: nn.Linear(4, 1) for n in noise})
    uw = get_balancer("uncertainty", list(noise))
    optimizer = torch.optim.Adam([*heads.parameters(), *uw.parameters()], lr=0.05)
    for _ in range(300):
        losses = {n: (heads[n](x).squeeze(1) - targets[n]).square().mean() for n in noise}
        out = uw(losses)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    s = {n: float(p.detach()) for n, p in uw.log_variances.items()}
    assert s["noisy"] > s["clean"] + 1.5  # log(1.0 / 0.09) = 2.4
    for name, sigma in noise.items():  # s_t -> log of the task's residual variance
        assert abs(s[name] - math.log(sigma**2)) < 0.3
    torch.testing.assert_close(out.weights["clean"], torch.exp(-uw.log_variances["clean"].detach()))


def test_dwa_weights_follow_the_formula():
    dwa = build("dwa", tasks=["a", "b"], temperature=2.0, window_steps=2)
    for losses in ({"a": 1.0, "b": 2.0},) * 2 + ({"a": 0.5, "b": 1.8},) * 2:
        out = dwa({n: torch.tensor(v) for n, v in losses.items()})
        assert [float(w) for w in out.weights.values()] == [1.0, 1.0]  # fewer than two complete windows
    out = dwa({"a": torch.tensor(0.3), "b": torch.tensor(1.0)})
    ratios = torch.tensor([0.5 / 1.0, 1.8 / 2.0])
    expected = 2 * torch.softmax(ratios / 2.0, dim=0)
    torch.testing.assert_close(torch.stack(list(out.weights.values())), expected)
    torch.testing.assert_close(out.loss, expected @ torch.tensor([0.3, 1.0]))

    manual = build("dwa", tasks=["a", "b"], temperature=0.5)  # windows end when the trainer says so
    for window in ({"a": 2.0, "b": 1.0}, {"a": 1.0, "b": 0.9}):
        manual({n: torch.tensor(v) for n, v in window.items()})
        manual.end_window()
        manual.end_window()  # an empty window is ignored
    out = manual({"a": torch.tensor(1.0), "b": torch.tensor(1.0)})
    expected = 2 * torch.softmax(torch.tensor([0.5, 0.9]) / 0.5, dim=0)
    torch.testing.assert_close(torch.stack(list(out.weights.values())), expected)


def test_rlw_weights_are_seeded_softmax_of_normals_summing_to_the_task_count():
    for seed in (0, 1):
        rlw = build("rlw", seed=seed)
        out = rlw({n: torch.tensor(1.0) for n in TASKS})
        expected = 3 * torch.softmax(torch.randn(3, generator=torch.Generator().manual_seed(seed)), dim=0)
        torch.testing.assert_close(torch.stack(list(out.weights.values())), expected)
        subset = rlw({"a": torch.tensor(1.0), "b": torch.tensor(1.0)})
        torch.testing.assert_close(sum(subset.weights.values()), torch.tensor(2.0))
    first = drive(build("rlw", seed=0), 0)
    assert not torch.equal(first[1], drive(build("rlw", seed=1), 0)[1])


def test_initial_loss_divides_by_the_first_loss_seen():
    balancer = build("initial_loss")
    out = balancer({"a": torch.tensor(2.0), "b": torch.tensor(0.5)})
    torch.testing.assert_close(out.loss, torch.tensor(2.0))  # every task starts at 1
    out = balancer({"a": torch.tensor(1.0), "b": torch.tensor(0.5), "c": torch.tensor(4.0)})
    torch.testing.assert_close(torch.stack(list(out.weights.values())), torch.tensor([0.5, 2.0, 0.25]))
    torch.testing.assert_close(out.loss, torch.tensor(0.5 + 1.0 + 1.0))


class _Toy(nn.Module):
    """A shared layer and two heads; task b's targets are 10x task a's."""

    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.shared = nn.Linear(4, 8)
        self.heads = nn.ModuleDict({"a": nn.Linear(8, 1), "b": nn.Linear(8, 1)})
        gen = torch.Generator().manual_seed(seed)
        self.x = torch.randn(64, 4, generator=gen)
        self.y = {"a": torch.randn(64, generator=gen), "b": 10 * torch.randn(64, generator=gen)}

    def losses(self) -> dict[str, torch.Tensor]:
        hidden = torch.tanh(self.shared(self.x))
        return {n: (head(hidden).squeeze(1) - self.y[n]).square().mean() for n, head in self.heads.items()}


def _train_toy(name: str, seed: int, steps: int = 15) -> tuple[list[float], list[list[float]]]:
    toy = _Toy(seed)
    balancer = get_balancer(name, ["a", "b"], seed=seed)
    optimizer = torch.optim.SGD(toy.parameters(), lr=1e-3)
    totals, weights = [], []
    for _ in range(steps):
        losses = toy.losses()
        norms = task_gradient_norms(losses, toy.shared.parameters()) if name == "gradnorm" else None
        out = balancer(losses)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        if name == "gradnorm":
            balancer.update(losses, norms)
        else:
            with torch.no_grad():  # the same batch at the new parameters
                balancer.update({n: v.detach() for n, v in losses.items()}, toy.losses())
        totals.append(sum(float(v.detach()) for v in losses.values()))
        weights.append([float(w) for w in out.weights.values()])
    return totals, weights


@pytest.mark.parametrize("name", ["gradnorm", "famo"])
def test_gradnorm_and_famo_train_a_toy_problem(name):
    totals, weights = _train_toy(name, seed=0)
    assert all(math.isfinite(t) for t in totals) and totals[-1] < totals[0]
    assert all(w > 0 for step in weights for w in step)
    assert _train_toy(name, seed=0) == (totals, weights)  # reproducible from the seed
    if name == "gradnorm":
        assert all(abs(sum(step) - 2) < 1e-5 for step in weights)  # renormalised to sum T


def test_gradnorm_step_moves_weights_toward_equal_gradient_norms():
    gradnorm = build("gradnorm", tasks=["a", "b"], lr=0.025, alpha=1.5)
    losses = {"a": torch.tensor(1.0), "b": torch.tensor(1.0)}
    # equal loss ratios: the targets are the mean weighted norm, 2; a (norm 1) gains, b (norm 3) loses
    gradnorm.update(losses, {"a": torch.tensor(1.0), "b": torch.tensor(3.0)})
    torch.testing.assert_close(gradnorm.task_weights, torch.tensor([1.025, 0.975]))  # Adam's first step: lr
    # a task whose loss falls slower (inverse rate 1 vs 0.5) gets a higher target
    gradnorm.update({"a": torch.tensor(1.0), "b": torch.tensor(0.5)}, {"a": torch.tensor(2.0), "b": torch.tensor(2.0)})
    assert gradnorm.task_weights[0] > 1.025


def test_task_gradient_norms_match_autograd_and_leave_grads_alone():
    toy = _Toy(0)
    losses = toy.losses()
    norms = task_gradient_norms(losses, toy.shared.parameters())
    for name, loss in losses.items():
        grads = torch.autograd.grad(loss, list(toy.shared.parameters()), retain_graph=True)
        torch.testing.assert_close(norms[name], torch.sqrt(sum(g.square().sum() for g in grads)))
    assert all(p.grad is None for p in toy.parameters())
    sum(losses.values()).backward()  # the graph is still there for the trainer's backward


def test_famo_forward_weights_are_the_loss_gradient_and_update_follows_log_progress():
    famo = build("famo", tasks=["a", "b"])
    losses = {"a": torch.tensor(2.0, requires_grad=True), "b": torch.tensor(0.5, requires_grad=True)}
    out = famo(losses)
    z, distance = torch.tensor([0.5, 0.5]), torch.tensor([2.0, 0.5])
    c = 1 / (z / distance).sum()
    expected = 2 * c * z / distance  # T * c z_t / D_t
    torch.testing.assert_close(torch.stack(list(out.weights.values())), expected)
    grads = torch.autograd.grad(out.loss, [losses["a"], losses["b"]])
    torch.testing.assert_close(torch.stack(grads), expected)
    # a's log loss falls by log 2, b's by log 1.25: a loses weight
    famo.update({"a": torch.tensor(2.0), "b": torch.tensor(0.5)}, {"a": torch.tensor(1.0), "b": torch.tensor(0.4)})
    torch.testing.assert_close(famo.logits, torch.tensor([-0.025, 0.025]))  # Adam's first step: lr * sign
    assert famo.probabilities()[0] < 0.5


def test_combiners_leave_their_input_untouched():
    grads = randn(3, 6, seed=4)
    before = grads.clone()
    for name in COMBINERS:
        build(name)(grads)
    assert torch.equal(grads, before)
