"""The refine stage (hjepa/world_model/refine.py): windows drawn by step, the distance gap on a case with a
known answer and where its gradient goes, and the stage in a world-model run: only the level-0
predictors move, a trained model gains the stage on resume, and a killed run resumes exactly."""
import contextlib

import pytest
import torch

from hjepa.blocks import ACPredictor
from hjepa.world_model.goal_distance import DistanceConfig, GoalDistance
from hjepa.world_model.model import prediction_losses
from hjepa.world_model.refine import RefineConfig, check_refine, distance_gap, refine_batch, refine_loss
from hjepa.world_model.spatial import ConvPredictor
from tests.test_goal_distance import _wm_overrides


def test_windows_are_consecutive_states_of_one_episode_with_their_actions_and_replay_by_step():
    N, T = 5, 12
    n = torch.arange(N, dtype=torch.float32).view(N, 1, 1).expand(N, T + 1, 1)
    t = torch.arange(T + 1, dtype=torch.float32).view(1, T + 1, 1).expand(N, T + 1, 1)
    z = torch.cat([n, t], -1)  # state (episode, time)
    actions = z[:, :-1] + torch.tensor([0.0, 0.5])  # the action leaving state t is (episode, t + 0.5)
    b = refine_batch(z, actions, 64, 4, seed=0, step=3)
    assert b["z"].shape == (64, 5, 2) and b["actions"].shape == (64, 4, 2) and b["z_goal"].shape == (64, 2)
    assert (b["z"][:, :, 0] == b["z"][:, :1, 0]).all() and (b["z_goal"][:, 0] == b["z"][:, 0, 0]).all()
    assert (b["z"][:, 1:, 1] - b["z"][:, :-1, 1] == 1).all()  # consecutive states
    assert torch.equal(b["actions"], b["z"][:, :-1] + torch.tensor([0.0, 0.5]))
    assert torch.equal(refine_batch(z, actions, 64, 4, 0, 3)["z"], b["z"])
    assert not torch.equal(refine_batch(z, actions, 64, 4, 0, 4)["z"], b["z"])
    with pytest.raises(ValueError, match="too short"):
        refine_batch(z, actions, 8, 13, 0, 0)  # 12-step episodes


class Shift(torch.nn.Module):
    """z' = z + scale * a: exact dynamics of `_episodes` at scale 1."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(scale))

    def rollout(self, z0, actions):
        return z0[:, -1:] + (self.scale * actions).cumsum(1)


def _episodes(B=16, H=6):
    g = torch.Generator().manual_seed(0)
    actions = torch.randn(B, H, 2, generator=g)
    z0 = torch.randn(B, 1, 2, generator=g)
    return torch.cat([z0, z0 + actions.cumsum(1)], 1), actions, torch.randn(B, 2, generator=g)


class L1Distance(torch.nn.Module):
    """A "learned" distance with a known value: the L1 distance of the states."""

    def embed(self, z):
        return z

    def pair(self, e, e_goal):
        return (e - e_goal).abs().sum(-1)


def test_the_gap_is_zero_for_exact_dynamics_and_its_gradient_reaches_the_predictor_only():
    z, actions, goal = _episodes()
    D = L1Distance()
    assert distance_gap(Shift(1.0), D, z, actions, goal).item() == 0.0
    wrong = Shift(1.5)
    z = z.requires_grad_(True)
    gap = distance_gap(wrong, D, z, actions, goal)
    imagined = z[:, :1] + 1.5 * actions.cumsum(1)
    expected = ((imagined - goal[:, None]).abs().sum(-1) - (z[:, 1:] - goal[:, None]).abs().sum(-1)).abs().mean()
    assert gap.item() == pytest.approx(expected.item(), rel=1e-6) and gap.item() > 0.1
    gap.backward()
    assert wrong.scale.grad is not None and wrong.scale.grad.abs() > 0
    assert z.grad[:, 1:].abs().sum() == 0  # the true states are targets: no gradient through them
    torch.manual_seed(0)
    learned = GoalDistance(2, None, DistanceConfig(width=8, embed_dim=8, hidden=16)).requires_grad_(False)
    distance_gap(Shift(1.5), learned, z.detach(), actions, goal).backward()  # runs through a frozen GoalDistance
    assert all(p.grad is None for p in learned.parameters())


@pytest.mark.parametrize("kind", ["conv", "attention"])
def test_the_loss_shares_one_rollout_and_equals_its_terms_computed_apart(kind):
    """`refine_loss` runs one rollout over the horizon for the rollout loss and the gap; its total must be the
    prediction losses (k-step rollout of their own) + coeff x the gap, for the Markov conv predictor and the
    block-causal attention one, and so must the gradients."""
    torch.manual_seed(0)
    if kind == "conv":
        p = ConvPredictor((4, 2, 2), 2, width=8, depth=1)
        torch.nn.init.normal_(p.out.weight, std=0.1)  # not the identity dynamics of its initialisation
    else:
        p = ACPredictor(16, 2, dim=16, depth=2, num_heads=2, max_frames=16)
    B, H, window, k = 5, 6, 4, 3
    b = {"z": torch.randn(B, H + 1, 16), "actions": torch.randn(B, H, 2), "z_goal": torch.randn(B, 16)}
    D = GoalDistance(16, None, DistanceConfig(width=8, embed_dim=8, hidden=16)).requires_grad_(False)
    total, terms = refine_loss([p], D, b, window, k, 0.7, 0.3)
    total.backward()
    shared = [q.grad.clone() for q in p.parameters()]
    p.zero_grad()
    tf, ro = prediction_losses(p, b["z"][:, :window], b["actions"][:, :window - 1], k)
    apart = tf + 0.7 * ro + 0.3 * distance_gap(p, D, b["z"], b["actions"], b["z_goal"])
    apart.backward()
    assert total.item() == pytest.approx(apart.item(), rel=1e-6)
    assert terms["rollout"].item() == pytest.approx(ro.item(), rel=1e-6) and ro.item() > 0
    for g, q in zip(shared, p.parameters()):
        torch.testing.assert_close(g, q.grad, rtol=1e-5, atol=1e-7)


def test_config_errors():
    check_refine(RefineConfig(), distance_steps=0, window=6)  # off: nothing to check
    with pytest.raises(ValueError, match="distance.steps"):
        check_refine(RefineConfig(steps=10), distance_steps=0, window=6)
    with pytest.raises(ValueError, match="horizon"):
        check_refine(RefineConfig(steps=10, horizon=3), distance_steps=100, window=6)
    with pytest.raises(ValueError, match="refine.coeff"):
        check_refine(RefineConfig(steps=10, coeff=-1.0), distance_steps=100, window=6)


def _overrides(folder, refine, resume=False):
    return _wm_overrides(folder, steps=4, resume=resume) + [
        "predictor.ensemble=2", f"refine.steps={refine}", "refine.horizon=4", "refine.batch_size=8"]


@contextlib.contextmanager
def kill_after_save(monkeypatch, wm_train, when):
    """Within the block, the world-model job dies (KeyboardInterrupt) right after a checkpoint whose step counts
    satisfy `when(steps)`; the block must end that way."""
    real_save = wm_train.save

    def save_then_die(*args):
        real_save(*args)
        if when(args[4]):  # save(accelerator, path, wm, opts, steps, ...)
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(wm_train, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        yield
    monkeypatch.setattr(wm_train, "save", real_save)


def test_the_stage_moves_only_level0_predictors_joins_a_trained_model_and_resumes_exactly(tmp_path, monkeypatch):
    from hjepa.world_model import train as wm_train
    from vjepa.engine.config import load_config

    def run(folder, refine, resume=False):
        wm_train.train(load_config(wm_train.WorldModelConfig, overrides=_overrides(tmp_path / folder, refine, resume)))
        return torch.load(tmp_path / folder / "wm-latest.pt", weights_only=True)

    whole = run("whole", 6)
    assert whole["steps"] == [2, 4, 6] and len(whole["opts"]) == 3
    assert (tmp_path / "whole" / "refine" / "metrics.csv").is_file()
    before = run("gains", 0)  # the same levels and distance, not refined
    assert before["steps"] == [2, 4]
    gained = run("gains", 6, resume=True)  # ... then refined on resume
    assert gained["steps"] == [2, 4, 6]
    moved = {k for k in before["model"] if not torch.equal(before["model"][k], gained["model"][k])}
    assert moved and all(k.startswith(("levels.0.predictor.", "levels.0.members.")) for k in moved)
    assert any(k.startswith("levels.0.members.") for k in moved)  # every ensemble member is refined
    for k, v in whole["model"].items():
        assert torch.equal(v, gained["model"][k]), k

    with kill_after_save(monkeypatch, wm_train, lambda steps: len(steps) == 3 and steps[-1] == 3):
        run("killed", 6)
    resumed = run("killed", 6, resume=True)
    assert resumed["steps"] == [2, 4, 6]
    for k, v in whole["model"].items():
        assert torch.equal(v, resumed["model"][k]), k
