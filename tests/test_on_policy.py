"""The on-policy refine stage (hjepa/world_model/on_policy.py): the planner's episodes, their windows, the
config's errors, and the stage in a run: what moves, gaining it on resume, exact resume after a kill."""
import numpy as np
import pytest
import torch

from data.generated.envs import EnvConfig, make_layout, step_positions
from data.generated.trajectories import TrajectoryConfig
from hjepa.world_model.episodes import TaskConfig, make_tasks, run_episodes
from hjepa.world_model.on_policy import OnPolicyConfig, check_on_policy, on_policy_batch
from hjepa.world_model.planning import PlannerConfig
from tests.test_planning import TrueEncoder, TruePredictor
from tests.test_refine import _overrides, kill_after_save


def test_the_executed_actions_reproduce_the_path_and_are_zero_after_success():
    from hjepa.world_model.planning import FlatPlanner

    cfg = EnvConfig(name="two_rooms")
    walls1 = make_layout(cfg, np.random.default_rng(0))
    tasks = make_tasks(walls1[None], TaskConfig(per_bin=3, bins=[[0.1, 0.2], [0.4, 0.6]], seed=1))
    walls = np.repeat(walls1[None], len(tasks["start"]), 0)
    planner = FlatPlanner(TruePredictor(cfg, walls1[None]), PlannerConfig(horizon=6, samples=32, iterations=2,
                                                                          replan_every=2), 0)
    ep = run_episodes(planner, TrueEncoder(), cfg, walls, tasks["start"], tasks["goal"], max_steps=30, radius=0.07,
                      seed=0)
    T = ep["actions"].shape[1]
    assert ep["path"].shape[1] == T + 1 and ep["success"].any()
    for t in range(T):
        np.testing.assert_allclose(step_positions(walls, ep["path"][:, t], ep["actions"][:, t], cfg), ep["path"][:, t + 1])
    for b in np.flatnonzero(ep["success"]):
        assert (ep["actions"][b, ep["steps"][b]:] == 0).all() and np.abs(ep["actions"][b, :ep["steps"][b]]).sum() > 0


def _planned(B=6, T=10, D=3):
    g = torch.Generator().manual_seed(0)
    z = torch.arange(B * (T + 1) * D, dtype=torch.float32).view(B, T + 1, D)
    return {"z": z, "actions": torch.randn(B, T, 2, generator=g), "z_goal": torch.randn(B, D, generator=g),
            "last": torch.tensor([0, 2, 5, 10, 10, 3])}


def test_windows_are_consecutive_start_while_the_episode_runs_and_replay_by_step():
    ep, H = _planned(), 4
    b = on_policy_batch(ep, 256, H, seed=3, step=7)
    assert b["z"].shape == (256, H + 1, 3) and b["actions"].shape == (256, H, 2) and b["z_goal"].shape == (256, 3)
    T1, D = 11, 3
    flat = b["z"][..., 0] / D  # index of each state: n * T1 + t
    n, t = (flat[:, 0] // T1).long(), (flat[:, 0] % T1).long()
    assert torch.equal(flat - flat[:, :1], torch.arange(H + 1).float().expand(256, -1))  # consecutive, one episode
    assert (t <= ep["last"][n].clamp(max=10 - H)).all()  # started at or before the success (and fits)
    assert set(n.tolist()) == set(range(6)) and (t[n == 0] == 0).all()  # episode 0 succeeded at once: t = 0 only
    assert torch.equal(b["actions"], ep["actions"][n[:, None], t[:, None] + torch.arange(H)])
    assert torch.equal(b["z_goal"], ep["z_goal"][n])
    again = on_policy_batch(ep, 256, H, seed=3, step=7)
    assert all(torch.equal(b[k], again[k]) for k in b)
    assert not torch.equal(on_policy_batch(ep, 256, H, seed=3, step=8)["z"], b["z"])
    with pytest.raises(ValueError, match="fewer than refine.horizon"):
        on_policy_batch(ep, 4, 11, seed=3, step=0)


def test_config_errors():
    data = TrajectoryConfig(num_layouts=100)
    check_on_policy(OnPolicyConfig(), refine_steps=0, data=data)  # off: nothing to check
    check_on_policy(OnPolicyConfig(episodes=8), refine_steps=10, data=data)
    with pytest.raises(ValueError, match="refine.steps"):
        check_on_policy(OnPolicyConfig(episodes=8), refine_steps=0, data=data)
    with pytest.raises(ValueError, match="multiple"):
        check_on_policy(OnPolicyConfig(episodes=6), refine_steps=10, data=data)
    with pytest.raises(ValueError, match="first_map"):
        check_on_policy(OnPolicyConfig(episodes=8, first_map=100), refine_steps=10, data=data)
    with pytest.raises(ValueError, match="learned"):
        check_on_policy(OnPolicyConfig(episodes=8, planner=PlannerConfig(distance="l2")), refine_steps=10, data=data)
    with pytest.raises(ValueError, match="num_distractors"):
        check_on_policy(OnPolicyConfig(episodes=8), refine_steps=10,
                        data=TrajectoryConfig(num_layouts=100, env=EnvConfig(name="two_rooms", num_distractors=2)))


def _on(folder, on_steps, resume=False):
    return _overrides(folder, 4, resume) + [
        "refine.on_policy.episodes=4", f"refine.on_policy.steps={on_steps}", "refine.on_policy.first_map=0",
        "refine.on_policy.max_steps=6", "refine.on_policy.bins=[[0.3,0.5],[0.5,0.8]]", "refine.on_policy.share=0.5",
        "refine.on_policy.planner.horizon=3", "refine.on_policy.planner.samples=8",
        "refine.on_policy.planner.iterations=1", "refine.on_policy.planner.replan_every=1"]


def test_the_stage_moves_only_level0_predictors_joins_a_refined_model_and_resumes_exactly(tmp_path, monkeypatch):
    from hjepa.world_model import on_policy, train as wm_train
    from vjepa.engine.config import load_config

    collected = []
    real_collect = on_policy.collect
    monkeypatch.setattr(wm_train, "collect", lambda *a: collected.append(1) or real_collect(*a))

    def run(folder, on_steps, resume=False, refine_only=False):
        o = _overrides(tmp_path / folder, 4, resume) if refine_only else _on(tmp_path / folder, on_steps, resume)
        wm_train.train(load_config(wm_train.WorldModelConfig, overrides=o))
        return torch.load(tmp_path / folder / "wm-latest.pt", weights_only=True)

    whole = run("whole", 6)
    assert whole["steps"] == [2, 4, 4, 6] and len(whole["opts"]) == 4 and len(collected) == 1
    ep = whole["on_policy"]
    assert ep["positions"].shape[0] == 4 and ep["actions"].shape[1] == ep["positions"].shape[1] - 1 == 6
    assert (tmp_path / "whole" / "on_policy" / "metrics.csv").is_file()
    before = run("gains", 0, refine_only=True)  # the same levels, distance and refine stage, no on-policy stage
    assert before["steps"] == [2, 4, 4] and "on_policy" not in before
    gained = run("gains", 6, resume=True)  # ... then it on resume
    assert gained["steps"] == [2, 4, 4, 6]
    moved = {k for k in before["model"] if not torch.equal(before["model"][k], gained["model"][k])}
    assert moved and all(k.startswith(("levels.0.predictor.", "levels.0.members.")) for k in moved)
    for k, v in whole["model"].items():
        assert torch.equal(v, gained["model"][k]), k

    collected.clear()
    with kill_after_save(monkeypatch, wm_train, lambda steps: len(steps) == 4 and steps[-1] == 3):
        run("killed", 6)
    resumed = run("killed", 6, resume=True)
    assert len(collected) == 1  # the resumed run trains on the checkpoint's episodes; it does not collect again
    assert resumed["steps"] == [2, 4, 4, 6]
    for k, v in whole["model"].items():
        assert torch.equal(v, resumed["model"][k]), k
    assert all(torch.equal(v, resumed["on_policy"][k]) for k, v in ep.items())
