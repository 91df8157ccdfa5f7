"""Reference options that used to be refused: `model.use_mask_tokens: false` (queries from noised target
features) and `data_aug.motion_shift: true` (tested in test_transforms.py)."""
import torch

import train as entry
from conftest import TINY_PRETRAIN
from vjepa.engine import checkpoint as ckpt
from vjepa.models import DIFFUSION_ALPHAS, Predictor

GRID = (2, 2, 2)


def test_diffusion_schedule_is_the_references():
    # beta_t = 0.5 + 0.5 t / 1000, alpha_t = prod (1 - beta): 0.5 at t = 0, then falling at least by half a step
    assert DIFFUSION_ALPHAS[0] == 0.5 and DIFFUSION_ALPHAS.shape == (1000,)
    assert torch.all(DIFFUSION_ALPHAS[1:] <= DIFFUSION_ALPHAS[:-1] * 0.5)
    assert DIFFUSION_ALPHAS[10] < 1e-3


def test_predictor_without_mask_tokens_queries_with_noised_targets():
    torch.manual_seed(0)
    pred = Predictor(GRID, embed_dim=16, pred_embed_dim=8, depth=1, num_heads=2, num_mask_tokens=2,
                     use_mask_tokens=False)
    assert not any("mask_tokens" in k for k in pred.state_dict())
    z = torch.randn(3, 5, 16)
    mc = torch.stack([torch.arange(5)] * 3)
    mt = torch.stack([torch.arange(5, 8)] * 3)
    h = torch.randn(3, 3, 16)
    try:
        pred(z, mc, mt)
    except ValueError as e:
        assert "needs the targets" in str(e)
    else:
        raise AssertionError("a predictor without mask tokens ran without targets")
    out = pred([z], [mc], [mt], targets=[h])[0]
    assert out.shape == (3, 3, 16) and torch.isfinite(out).all()
    out.square().sum().backward()
    assert pred.predictor_embed.weight.grad.abs().sum() > 0
    # the queries are noise: the same inputs give other outputs on another draw
    with torch.no_grad():
        assert not torch.allclose(pred(z, mc, mt, targets=h), pred(z, mc, mt, targets=h))
    with_tokens = Predictor(GRID, embed_dim=16, pred_embed_dim=8, depth=1, num_heads=2, num_mask_tokens=2)
    with torch.no_grad():  # with mask tokens the targets are not read: deterministic in eval mode
        assert torch.equal(with_tokens(z, mc, mt, targets=h), with_tokens(z, mc, mt, targets=2 * h))


def test_pretraining_runs_without_mask_tokens(tmp_path):
    rc = entry.main(["--config", str(TINY_PRETRAIN), f"logging.folder={tmp_path}", "model.use_mask_tokens=false",
                     "data_aug.motion_shift=true"])
    assert rc == 0
    state = ckpt.load(tmp_path / "jepa-latest.pt")
    assert state["step"] == 6 and not any("mask_tokens" in k for k in state["predictor"])
    rows = (tmp_path / "metrics.csv").read_text().splitlines()[1:]
    assert all(torch.isfinite(torch.tensor(float(r.split(",")[1]))) for r in rows)
