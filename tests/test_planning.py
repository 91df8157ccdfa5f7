"""Planners: CEM/MPPI on known costs, bounds, MPC with a ground-truth model, hierarchical support."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from data.generated.envs import EnvConfig, make_layout, step_positions
from hjepa.world_model.evaluate import TaskConfig, make_tasks, run_episodes
from hjepa.world_model.planning import (FlatPlanner, HierarchicalConfig, HierarchicalPlanner, PlannerConfig, optimize,
                            snap_to_bank)


def quadratic(target):
    return lambda a: ((a - target[:, None]) ** 2).sum((-1, -2))  # [B, N, H, A] -> [B, N]


@pytest.mark.parametrize("method", ["cem", "mppi"])
def test_optimizer_finds_quadratic_minimum(method):
    g = torch.Generator().manual_seed(0)
    target = torch.rand(4, 5, 2, generator=g) * 1.6 - 0.8  # [B, H, A], inside the bounds
    cfg = PlannerConfig(method=method, horizon=5, samples=256, iterations=12, init_std=0.5, min_std=0.01)
    best, cost = optimize(quadratic(target), torch.zeros(4, 5, 2), cfg, g)
    assert (best - target).abs().max() < 0.1
    assert cost.max() < 0.02


def test_action_bounds_are_respected():
    g = torch.Generator().manual_seed(0)
    target = torch.full((2, 3, 2), 5.0)  # optimum outside the box
    cfg = PlannerConfig(horizon=3, samples=128, iterations=6, low=-0.5, high=0.5)
    best, _ = optimize(quadratic(target), torch.zeros(2, 3, 2), cfg, g)
    assert best.min() >= -0.5 and best.max() <= 0.5
    assert (best - 0.5).abs().max() < 0.05


def test_bad_planner_config_is_an_error():
    with pytest.raises(ValueError, match="method"):
        optimize(quadratic(torch.zeros(1, 2, 2)), torch.zeros(1, 2, 2), PlannerConfig(method="ilqr"),
                 torch.Generator())


class TruePredictor:
    """Ground-truth dynamics on the representation z = position (a perfect world model).
    `stride` > 1 with 2-d macro-actions: the macro code is a constant action held for `stride` steps."""

    def __init__(self, env_cfg, walls, stride=1):
        self.env_cfg, self.walls, self.stride = env_cfg, walls, stride
        self.cfg = SimpleNamespace(encoder="identity")  # as a level: its states are level 0's

    def rollout(self, z0, actions, context=None):
        pos = z0[:, -1].numpy().astype(np.float64)
        walls = np.repeat(self.walls, len(pos), 0)
        out = []
        for h in range(actions.shape[1]):
            for _ in range(self.stride):
                pos = step_positions(walls, pos, actions[:, h].numpy(), self.env_cfg)
            out.append(torch.from_numpy(pos).float())
        return torch.stack(out, 1)


class TrueEncoder:
    """Image -> agent position (centroid of the agent channel): a perfect encoder."""

    def encode(self, frames):
        m = frames[:, 1]  # [B, S, S]
        S = m.shape[-1]
        c = (torch.arange(S, dtype=torch.float32) + 0.5) / S
        w = m / m.sum((1, 2), keepdim=True)
        return torch.stack([(w.sum(1) * c).sum(-1), (w.sum(2) * c).sum(-1)], -1)


def test_mpc_reaches_goal_with_perfect_model():
    cfg = EnvConfig(name="two_rooms")
    walls1 = make_layout(cfg, np.random.default_rng(0))
    tasks = make_tasks(walls1[None], TaskConfig(per_bin=4, bins=[[0.2, 0.4]], seed=1))
    walls = np.repeat(walls1[None], 4, 0)
    planner = FlatPlanner(TruePredictor(cfg, walls1[None]), PlannerConfig(horizon=6, samples=64, iterations=3,
                                                                          replan_every=2), seed=0)
    ep = run_episodes(planner, TrueEncoder(), cfg, walls, tasks["start"], tasks["goal"], max_steps=25,
                      radius=0.07, seed=0)
    assert ep["success"].all()
    assert planner.compute == 64 * 3 * 6 * len(range(0, int(ep["steps"].max()), 2))


class TrueWorldModel:
    """A perfect level stack on z = position: level k moves by a macro code held for span_k steps; every
    level shares level 0's space (identity level encoders)."""

    def __init__(self, env_cfg, walls, strides):
        self.strides_, self.num_levels = list(strides), len(strides) + 1
        self.levels = [TruePredictor(env_cfg, walls, self.span(k)) for k in range(self.num_levels)]
        self.predictor = self.levels[0]

    def span(self, k):
        return int(np.prod(self.strides_[:k]))

    def predictor_of(self, k):
        return self.levels[k]

    def state(self, z, k, frm=0):
        return z


# cdist's default uses |x|^2 + |y|^2 - 2 x.y beyond 25 rows: for equal points in float32 that is a rounding
# error whose square root reads ~3e-4, not 0
EXACT = "donot_use_mm_for_euclid_dist"


@pytest.mark.parametrize("strides", [[4], [2, 2]])
def test_hierarchical_subgoals_lie_on_data_support(strides):
    cfg = EnvConfig(name="four_rooms")
    walls1 = make_layout(cfg, np.random.default_rng(0))
    rng = np.random.default_rng(0)
    bank = torch.from_numpy(rng.uniform(-1, 1, (64, 2))).float()  # macro codes seen in "training"
    bank[:, 1] = bank[:, 1].abs()  # the data never moved upwards: half the box is off-support
    K = len(strides)
    hcfg = HierarchicalConfig(levels=[PlannerConfig(horizon=3, samples=32, iterations=2)] * K,
                              level0=PlannerConfig(horizon=4, samples=32, iterations=2, replan_every=2),
                              subgoal_every=strides[0])
    wm = TrueWorldModel(cfg, walls1[None], strides)
    planner = HierarchicalPlanner(wm, [bank] * K, hcfg, seed=0)
    tasks = make_tasks(walls1[None], TaskConfig(per_bin=3, bins=[[0.5, 1.0]], seed=0))
    start = torch.from_numpy(tasks["start"]).float()
    goal = torch.from_numpy(tasks["goal"]).float()
    planner.reset(start, goal)
    planner.act(start, 0)  # every level plans once, top-down
    for k in range(1, K + 1):  # every macro-action of every level's plan is a code of the bank
        assert torch.cdist(planner.plans[k - 1].reshape(-1, 2), bank, compute_mode=EXACT).min(1).values.max() == 0
    # level 0's target, per problem: a state one bank macro-action of level 1 away from the start, or a
    # target passed down from above (the goal, or a level-2 subgoal)
    (sub, _, rows), *passed = planner.targets[0]
    reachable = TruePredictor(cfg, walls1[None], strides[0]).rollout(
        start.repeat_interleave(len(bank), 0)[:, None], bank.repeat(3, 1)[:, None])[:, 0].view(3, len(bank), 2)
    for i in range(3):
        if rows[i]:
            assert torch.cdist(sub[i:i + 1], reachable[i], compute_mode=EXACT).min() < 1e-5
        else:
            assert sum(int(r[i]) for _, _, r in passed) == 1  # exactly one part covers the problem
    if K == 1:
        torch.testing.assert_close(planner.subgoals[0], torch.where(rows[:, None], sub, goal))
    assert planner.compute == sum(c.compute() for c in hcfg.levels) + hcfg.level0.compute()


def test_hierarchical_planner_checks_levels_against_the_model():
    cfg = EnvConfig(name="two_rooms")
    wm = TrueWorldModel(cfg, make_layout(cfg, np.random.default_rng(0))[None], [4])
    hcfg = HierarchicalConfig(levels=[PlannerConfig()] * 2, level0=PlannerConfig())
    with pytest.raises(ValueError, match="a planner and a bank per level"):
        HierarchicalPlanner(wm, [torch.zeros(4, 2)], hcfg, seed=0)


def test_snap_to_bank():
    bank = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    out = snap_to_bank(bank)(torch.tensor([[[0.2, 0.1], [0.9, 0.6]]]))
    assert torch.equal(out, torch.tensor([[[0.0, 0.0], [1.0, 1.0]]]))


def test_goal_cost_reductions_over_the_horizon():
    from hjepa.world_model.planning import LatentGoalCost, check_planner

    class Straight:  # z moves by the action each step
        def rollout(self, z0, actions, context=None):
            return z0[:, -1:] + actions.cumsum(1)

    z_now, goal = torch.zeros(1, 1), torch.tensor([[2.0]])
    actions = torch.tensor([[[[1.0], [1.0], [1.0]]]])  # one candidate: z = 1, 2, 3 -> distances 1, 0, 1
    costs = {r: float(LatentGoalCost(Straight(), z_now, goal, reduce=r)(actions)) for r in ("sum", "final", "min")}
    assert costs == {"sum": 2.0, "final": 1.0, "min": 0.0}
    with pytest.raises(ValueError, match="cost"):
        check_planner(PlannerConfig(cost="max"))


def test_candidates_scored_in_chunks_give_the_same_costs(monkeypatch):
    """`LatentGoalCost` scores B x N candidates in chunks of the candidate axis (`CHUNK_ROWS` rollouts a call,
    to reuse memory): the same costs, bit for bit, as all at once; the calls stay within the chunk size."""
    from hjepa.world_model import planning
    from hjepa.world_model.spatial import ConvPredictor

    torch.manual_seed(0)
    pred = ConvPredictor((4, 6, 6), action_dim=2, width=8, depth=1)
    torch.nn.init.normal_(pred.out.weight, std=0.1)  # not the identity start: the dynamics matter
    rows = []
    real = pred.rollout
    pred.rollout = lambda z0, a, context=None: rows.append(len(z0)) or real(z0, a, context)
    z_now, z_goal = torch.randn(5, 144), torch.randn(5, 144)
    actions = torch.rand(5, 37, 3, 2) * 2 - 1
    monkeypatch.setattr(planning, "CHUNK_ROWS", 10 ** 9)
    whole = planning.LatentGoalCost(pred, z_now, z_goal, reduce="sum")(actions)
    assert rows == [5 * 37]
    rows.clear()
    monkeypatch.setattr(planning, "CHUNK_ROWS", 16)  # 3 candidates x 5 problems a call
    chunked = planning.LatentGoalCost(pred, z_now, z_goal, reduce="sum")(actions)
    assert torch.equal(chunked, whole) and chunked.shape == (5, 37)
    assert max(rows) == 15 and sum(rows) == 5 * 37


def test_bfloat16_rollouts_match_float32_and_leave_the_predictor_alone():
    """`precision: bfloat16`: the planner rolls out a bfloat16 copy of the predictor; predictions come back as
    float32, within bfloat16 rounding of the float32 ones, and the world model's own weights stay float32."""
    from hjepa.world_model.planning import check_planner, in_precision
    from hjepa.world_model.spatial import ConvPredictor

    torch.manual_seed(0)
    pred = ConvPredictor((4, 6, 6), action_dim=2, width=8, depth=1)
    torch.nn.init.normal_(pred.out.weight, std=0.1)
    z0, a = torch.randn(7, 1, 144), torch.rand(7, 5, 2) * 2 - 1
    assert in_precision(pred, "float32") is pred
    low = in_precision(pred, "bfloat16")
    with torch.no_grad():
        ref, out = pred.rollout(z0, a), low.rollout(z0, a)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    err = float((out - ref).norm() / (ref - z0).norm())  # relative to how far the states moved
    assert 0 < err < 0.05
    assert all(p.dtype == torch.float32 for p in pred.parameters())
    planner = FlatPlanner(pred, PlannerConfig(horizon=5, samples=8, precision="bfloat16"), seed=0)
    assert planner.predictor.net.inp.weight.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="precision"):
        check_planner(PlannerConfig(precision="float16"))


def test_auto_precision_takes_bfloat16_only_with_amx_and_warns_without(monkeypatch, caplog):
    from hjepa.world_model import planning
    from hjepa.world_model.spatial import ConvPredictor

    # AVX512-BF16 without AMX rolled out slower in bfloat16 than in float32: auto keeps float32 there
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert planning.resolve_precision("auto") == "float32"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert planning.resolve_precision("auto") == "bfloat16"
    pred = ConvPredictor((4, 6, 6), action_dim=2, width=8, depth=1)
    planning._warn_once.cache_clear()
    monkeypatch.setattr(planning, "amx_bfloat16", lambda: True)
    assert isinstance(planning.in_precision(pred, "auto"), planning.CastRollout)
    monkeypatch.setattr(planning, "amx_bfloat16", lambda: False)

    def ours():  # this module's records only: another logger's warning must not fail the test
        return [r.getMessage() for r in caplog.records if r.name == planning.__name__]

    with caplog.at_level("WARNING", logger=planning.__name__):
        assert planning.in_precision(pred, "auto") is pred
        assert not ours()
        assert isinstance(planning.in_precision(pred, "bfloat16"), planning.CastRollout)
    assert len(ours()) == 1 and "slower" in ours()[0]


@pytest.mark.parametrize("reduce", ["sum", "final"])
def test_only_running_problems_are_rolled_out_and_score_as_before(reduce):
    """With `active`, the candidates of finished problems are not rolled out (the predictor sees only the
    running problems' rows) and cost 0; the running problems' costs are those of the whole batch."""
    from hjepa.world_model.planning import LatentGoalCost
    from hjepa.world_model.spatial import ConvPredictor

    torch.manual_seed(0)
    pred = ConvPredictor((4, 6, 6), action_dim=2, width=8, depth=1)
    torch.nn.init.normal_(pred.out.weight, std=0.1)
    rows = []
    real = pred.rollout
    pred.rollout = lambda z0, a, context=None: rows.append(len(z0)) or real(z0, a, context)
    z_now, z_goal = torch.randn(5, 144), torch.randn(5, 144)
    actions = torch.rand(5, 37, 3, 2) * 2 - 1
    active = torch.tensor([True, False, True, True, False])
    whole = LatentGoalCost(pred, z_now, z_goal, reduce=reduce)(actions)
    rows.clear()
    part = LatentGoalCost(pred, z_now, z_goal, reduce=reduce, active=active)(actions)
    assert sum(rows) == 3 * 37  # only the 3 running problems' candidates
    torch.testing.assert_close(part[active], whole[active], rtol=1e-6, atol=1e-6)
    assert (part[~active] == 0).all() and (whole[~active] > 0).all()
    rows.clear()
    assert torch.equal(LatentGoalCost(pred, z_now, z_goal, reduce=reduce, active=torch.ones(5, dtype=torch.bool))(actions),
                       whole) and sum(rows) == 5 * 37
    rows.clear()
    none = LatentGoalCost(pred, z_now, z_goal, reduce=reduce, active=torch.zeros(5, dtype=torch.bool))(actions)
    assert torch.equal(none, torch.zeros(5, 37)) and rows == []  # all finished: nothing rolled out


@pytest.mark.parametrize("hierarchical", [False, True])
def test_skipping_finished_episodes_changes_no_path(hierarchical):
    """Episodes of different lengths, perfect model: planning only for the running ones (the default) gives
    the same paths, successes and compute per episode as planning for all, with fewer rollouts."""
    cfg = EnvConfig(name="two_rooms")
    walls1 = make_layout(cfg, np.random.default_rng(0))
    tasks = make_tasks(walls1[None], TaskConfig(per_bin=3, bins=[[0.1, 0.2], [0.4, 0.6]], seed=1))
    walls = np.repeat(walls1[None], len(tasks["start"]), 0)
    out, rolled = [], []
    for skip in (False, True):
        wm = TrueWorldModel(cfg, walls1[None], [4])
        counted = []
        real = wm.levels[0].rollout
        wm.levels[0].rollout = lambda z0, a, context=None: counted.append(len(z0)) or real(z0, a, context)
        if hierarchical:
            bank = torch.tensor([[x, y] for x in (-1.0, 0.0, 1.0) for y in (-1.0, 0.0, 1.0)])
            planner = HierarchicalPlanner(wm, [bank], HierarchicalConfig(
                levels=[PlannerConfig(horizon=3, samples=16, iterations=2)],
                level0=PlannerConfig(horizon=4, samples=32, iterations=2, replan_every=2), subgoal_every=4), seed=0)
        else:
            planner = FlatPlanner(wm.predictor, PlannerConfig(horizon=6, samples=32, iterations=2, replan_every=2), 0)
        out.append(run_episodes(planner, TrueEncoder(), cfg, walls, tasks["start"], tasks["goal"], max_steps=30,
                                radius=0.07, seed=0, skip_finished=skip))
        rolled.append(sum(counted))
    assert len(set(out[0]["steps"].tolist())) > 1  # episodes end at different steps
    for k in ("success", "steps", "path", "compute"):
        np.testing.assert_array_equal(out[0][k], out[1][k])
    assert rolled[1] < rolled[0]


def test_old_plan_config_level1_becomes_levels():
    from hjepa.world_model.evaluate import PlanConfig
    from vjepa.engine.config import ConfigError, load_config

    cfg = load_config(PlanConfig, raw={"hierarchical": {"level1": {"horizon": 5}}})
    assert [c.horizon for c in cfg.hierarchical.levels] == [5]
    with pytest.raises(ConfigError, match="keep `levels`"):
        load_config(PlanConfig, raw={"hierarchical": {"level1": {"horizon": 5}, "levels": []}})


def test_ensemble_cost_is_the_mean_over_members_and_needs_members():
    from hjepa.world_model.planning import NO_ENSEMBLE, FlatPlanner, LatentGoalCost

    class Shift:  # z moves by `gain` x the action each step
        def __init__(self, gain):
            self.gain = gain

        def rollout(self, z0, actions, context=None):
            return z0[:, -1:] + self.gain * actions.cumsum(1)

    z_now, goal = torch.zeros(1, 1), torch.tensor([[2.0]])
    actions = torch.tensor([[[[1.0], [1.0]]]])  # final z: 2 x gain
    final = {g: float(LatentGoalCost(Shift(g), z_now, goal, reduce="final")(actions)) for g in (1.0, 0.5, 2.0)}
    assert final == {1.0: 0.0, 0.5: 1.0, 2.0: 2.0}
    mean = LatentGoalCost(Shift(1.0), z_now, goal, reduce="final", members=[Shift(0.5), Shift(2.0)])(actions)
    assert float(mean) == 1.0  # (0 + 1 + 2) / 3
    with pytest.raises(ValueError, match="ensemble"):
        FlatPlanner(Shift(1.0), PlannerConfig(ensemble=True), 0)
    assert "predictor.ensemble" in NO_ENSEMBLE
    # planning with members counts every member's rollouts as compute
    planner = FlatPlanner(Shift(1.0), PlannerConfig(horizon=2, samples=4, iterations=1, replan_every=1,
                                                    ensemble=True), 0, members=[Shift(0.5)])
    planner.reset(z_now, goal)
    planner.act(z_now, 0)
    assert planner.compute == 2 * 4 * 1 * 2


def test_plan_job_with_an_ensemble_counts_its_rollouts_and_errs_without_one(tmp_path):
    """A world model trained with `predictor.ensemble=2` saves both predictors and plans with `ensemble: true`
    (compute twice the single predictor's); one trained without gets a ConfigError before any episode."""
    from hjepa.world_model import train as wm_train
    from hjepa.world_model.evaluate import PlanConfig, run
    from hjepa.world_model.train import load_trained
    from tests.test_goal_distance import _wm_overrides
    from vjepa.engine.config import ConfigError, load_config

    plan = ["tasks.per_bin=2", "tasks.bins=[[0.1,0.5],[0.5,1.2]]", "tasks.num_layouts=2", "tasks.layouts=[train]",
            "methods=[cem]", "seeds=[0]", "max_steps=3", "cem.samples=8", "cem.iterations=1", "cem.horizon=2",
            "cem.replan_every=2", "cem.ensemble=true", "examples=0"]
    for name, k in (("one", 1), ("two", 2)):
        wm_train.train(load_config(wm_train.WorldModelConfig, overrides=_wm_overrides(tmp_path / name, steps=0)
                                   + [f"predictor.ensemble={k}"]))
    assert len(load_trained(tmp_path / "two" / "wm-latest.pt")[1].predictors) == 2
    with pytest.raises(ConfigError, match="one level-0 predictor"):
        run(load_config(PlanConfig, overrides=plan + [f"checkpoint={tmp_path / 'one' / 'wm-latest.pt'}",
                                                      f"folder={tmp_path / 'p1'}"]))
    out = run(load_config(PlanConfig, overrides=plan + [f"checkpoint={tmp_path / 'two' / 'wm-latest.pt'}",
                                                        f"folder={tmp_path / 'p2'}"]))
    lines = (out / "results.csv").read_text().splitlines()
    col = lines[0].split(",").index("compute_per_episode")
    # 3 steps, a replan every 2: 2 plans x (8 samples x 1 iteration x horizon 2) x 2 predictors (no success here)
    assert {float(r.split(",")[col]) for r in lines[1:]} == {2 * 16 * 2}
