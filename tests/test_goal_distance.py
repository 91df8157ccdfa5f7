"""The learned goal distance (hjepa/world_model/goal_distance.py): the expectile loss's minimiser, the pair
sampler, shapes of both embeddings, that it learns the step counts of a toy world (and from them a shortest
path shorter than the walks that showed it), its stage in a world-model run (checkpoint, exact resume), and
the planners' `distance: learned` option (errors, and that the cost is the learned one)."""
import logging

import numpy as np
import pytest
import torch

from hjepa.world_model.goal_distance import (DistanceConfig, GoalDistance, check_distance, distance_loss, expectile_loss,
                                             pair_batch, set_normalisation)


def test_expectile_loss_minimiser_is_the_expectile():
    """For targets {0, 10}, tau * (10 - c) = (1 - tau) * c at the minimiser: c = 10 tau (1 at tau 0.1, the
    mean 5 at 0.5): a low tau fits the lower envelope of the step counts."""
    target = torch.tensor([0.0, 10.0])
    for tau, want in ((0.1, 1.0), (0.5, 5.0), (0.9, 9.0)):
        c = torch.linspace(0, 10, 1001)
        loss = torch.stack([expectile_loss(ci.expand(2), target, tau) for ci in c])
        assert c[loss.argmin()].item() == pytest.approx(want, abs=0.011)


def test_pairs_come_from_one_episode_with_their_step_count_and_replay_by_step():
    N, T1 = 5, 7
    z = torch.stack(torch.meshgrid(torch.arange(N).float(), torch.arange(T1).float(), indexing="ij"), -1)  # z = (n, t)
    b = pair_batch(z, 64, seed=3, step=11, with_next=True)
    assert torch.equal(b["z"][:, 0], b["z_goal"][:, 0])  # same episode
    assert torch.equal(b["steps"], (b["z"][:, 1] - b["z_goal"][:, 1]).abs())
    assert (b["steps"] == 0).any() and (b["z"][:, 1] > b["z_goal"][:, 1]).any()  # u == t and both orders
    assert torch.equal(b["z_next"][:, 0], b["z"][:, 0])  # the next state: same episode, one step towards u
    assert torch.equal(b["z_next"][:, 1], b["z"][:, 1] + torch.sign(b["z_goal"][:, 1] - b["z"][:, 1]))
    again = pair_batch(z, 64, seed=3, step=11)
    assert "z_next" not in again and all(torch.equal(b[k], again[k]) for k in again)  # the same pairs without it
    assert not torch.equal(pair_batch(z, 64, seed=3, step=12)["z"], b["z"])


@pytest.mark.parametrize("map_shape", [None, (4, 3, 3)])
def test_shapes_and_the_planner_view(map_shape):
    D = 36
    net = GoalDistance(D, map_shape, DistanceConfig(steps=1, width=8, embed_dim=8, hidden=16))
    z, g = torch.randn(5, D), torch.randn(5, D)
    assert net(z, g).shape == (5,) and (net(z, g) >= 0).all()
    dist = net.to_goal(g)
    out = dist(torch.randn(5, 6, 4, D))  # [B, N, H, D] candidates' states
    assert out.shape == (5, 6, 4)
    assert torch.allclose(dist(z[:, None, None])[:, 0, 0], net(z, g), atol=1e-6)
    with pytest.raises(ValueError, match="map_shape"):
        GoalDistance(35, (4, 3, 3), DistanceConfig(steps=1))
    with pytest.raises(ValueError, match="expectile"):
        check_distance(DistanceConfig(expectile=1.0))


def test_normalisation_statistics_match_over_chunk_boundaries():
    z = torch.randn(7, 9, 5) * torch.tensor([1.0, 3.0, 0.5, 10.0, 2.0]) + torch.tensor([0.0, -4.0, 100.0, 1.0, 7.0])
    z[..., 4] = 7.0  # a constant feature: std clamped, not NaN
    net = GoalDistance(5, None, DistanceConfig(steps=1, width=4, embed_dim=4, hidden=4))
    set_normalisation(net, z, chunk=10)  # 63 rows: 6 full chunks and a partial one
    flat = z.reshape(-1, 5).double()
    torch.testing.assert_close(net.mean, flat.mean(0).float())
    torch.testing.assert_close(net.std[:4], flat.std(0)[:4].float())
    assert net.std[4] == 1e-6


def test_learns_shortest_paths_from_walks_that_wander():
    """States on a line (one-hot positions 0..9). Episodes: straight runs (|u - t| is the distance) and walks
    that stand still half the time (|u - t| is up to twice it). The expectile fit at tau 0.1 recovers the
    distance itself, where least squares (tau 0.5) overestimates it."""
    rng = np.random.default_rng(0)
    P, T1 = 10, 10
    eps = []
    for i in range(400):
        if i % 2:
            pos = np.clip(rng.integers(P) + np.arange(T1) * rng.choice([-1, 1]), 0, P - 1)
        else:
            pos = np.clip(rng.integers(P) + np.cumsum(rng.integers(0, 2, T1) * rng.choice([-1, 1])), 0, P - 1)
        eps.append(pos)
    pos = torch.tensor(np.stack(eps))
    z = torch.nn.functional.one_hot(pos, P).float()  # [N, T+1, P]
    true = {}
    for tau in (0.1, 0.5):
        torch.manual_seed(0)
        net = GoalDistance(P, None, DistanceConfig(steps=1, width=32, embed_dim=16, hidden=32))
        set_normalisation(net, z)
        opt = torch.optim.Adam(net.parameters(), lr=3e-3)
        for step in range(600):
            b = pair_batch(z, 128, 0, step)
            loss = expectile_loss(net(b["z"], b["z_goal"]), b["steps"], tau)
            opt.zero_grad()
            loss.backward()
            opt.step()
        a, c = torch.meshgrid(torch.arange(P), torch.arange(P), indexing="ij")
        with torch.no_grad():
            d = net(torch.eye(P)[a.flatten()], torch.eye(P)[c.flatten()])
        true[tau] = (d - (a - c).abs().flatten().float()).abs().mean().item(), (d - (a - c).abs().flatten().float()).mean().item()
    assert true[0.1][0] < 1.0          # mean abs error under one step
    assert true[0.5][1] > true[0.1][1] + 0.5  # least squares sits above: it fits the average walk


def test_bootstrap_term_value_and_no_gradient_through_its_bound():
    """bootstrap 0: the step-count expectile loss alone. bootstrap w: (1 - w) x that + w x the expectile loss
    against min(|u - t|, 1 + D(z_next, z_goal)), 0 where u == t; the bound is a constant (no gradient)."""
    N, T1, D = 4, 9, 6
    z = torch.randn(N, T1, D, generator=torch.Generator().manual_seed(0))
    b = pair_batch(z, 64, seed=0, step=2, with_next=True)
    torch.manual_seed(0)
    cfg = DistanceConfig(steps=1, width=8, embed_dim=8, hidden=16)
    net = GoalDistance(D, None, cfg)
    d = net(b["z"], b["z_goal"])
    off, _ = distance_loss(net, b, cfg)
    assert torch.allclose(off, expectile_loss(d, b["steps"], cfg.expectile))
    on = DistanceConfig(steps=1, width=8, embed_dim=8, hidden=16, bootstrap=0.7, bootstrap_expectile=0.2)
    with torch.no_grad():
        bound = torch.minimum(b["steps"], 1 + net(b["z_next"], b["z_goal"])) * (b["steps"] > 0)
    assert (bound < b["steps"]).any() and (bound[b["steps"] == 0] == 0).all()
    d_again, d_next = net(b["z"], b["z_goal"], b["z_next"])  # the goals embedded once for both
    assert torch.equal(d_again, d) and torch.equal(d_next, net(b["z_next"], b["z_goal"])) and not d_next.requires_grad
    want = 0.3 * expectile_loss(d, b["steps"], 0.1) + 0.7 * expectile_loss(d, bound, 0.2)
    loss, logs = distance_loss(net, b, on)
    assert torch.allclose(loss, want) and torch.allclose(logs["bootstrap_gain"], (b["steps"] - bound).mean())
    grads = torch.autograd.grad(loss, list(net.parameters()), allow_unused=True)
    ref = torch.autograd.grad(want, list(net.parameters()), allow_unused=True)  # `bound` is a constant here
    assert all(torch.allclose(g, r) for g, r in zip(grads, ref) if g is not None)
    with pytest.raises(ValueError, match="bootstrap"):
        check_distance(DistanceConfig(bootstrap=1.5))


def test_bootstrap_shortens_what_wandering_walks_show():
    """Lazy symmetric random walks on a line (stand still half the time): no episode goes straight, so the
    step counts' low expectile still overestimates the distance by steps. The Bellman term chains one step at
    a time and recovers the distance itself."""
    rng = np.random.default_rng(0)
    P, T1 = 10, 40
    pos = np.clip(rng.integers(P, size=(400, 1)) + np.cumsum(rng.choice([-1, 0, 1], (400, T1), p=[.25, .5, .25]), 1),
                  0, P - 1)
    z = torch.nn.functional.one_hot(torch.tensor(pos), P).float()
    a, c = torch.meshgrid(torch.arange(P), torch.arange(P), indexing="ij")
    true = (a - c).abs().flatten().float()
    err = {}
    for boot in (0.0, 1.0):
        torch.manual_seed(0)
        cfg = DistanceConfig(steps=1, width=32, embed_dim=16, hidden=32, bootstrap=boot)
        net = GoalDistance(P, None, cfg)
        set_normalisation(net, z)
        opt = torch.optim.Adam(net.parameters(), lr=3e-3)
        for step in range(800):
            loss, _ = distance_loss(net, pair_batch(z, 128, 0, step, with_next=True), cfg)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            err[boot] = (net(torch.eye(P)[a.flatten()], torch.eye(P)[c.flatten()]) - true).abs().mean().item()
    assert err[0.0] > 3.0 and err[1.0] < 1.5, err


def test_imagined_first_states_are_rollouts_of_the_episode_actions():
    """`imagine`: a picked pair's first state becomes the predictor's k-step rollout from state t - k under the
    recorded actions (here a predictor that adds the action, so the answer is known); others stay true."""
    from hjepa.world_model.goal_distance import imagine

    class Drift(torch.nn.Module):  # z' = z + a + 1: the true step plus a drift of one per step
        def __init__(self):
            super().__init__()
            self.unused = torch.nn.Parameter(torch.zeros(1))

        def rollout(self, z0, actions):
            return z0[:, -1:] + (actions + 1).cumsum(1)

    g = torch.Generator().manual_seed(0)
    actions = torch.randn(6, 10, 2, generator=g)
    z = torch.cat([torch.zeros(6, 1, 2), actions.cumsum(1)], 1) + 100 * torch.arange(6.0).view(6, 1, 1)
    b = pair_batch(z, 256, seed=1, step=4)
    assert torch.equal(imagine(b, z, actions, Drift(), 0.0, 4, 1, 4)["z"], b["z"])
    out = imagine(b, z, actions, Drift(), 1.0, 4, 1, 4)
    drift = out["z"] - z[b["episode"], b["t"]]  # k where replaced (a k-step rollout from t - k), 0 elsewhere
    k = drift.max().round()
    assert 1 <= k <= 4 and torch.allclose(drift[drift[:, 0] > 0.5], k.expand(int((drift[:, 0] > 0.5).sum()), 2), atol=1e-3)
    assert ((drift[:, 0] > 0.5) == (b["t"] >= k)).all()  # every pair that can be, and no pair with t < k
    assert torch.equal(out["steps"], b["steps"]) and torch.equal(out["z_goal"], b["z_goal"])
    changed = drift[:, 0] > 0.5
    half = imagine(b, z, actions, Drift(), 0.5, 4, 1, 4)
    share = ((half["z"] - b["z"])[:, 0] > 0.5).float().sum() / changed.float().sum()
    assert 0.3 < share < 0.7


def _wm_overrides(folder, steps=6, resume=False):
    return ["data.num_trajectories=24", "data.length=8", "data.cache_dir=null", "encoder.type=conv_map",
            "encoder.dim=4", "encoder.width=8", "encoder.map_size=8", "predictor.type=conv", "predictor.dim=8",
            "predictor.depth=1", "stage.steps=2", "stage.batch_size=4", "stage.window=3", "stage.warmup=1",
            "levels=[]", f"distance.steps={steps}", "distance.batch_size=16", "distance.width=8",
            "distance.embed_dim=8", "distance.hidden=16", "meta.save_every_steps=3", "logging.progress_bar=false",
            "logging.tensorboard=false", "logging.log_every=1", f"logging.folder={folder}",
            f"meta.load_checkpoint={str(resume).lower()}"]


def test_world_model_run_trains_the_distance_and_resumes_exactly(tmp_path, monkeypatch, caplog):
    from hjepa.world_model import train as wm_train
    from vjepa.engine.config import load_config

    def timed():  # each stage's own steps (and seconds) as logged when it ends, in this process
        return [r.getMessage().split(" in ")[0] for r in caplog.records if r.name == "hjepa.world_model.stage"]

    caplog.set_level(logging.INFO, logger="hjepa.world_model.stage")
    wm_train.train(load_config(wm_train.WorldModelConfig, overrides=_wm_overrides(tmp_path / "whole")))
    assert timed() == ["level 0: 2 steps", "goal distance: 6 steps"]
    whole = torch.load(tmp_path / "whole" / "wm-latest.pt", weights_only=True)
    assert whole["steps"] == [2, 6] and (tmp_path / "whole" / "distance" / "metrics.csv").is_file()
    assert not torch.equal(whole["model"]["distance.std"], torch.ones_like(whole["model"]["distance.std"]))
    _, wm, _ = wm_train.load_trained(tmp_path / "whole" / "wm-latest.pt")
    assert isinstance(wm.distance, GoalDistance)

    real_save = wm_train.save

    def save_then_die(accelerator, path, wm, opts, steps, data, cfg, extra=None):
        real_save(accelerator, path, wm, opts, steps, data, cfg, extra)
        if steps[-1] == 3:
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(wm_train, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        wm_train.train(load_config(wm_train.WorldModelConfig, overrides=_wm_overrides(tmp_path / "killed")))
    monkeypatch.setattr(wm_train, "save", real_save)
    caplog.clear()
    wm_train.train(load_config(wm_train.WorldModelConfig, overrides=_wm_overrides(tmp_path / "killed", resume=True)))
    assert timed() == ["goal distance: 3 steps"]  # the resumed run's own steps only
    resumed = torch.load(tmp_path / "killed" / "wm-latest.pt", weights_only=True)
    assert resumed["steps"] == [2, 6]
    for k, v in whole["model"].items():
        assert torch.equal(v, resumed["model"][k]), k


def test_the_distance_trains_on_its_own_longer_episodes_of_the_same_maps(tmp_path, monkeypatch):
    """`distance.length`: D's pairs come from episodes of that length, drawn on the world model's maps (the
    train split) with another seed; the world model's own data is untouched. (`distance.imagined` runs the
    real predictor's rollouts on them.)"""
    from data.generated.trajectories import generate
    from hjepa.world_model import cost_stages
    from hjepa.world_model import train as wm_train
    from vjepa.engine.config import load_config

    cfg = load_config(wm_train.WorldModelConfig, overrides=_wm_overrides(tmp_path) + [
        "distance.length=12", "distance.episodes=5", "data.num_layouts=7", "data.layout_split=train",
        "distance.imagined=0.5", "distance.imagined_steps=3"])  # and half its first states imagined
    dcfg = cost_stages.distance_data(cfg)
    assert (dcfg.length, dcfg.num_trajectories) == (12, 5) and dcfg.seed != cfg.data.seed
    own, wm_data = generate(dcfg), generate(cfg.data)
    np.testing.assert_array_equal(own["walls"], wm_data["walls"])  # the same (train-split) maps
    seen = []
    real = cost_stages.pair_batch
    monkeypatch.setattr(cost_stages, "pair_batch", lambda z, *a, **kw: seen.append(tuple(z.shape[:2])) or real(z, *a, **kw))
    wm_train.train(cfg)
    assert seen and set(seen) == {(5, 13)}
    with pytest.raises(ValueError, match="distance.length"):
        check_distance(DistanceConfig(length=-1))


def test_planners_use_the_learned_distance_and_refuse_it_without_one():
    from hjepa.world_model.planning import FlatPlanner, PlannerConfig

    class Shift:  # z' = z + a (2-d states)
        def rollout(self, z0, actions, context=None):
            return z0[:, -1:] + actions.cumsum(1)

    class Far(torch.nn.Module):  # a "learned" distance that only counts the first coordinate
        def to_goal(self, g):
            return lambda z: (z[..., 0] - g.view(len(g), *([1] * (z.ndim - 2)), -1)[..., 0]).abs()

    cfg = PlannerConfig(horizon=4, samples=64, iterations=4, replan_every=1, distance="learned")
    with pytest.raises(ValueError, match="no learned goal distance"):
        FlatPlanner(Shift(), cfg, 0)
    planner = FlatPlanner(Shift(), cfg, 0, Far())
    z, goal = torch.zeros(3, 2), torch.tensor([[1.0, 5.0]] * 3)
    planner.reset(z, goal)
    a = torch.from_numpy(planner.act(z, 0))
    assert (a[:, 0] > 0.5).all()  # heads for the goal's first coordinate
    l2 = FlatPlanner(Shift(), PlannerConfig(horizon=4, samples=64, iterations=4, replan_every=1), 0)
    l2.reset(z, goal)
    assert (torch.from_numpy(l2.act(z, 0))[:, 1] > 0.5).all()  # the Euclidean cost wants the second too
    with pytest.raises(ValueError, match="distance"):
        FlatPlanner(Shift(), PlannerConfig(distance="geodesic"), 0)


def test_a_trained_world_model_gains_a_distance_on_resume(tmp_path):
    """Resuming a checkpoint written without a goal distance, with `distance.steps` set: the levels are kept
    bit for bit, and only the distance trains."""
    from hjepa.world_model import train as wm_train
    from vjepa.engine.config import load_config

    wm_train.train(load_config(wm_train.WorldModelConfig, overrides=_wm_overrides(tmp_path, steps=0)))
    before = torch.load(tmp_path / "wm-latest.pt", weights_only=True)
    assert before["steps"] == [2] and not any(k.startswith("distance.") for k in before["model"])
    wm_train.train(load_config(wm_train.WorldModelConfig, overrides=_wm_overrides(tmp_path, steps=4, resume=True)))
    after = torch.load(tmp_path / "wm-latest.pt", weights_only=True)
    assert after["steps"] == [2, 4]
    for k, v in before["model"].items():
        assert torch.equal(v, after["model"][k]), k


def test_hierarchical_levels_measure_with_the_learned_distance_where_asked():
    from data.generated.envs import EnvConfig, make_layout
    from hjepa.world_model.planning import HierarchicalConfig, HierarchicalPlanner, PlannerConfig
    from tests.test_planning import TrueWorldModel

    env = EnvConfig(name="four_rooms")
    wm = TrueWorldModel(env, make_layout(env, np.random.default_rng(0))[None], [4])
    bank = torch.rand(16, 2) * 2 - 1
    hcfg = HierarchicalConfig(levels=[PlannerConfig(horizon=3, samples=16, iterations=1, distance="learned")],
                              level0=PlannerConfig(horizon=4, samples=16, iterations=1, replan_every=2))
    with pytest.raises(ValueError, match="no learned goal distance"):
        HierarchicalPlanner(wm, [bank], hcfg, seed=0)
    torch.manual_seed(0)
    wm.distance = GoalDistance(2, None, DistanceConfig(steps=1, width=8, embed_dim=4, hidden=8))
    planner = HierarchicalPlanner(wm, [bank], hcfg, seed=0)
    z, g = torch.rand(3, 5, 2), torch.rand(3, 2)
    target = [(g, 1, torch.ones(3, dtype=torch.bool))]
    torch.testing.assert_close(planner.distance(1, target)(z), wm.distance(z, g[:, None].expand_as(z)))
    torch.testing.assert_close(planner.distance(0, target)(z), (z - g[:, None]).norm(dim=-1))  # level 0: l2


def test_plan_job_with_the_learned_distance_and_a_clear_error_without_it(tmp_path):
    from hjepa.world_model import train as wm_train
    from hjepa.world_model.evaluate import PlanConfig, run
    from vjepa.engine.config import ConfigError, load_config

    wm_train.train(load_config(wm_train.WorldModelConfig, overrides=_wm_overrides(tmp_path / "wm", steps=0)))
    plan = [f"checkpoint={tmp_path / 'wm' / 'wm-latest.pt'}", "tasks.per_bin=2", "tasks.bins=[[0.1,0.5],[0.5,1.2]]",
            "tasks.num_layouts=2", "tasks.layouts=[train]", "methods=[cem]", "seeds=[0]", "max_steps=3",
            "cem.samples=8", "cem.iterations=1", "cem.horizon=2", "cem.replan_every=2", "cem.distance=learned",
            "examples=0", f"folder={tmp_path / 'plan'}"]
    with pytest.raises(ConfigError, match="no learned goal distance"):
        run(load_config(PlanConfig, overrides=plan))
    wm_train.train(load_config(wm_train.WorldModelConfig, overrides=_wm_overrides(tmp_path / "wm", steps=2, resume=True)))
    out = run(load_config(PlanConfig, overrides=plan))
    assert "| cem |" in (out / "results.md").read_text()
