"""Loss weightings and gradient aggregators against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from mtlseg.errors import ConfigError, TrainingError
from mtlseg.weighting import BackwardContext, build_weighting


def _losses(**values: float) -> dict[str, torch.Tensor]:
    return {k: torch.tensor(v, requires_grad=True) for k, v in values.items()}


def test_equal_ignores_recipe_weights():
    w = build_weighting("equal", {}, {"seg": 1.0, "aux": 0.1}, "seg")
    total = w(_losses(seg=2.0, aux=3.0))
    assert float(total.detach()) == pytest.approx(5.0)
    assert w.logs() == {"weight_seg": 1.0, "weight_aux": 1.0}


def test_rlw_draws_softmax_normal_weights_each_step():
    w = build_weighting("rlw", {}, {"seg": 1.0, "aux": 1.0}, "seg")
    torch.manual_seed(0)
    first = w.weights(_losses(seg=1.0, aux=1.0), 0)
    torch.manual_seed(0)
    z = torch.softmax(torch.randn(2), dim=0)
    assert [first["seg"], first["aux"]] == pytest.approx(z.tolist())
    assert sum(first.values()) == pytest.approx(1.0)
    second = w.weights(_losses(seg=1.0, aux=1.0), 1)
    assert second["seg"] != pytest.approx(first["seg"])


def test_uw_weights_and_gradient_follow_kendall_formula():
    w = build_weighting(
        "uw", {"init": 0.0}, {"seg": 1.0, "aux": 1.0}, "seg", {"seg": "classification"}
    )
    losses = _losses(seg=3.0, aux=0.5)
    total = w(losses)
    # s = 0: classification exp(-s) L + s/2 = 3; regression 0.5 exp(-s) L + s/2 = 0.25
    assert float(total.detach()) == pytest.approx(3.25)
    assert w.logs()["weight_seg"] == pytest.approx(1.0)
    assert w.logs()["weight_aux"] == pytest.approx(0.5)
    total.backward()
    # d/ds: -exp(-s) L + 0.5 = -2.5 (seg), -0.5 exp(-s) L + 0.5 = 0.25 (aux)
    assert w.log_vars.grad.tolist() == pytest.approx([-2.5, 0.25])
    with torch.no_grad():
        w.log_vars -= 0.1 * w.log_vars.grad  # a large loss raises s: its weight falls
    assert w.log_vars[0] > 0 > w.log_vars[1]


def test_uw_rejects_unknown_form_and_task():
    tasks = {"seg": 1.0, "aux": 1.0}
    with pytest.raises(ConfigError, match="forms.aux: 'gaussian'; valid: regression, classif"):
        build_weighting("uw", {"forms": {"aux": "gaussian"}}, tasks, "seg")
    with pytest.raises(ConfigError, match="forms: no task 'depth'; tasks: seg, aux$"):
        build_weighting("uw", {"forms": {"depth": "regression"}}, tasks, "seg")


@pytest.mark.parametrize(
    "kind, params, message",
    [
        ("dwa", {"unit": "day"}, "unit must be epoch or step, got 'day'"),
        ("dwa", {"every": 0}, "every must be >= 1, got 0"),
        ("nash-mtl", {"on_failure": "ignore"}, "on_failure must be count or error, got 'ignore'"),
        ("nash-mtl", {"update_weights_every": 0}, "update_weights_every must be >= 1, got 0"),
    ],
)
def test_weightings_name_a_bad_parameter(kind, params, message):
    with pytest.raises(ConfigError, match=message):
        build_weighting(kind, params, {"seg": 1.0, "aux": 1.0}, "seg")


def test_famo_weights_and_logit_step():
    w = build_weighting("famo", {"lr": 0.1}, {"a": 1.0, "b": 1.0}, "a")
    first = w.weights(_losses(a=2.0, b=0.5), 0)
    # uniform z: w_i = 1 / (L_i sum_j 1/L_j) = 1/(2 * 2.5), 1/(0.5 * 2.5)
    assert first["a"] == pytest.approx(0.2) and first["b"] == pytest.approx(0.8)
    # a's loss barely falls, b's halves: FAMO shifts weight towards a
    w.weights(_losses(a=1.9, b=0.25), 1)
    z = torch.softmax(w.logits.detach(), dim=0)
    assert z[0] > 0.5 > z[1]
    # the logits and their Adam state survive a checkpoint round trip exactly
    clone = build_weighting("famo", {"lr": 0.1}, {"a": 1.0, "b": 1.0}, "a")
    clone.load_state_dict(w.state_dict())
    after_a = w.weights(_losses(a=1.8, b=0.2), 2)
    after_b = clone.weights(_losses(a=1.8, b=0.2), 2)
    assert after_a == pytest.approx(after_b, rel=1e-6)
    # nothing the model's optimiser or DDP's reducer would update
    assert not any(p.requires_grad for p in w.parameters())


def test_famo_follows_algorithm_1_with_recipe_weights_a_loss_bound_and_weight_decay():
    cfg = {"lr": 0.1, "weight_decay": 0.01, "min_loss": 0.1}
    w = build_weighting("famo", cfg, {"a": 1.0, "b": 0.5}, "a")
    # the reference: Algorithm 1's logit step, d = J_softmax^T delta, by torch's own Adam
    xi = torch.zeros(2, requires_grad=True)
    adam = torch.optim.Adam([xi], lr=0.1, weight_decay=0.01)
    recipe = torch.tensor([1.0, 0.5])
    prev = None
    for step, (a, b) in enumerate([(2.0, 0.6), (1.9, 0.5), (1.8, 0.45)]):
        got = w.weights(_losses(a=a, b=b), step)
        shifted = torch.tensor([a, b]) * recipe - 0.1  # w_i L_i - b_i
        if prev is not None:
            z = torch.softmax(xi.detach(), 0)
            delta = prev.log() - shifted.log()
            xi.grad = z * (delta - (z * delta).sum())
            adam.step()
        prev = shifted
        z = torch.softmax(xi.detach(), 0)
        expected = z / ((z / shifted).sum() * shifted) * recipe
        assert [got["a"], got["b"]] == pytest.approx(expected.tolist(), rel=1e-5), step
    assert torch.allclose(w.logits, xi.detach(), atol=1e-6)
    assert float(xi[0]) > 0 > float(xi[1])  # b's loss fell faster: weight moves to a


def test_gradnorm_first_step_by_hand_with_recipe_weights():
    w = build_weighting("gradnorm", {"alpha": 1.5}, {"a": 1.0, "b": 0.5}, "a")
    shared = torch.ones(2, requires_grad=True)
    feature = shared * 1.0
    losses = {"a": 3 * feature[0], "b": 4 * feature[1]}  # w_i L_i: gradients 3 and 2 at W
    ctx = BackwardContext([shared], [], features={"bottleneck": feature})
    w.backward(losses, w(losses), ctx)
    # G = K softmax(0) * (3, 2) = (3, 2), target mean 2.5 (rates 1 at the first step);
    # d sum|G_i - 2.5| / d logit_j = sum_i sign_i n_i (delta_ij - 1/2) = (2.5, -2.5)
    assert w.logits.grad.tolist() == pytest.approx([2.5, -2.5])
    assert w.logs()["grad_norm_b"] == pytest.approx(2.0)
    with pytest.raises(
        ConfigError, match="feature='nope': the backbone has no such feature; it has: bottleneck$"
    ):
        build_weighting("gradnorm", {"feature": "nope"}, {"a": 1.0, "b": 0.5}, "a").backward(
            losses, w(losses), ctx
        )


def test_gradnorm_equalises_gradient_norms_on_a_toy_problem():
    torch.manual_seed(0)
    w = build_weighting("gradnorm", {"alpha": 0.0}, {"a": 1.0, "b": 1.0}, "a")
    opt = torch.optim.SGD(w.parameters(), lr=0.05)
    x = torch.randn(16, 4)
    weight = torch.randn(4, 4, requires_grad=True)

    def step() -> torch.Tensor:
        feature = x @ weight
        losses = {"a": 10 * feature[:, 0].pow(2).mean(), "b": feature[:, 1].pow(2).mean()}
        total = w(losses)
        opt.zero_grad()
        w.backward(losses, total, BackwardContext([weight], [], {"bottleneck": feature}))
        opt.step()
        norms = torch.tensor([w.logs()["grad_norm_a"], w.logs()["grad_norm_b"]])
        return norms.max() / norms.min()

    start = step()
    for _ in range(200):
        end = step()
    assert start > 3 and end < 1.1
    assert w.logs()["weight_b"] > w.logs()["weight_a"]
    assert w.logs()["weight_a"] + w.logs()["weight_b"] == pytest.approx(2.0)


def _aggregate(kind: str, grads: list[list[float]], params: dict | None = None):
    """Shared theta, one linear loss per gradient, one head param for the first task, and a
    shared parameter no loss reaches."""
    theta = torch.zeros(len(grads[0]), requires_grad=True)
    unreached = torch.zeros(3, requires_grad=True)
    head = torch.tensor(1.5, requires_grad=True)
    names = [f"t{i}" for i in range(len(grads))]
    w = build_weighting(kind, params or {}, dict.fromkeys(names, 1.0), names[0])
    losses = {n: torch.tensor(g) @ theta for n, g in zip(names, grads, strict=True)}
    losses[names[0]] = losses[names[0]] + head**2
    total = w(losses)
    w.backward(losses, total, BackwardContext([theta, unreached], [head]))
    if kind != "nash-mtl":  # torchjd's convention; Nash-MTL follows its authors' code
        assert head.grad.item() == pytest.approx(3.0), "the head keeps its own task's gradient"
    assert unreached.grad is None, "as with a plain backward: no gradient, not a zero one"
    w.head_grad = head.grad.item()
    return theta.grad, w.logs()


def test_aligned_mtl_passes_each_scale_mode_to_torchjd():
    from torchjd.aggregation import AlignedMTL

    grads = [[1.0, 0.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 9.0]]  # scales 1, 4, 9
    got = {
        mode: _aggregate("aligned-mtl", grads, {"scale_mode": mode})[0]
        for mode in ("min", "median", "rmse")
    }
    for mode, grad in got.items():
        assert torch.allclose(grad, AlignedMTL(scale_mode=mode)(torch.tensor(grads))), mode
    assert not torch.allclose(got["min"], got["median"]), "the modes differ here"
    with pytest.raises(ConfigError, match="min, median or rmse"):
        build_weighting("aligned-mtl", {"scale_mode": "mean"}, {"a": 1.0, "b": 1.0}, "a")


def test_pcgrad_projects_conflicting_gradients():
    grad, logs = _aggregate("pcgrad", [[1.0, 0.0], [-1.0, 1.0]])
    # g1' = g1 - (g1.g2/|g2|^2) g2 = (0.5, 0.5); g2' = g2 - (g2.g1/|g1|^2) g1 = (0, 1)
    assert grad.tolist() == pytest.approx([0.5, 1.5])
    assert logs["cos_t0-t1"] == pytest.approx(-1 / math.sqrt(2))


def test_mgda_finds_the_min_norm_point():
    grad, logs = _aggregate("mgda", [[1.0, 0.0], [0.0, 1.0]])
    assert grad.tolist() == pytest.approx([0.5, 0.5], abs=1e-3)
    assert logs["weight_t0"] == pytest.approx(0.5, abs=1e-3)


def test_upgrad_averages_non_conflicting_gradients():
    grad, _ = _aggregate("upgrad", [[1.0, 0.0], [1.0, 1.0]])
    assert grad.tolist() == pytest.approx([1.0, 0.5], abs=1e-4)


def test_imtlg_update_has_equal_projections_on_each_unit_gradient():
    grads = [[3.0, 0.0], [1.0, 2.0]]
    grad, _ = _aggregate("imtl-g", grads)
    units = [torch.tensor(g) / torch.tensor(g).norm() for g in grads]
    assert float(grad @ units[0]) == pytest.approx(float(grad @ units[1]), rel=1e-4)
    assert float(grad @ units[0]) > 0


@pytest.mark.parametrize("kind", ["cagrad", "aligned-mtl"])
def test_other_aggregators_give_a_descent_direction_for_every_task(kind):
    grads = [[1.0, 0.2], [-0.5, 1.0]]
    grad, _ = _aggregate(kind, grads)
    for g in grads:
        assert float(grad @ torch.tensor(g)) > 0


def test_nash_mtl_weights_satisfy_the_bargaining_condition():
    grads = [[2.0, 0.0], [0.0, 1.0]]
    _, logs = _aggregate("nash-mtl", grads, {"max_norm": 0.0})
    alpha = torch.tensor([logs["weight_t0"], logs["weight_t1"]], dtype=torch.float64)
    g = torch.tensor(grads, dtype=torch.float64)
    gtg = g @ g.T  # G^T G alpha = 1 / alpha (Navon et al. 2022, eq. 2): here alpha = (1/2, 1)
    assert (gtg @ alpha).tolist() == pytest.approx((1 / alpha).tolist(), rel=1e-2)
    assert logs["solver_failures"] == 0


@pytest.mark.parametrize("max_norm", [0.0, 0.1])
def test_nash_mtl_heads_get_the_alpha_weighted_gradient_unclipped(max_norm):
    """Navon et al.'s code backpropagates sum_i alpha_i L_i through every parameter and clips
    only the shared ones (clip_grad_norm_ on shared_parameters): here the head of t0 gets
    alpha_0 * dL_0/dhead = alpha_0 * 3, the shared update is clipped to max_norm."""
    theta = torch.zeros(2, requires_grad=True)
    head = torch.tensor(1.5, requires_grad=True)
    w = build_weighting("nash-mtl", {"max_norm": max_norm}, {"t0": 1.0, "t1": 1.0}, "t0")
    losses = {
        "t0": torch.tensor([2.0, 0.0]) @ theta + head**2,
        "t1": torch.tensor([0.0, 1.0]) @ theta,
    }
    w.backward(losses, w(losses), BackwardContext([theta], [head]))
    alpha = w.aggregator.weighting.prvs_alpha  # the solved alpha, before any clipping
    assert alpha.tolist() == pytest.approx([0.5, 1.0], rel=1e-2)  # G^T G alpha = 1 / alpha
    assert head.grad.item() == pytest.approx(3.0 * float(alpha[0]), rel=1e-6)
    shared = float(theta.grad.norm())
    unclipped = math.hypot(2 * alpha[0], alpha[1])
    assert shared == pytest.approx(min(unclipped, max_norm) if max_norm else unclipped, rel=1e-3)
    # the other aggregators keep torchjd's convention: the head's own task's gradient
    theta.grad = head.grad = None
    u = build_weighting("upgrad", {}, {"t0": 1.0, "t1": 1.0}, "t0")
    losses = {
        "t0": torch.tensor([2.0, 0.0]) @ theta + head**2,
        "t1": torch.tensor([0.0, 1.0]) @ theta,
    }
    u.backward(losses, u(losses), BackwardContext([theta], [head]))
    assert head.grad.item() == pytest.approx(3.0)


def test_nash_mtl_solver_failure_is_counted_or_raised():
    grads = [[0.0, 0.0], [0.0, 1.0]]  # a zero gradient: the bargaining problem is infeasible
    _, logs = _aggregate("nash-mtl", grads)
    assert logs["solver_failures"] >= 1
    with pytest.raises(TrainingError, match="Nash-MTL"):
        _aggregate("nash-mtl", grads, {"on_failure": "error"})


def test_nash_mtl_state_survives_a_checkpoint():
    theta = torch.zeros(2, requires_grad=True)
    tasks = {"a": 1.0, "b": 1.0}
    w = build_weighting("nash-mtl", {"update_weights_every": 2}, tasks, "a")

    def run(weighting, g):
        losses = {"a": torch.tensor(g[0]) @ theta, "b": torch.tensor(g[1]) @ theta}
        weighting.backward(losses, weighting(losses), BackwardContext([theta], []))
        return weighting.logs()

    run(w, [[2.0, 0.0], [0.0, 1.0]])  # solves (step 0)
    clone = build_weighting("nash-mtl", {"update_weights_every": 2}, tasks, "a")
    clone.load_state_dict(w.state_dict())
    # step 1 reuses the last alpha without solving, in both; the gradients differ on purpose
    assert run(clone, [[1.0, 0.0], [0.0, 5.0]]) == pytest.approx(run(w, [[1.0, 0.0], [0.0, 5.0]]))
    # step 2 solves again, warm-started from the restored alpha and normalisation factor
    assert run(clone, [[3.0, 1.0], [0.5, 2.0]]) == pytest.approx(run(w, [[3.0, 1.0], [0.5, 2.0]]))


@pytest.mark.parametrize("max_norm", [0.0, 0.5])
def test_nash_mtl_between_solves_gives_torchjds_gradient_without_a_jacobian(max_norm):
    from mtlseg.weighting.aggregator import AggregatorWeighting

    def step(weighting, fast: bool, g):
        theta, head = torch.zeros(2, requires_grad=True), torch.ones(1, requires_grad=True)
        losses = {
            n: (torch.tensor(row) @ theta) * head[0] ** 2 for n, row in zip("ab", g, strict=True)
        }
        ctx = BackwardContext([theta], [head])
        if fast:
            weighting.backward(losses, weighting(losses), ctx)
        else:  # the generic path: torchjd's NashMTL on the full Jacobian
            AggregatorWeighting.backward(weighting, losses, weighting(losses), ctx)
        return theta.grad.clone(), head.grad.clone(), weighting.logs()

    params = {"update_weights_every": 3, "max_norm": max_norm}
    fast = build_weighting("nash-mtl", params, {"a": 1.0, "b": 2.0}, "a")
    slow = build_weighting("nash-mtl", params, {"a": 1.0, "b": 2.0}, "a")
    step(fast, True, [[2.0, 0.0], [0.0, 1.0]])  # step 0 solves in both
    slow.load_state_dict(fast.state_dict())
    for g in ([[1.0, 0.5], [0.2, 3.0]], [[4.0, 0.0], [1.0, 1.0]]):  # steps 1, 2 reuse alpha
        a, b = step(fast, True, g), step(slow, False, g)
        assert torch.allclose(a[0], b[0], rtol=1e-5, atol=1e-7) and torch.equal(a[1], b[1])
        assert a[2]["weight_a"] == pytest.approx(b[2]["weight_a"], rel=1e-5)
    assert fast.aggregator.weighting.step == slow.aggregator.weighting.step == 3


def test_aggregator_sees_the_unscaled_jacobian_under_amp_loss_scaling():
    """AMP hands backward a scaled loss: Nash-MTL clips ||J^T alpha||, which is not
    scale-invariant, so .grad must be exactly scale x the unscaled result (unscale_ then
    divides it back)."""
    grads = []
    for scale in (1.0, 1024.0):
        theta = torch.zeros(2, requires_grad=True)
        w = build_weighting("nash-mtl", {"max_norm": 0.5}, {"a": 1.0, "b": 1.0}, "a")
        losses = {"a": torch.tensor([3.0, 0.0]) @ theta, "b": torch.tensor([0.0, 2.0]) @ theta}
        w.backward(losses, w(losses) * scale, BackwardContext([theta], [], scale=scale))
        grads.append(theta.grad / scale)
    assert torch.allclose(grads[0], grads[1], rtol=1e-5)
    assert float(grads[0].norm()) == pytest.approx(0.5, rel=1e-3), "max_norm clipped it"


def test_nash_mtl_between_solves_adds_to_accumulated_grads_at_any_loss_scale():
    """The reuse step (between solves) under AMP loss scaling and gradient accumulation:
    .grad / scale is the same at every scale, and what was in .grad before is kept."""
    results = []
    for scale in (1.0, 1024.0):
        for accumulated in (False, True):
            theta = torch.ones(2, requires_grad=True)
            head = torch.ones(1, requires_grad=True)
            w = build_weighting(
                "nash-mtl", {"max_norm": 0.5, "update_weights_every": 2}, {"a": 1, "b": 1}, "a"
            )
            for step, rows in enumerate([[[3.0, 0.0], [0.0, 2.0]], [[1.0, 1.0], [0.0, 4.0]]]):
                theta.grad = head.grad = None  # the optimiser's zero_grad
                if step == 1 and accumulated:  # an earlier micro-batch's gradients
                    theta.grad, head.grad = torch.full((2,), scale), torch.full((1,), 2 * scale)
                losses = {
                    n: (torch.tensor(r) @ theta) * head[0] ** 2
                    for n, r in zip("ab", rows, strict=True)
                }
                ctx = BackwardContext([theta], [head], scale=scale)
                w.backward(losses, w(losses) * scale, ctx)
            before = (1.0, 2.0) if accumulated else (0.0, 0.0)
            results.append((theta.grad / scale - before[0], head.grad / scale - before[1]))
    for theta_grad, head_grad in results[1:]:
        assert torch.allclose(theta_grad, results[0][0], rtol=1e-5)
        assert torch.allclose(head_grad, results[0][1], rtol=1e-5)
    assert float(results[0][0].norm()) == pytest.approx(0.5, rel=1e-4), "clipped to max_norm"
    assert float(results[0][1].abs()) > 0.5, "the head's part is not clipped"


@pytest.mark.parametrize("weighted", [False, True])
def test_gcs_uses_an_auxiliary_gradient_only_where_it_agrees_with_the_primary(weighted):
    """Du et al. 2018: g_0 = (1, 0); g_1 = (1, 1) agrees (cos 1/sqrt 2), g_2 = (-1, 0.1)
    opposes it and is left out."""
    theta = torch.zeros(2, requires_grad=True)
    names = ["t0", "t1", "t2"]
    w = build_weighting("gcs", {"weighted": weighted}, dict.fromkeys(names, 1.0), "t0")
    grads = [[1.0, 0.0], [1.0, 1.0], [-1.0, 0.1]]
    for _ in range(2):
        theta.grad = None
        losses = {n: torch.tensor(g) @ theta for n, g in zip(names, grads, strict=True)}
        w.backward(losses, w(losses), BackwardContext([theta], []))
    c = 1 / math.sqrt(2) if weighted else 1.0
    assert theta.grad.tolist() == pytest.approx([1.0 + c, c])
    logs = w.logs()
    assert logs["gated_t2"] == 1.0 and logs["gated_t1"] == 0.0  # share of the 2 steps
    assert logs["weight_t1"] == pytest.approx(c) and logs["weight_t2"] == 0.0
    state = w.state_dict()
    assert int(state["gated"][2]) == 2 and int(state["steps"]) == 2


@pytest.mark.parametrize("gate", [False, True])
def test_gcs_leaves_a_label_free_loss_ungated_unless_told(gate):
    """A consistency term on the pool (label-free) opposing the labelled loss still counts
    by default; ``gate_label_free: true`` gates it as Du et al. gate a task."""
    theta = torch.zeros(2, requires_grad=True)
    names = ["seg", "aux", "consistency"]
    w = build_weighting(
        "gcs", {"gate_label_free": gate}, dict.fromkeys(names, 1.0), "seg", None, ["consistency"]
    )
    grads = [[1.0, 0.0], [-1.0, 0.5], [-1.0, 0.1]]  # both auxiliary gradients oppose seg's
    losses = {n: torch.tensor(g) @ theta for n, g in zip(names, grads, strict=True)}
    w.backward(losses, w(losses), BackwardContext([theta], []))
    # seg's (1, 0), plus the consistency's (-1, 0.1) unless it is gated
    assert theta.grad.tolist() == pytest.approx([1.0, 0.0] if gate else [0.0, 0.1])
    assert w.logs()["weight_aux"] == 0.0  # a task with labels of its own is gated either way
    assert w.logs()["weight_consistency"] == (0.0 if gate else 1.0)


def test_the_module_tells_the_weighting_which_losses_are_label_free():
    from mtlseg.engine.module import MultiTaskModule
    from mtlseg.settings import load_config

    cfg = load_config("unet-dtc", ["model.params.channels=[4,8,16]", "weighting.kind=gcs"])
    module = MultiTaskModule(cfg.to_dict(), 1, ["background", "foreground"])
    assert module.weighting.label_free == {"dtc"}  # the distance task has its masks


@pytest.mark.parametrize("scale", [0.1, 10.0])
def test_gcs_similarity_weights_by_hand_at_any_gradient_scale(scale):
    from mtlseg.weighting.gcs import similarity_weights

    # primary (2, 0); (3, 3) agrees (cos 1/sqrt 2); (0, 5) is orthogonal: cos 0 does not
    # agree, it is left out; (-1, 1) opposes it
    matrix = scale * torch.tensor([[2.0, 0.0], [3.0, 3.0], [0.0, 5.0], [-1.0, 1.0]])
    plain = similarity_weights(matrix, 0, weighted=False)
    assert plain.tolist() == [1.0, 1.0, 0.0, 0.0]
    weighted = similarity_weights(matrix, 0, weighted=True)
    assert weighted.tolist() == pytest.approx([1.0, 1 / math.sqrt(2), 0.0, 0.0])


def test_rlw_outside_training_weighs_every_task_by_its_share():
    w = build_weighting("rlw", {}, {"seg": 1.0, "aux": 0.5, "other": 3.0}, "seg")
    w.eval()  # validation: no random draw, the mean of the random weights (1/K each)
    got = w.weights(_losses(seg=1.0, aux=1.0, other=1.0), 0)
    assert got == pytest.approx({"seg": 1 / 3, "aux": 0.5 / 3, "other": 1.0})


def test_aggregators_log_the_cosine_of_each_pair_of_small_gradients_once():
    # gradients of norm < 1 (the clamp only guards 0): cos(t0, t1) = 0.6, t0 and t2 opposite
    _, logs = _aggregate("upgrad", [[0.03, 0.04], [0.05, 0.0], [-0.03, -0.04]])
    cos = {k: v for k, v in logs.items() if k.startswith("cos_")}
    assert cos == pytest.approx({"cos_t0-t1": 0.6, "cos_t0-t2": -1.0, "cos_t1-t2": -0.6})


def test_the_generic_aggregator_path_sees_the_unscaled_jacobian():
    """Nash-MTL through torchjd's generic path is not scale-invariant (alpha_i (G alpha)_i
    = 1): .grad / scale must not depend on the AMP scale."""
    from mtlseg.weighting.aggregator import AggregatorWeighting

    grads = []
    for scale in (1.0, 2.0, 1024.0):
        theta = torch.zeros(2, requires_grad=True)
        w = build_weighting("nash-mtl", {"max_norm": 0.0}, {"a": 1.0, "b": 1.0}, "a")
        losses = {"a": torch.tensor([3.0, 1.0]) @ theta, "b": torch.tensor([0.0, 2.0]) @ theta}
        AggregatorWeighting.backward(
            w, losses, w(losses) * scale, BackwardContext([theta], [], scale=scale)
        )
        grads.append(theta.grad / scale)
    assert torch.allclose(grads[1], grads[0], rtol=1e-4) and torch.allclose(
        grads[2], grads[0], rtol=1e-4
    )


def test_a_gradient_method_without_its_extra_says_what_to_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda m: None if m == "cvxpy" else real(m))
    with pytest.raises(
        ConfigError,
        match='NashMTLWeighting needs cvxpy, which are not installed: pip install "mtlseg\\[nash-mtl\\]"',
    ):
        build_weighting("nash-mtl", {}, {"a": 1.0, "b": 1.0}, "a")


@pytest.mark.parametrize("kind", ["pcgrad", "nash-mtl"])
def test_aggregators_take_the_jacobian_through_norm_layers_run_under_bf16_autocast(kind):
    """torch's vmapped backward fails through a conv + batch norm run under CPU bf16 autocast;
    under mixed precision the Jacobian is taken row by row. PCGrad's update is checked
    against each task's own gradient projected by hand (two tasks: 1e-2 tolerance, bf16)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4))
    x = torch.randn(2, 1, 6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = net(x).float()
    losses = {"a": y.mean(), "b": (y[:, :2] ** 2).mean() - y.mean()}
    params = list(net.parameters())
    grads = [
        torch.cat([g.flatten() for g in torch.autograd.grad(v, params, retain_graph=True)])
        for v in losses.values()
    ]
    w = build_weighting(kind, {}, {"a": 1.0, "b": 1.0}, "a")
    w.backward(losses, w(losses), BackwardContext(params, [], mixed_precision=True))
    update = torch.cat([p.grad.flatten() for p in params])
    g1, g2 = grads
    if kind == "nash-mtl":  # J^T alpha with the weights it solved (and clipped) for
        expected = w.logs()["weight_a"] * g1 + w.logs()["weight_b"] * g2
    else:
        dot = float(g1 @ g2)
        assert dot < 0, "the test needs conflicting task gradients"
        expected = (g1 - dot / float(g2 @ g2) * g2) + (g2 - dot / float(g1 @ g1) * g1)
    torch.testing.assert_close(update, expected, rtol=1e-2, atol=1e-4)
