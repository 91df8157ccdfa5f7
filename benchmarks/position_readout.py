"""How well a frame encoder's pooled feature tells the agent's position: ridge readout on held-out episodes.

    python -m benchmarks.position_readout --checkpoint runs/pretrain-two_rooms_env/jepa-latest.pt \
        [--wm-checkpoint runs/worldmodel-two_rooms/wm-latest.pt] [--seeds 0 1 2]

Arms: the pretrained V-JEPA ViT (its target encoder, frozen), the same ViT shape at random init (one per
seed), and optionally the conv encoder of a trained world model. Frames come from point-mass episodes on
two sets of maps: the world model's fixed map (layout_seed 0, one map) and 64 maps of another layout seed.
The readout (ridge, penalty picked on a validation split of the training episodes) is fitted on the
pooled features of frames of 300 episodes and scored on 100 other episodes: R^2 of (x, y) and the mean
position error in world units (the square is 1 wide; the agent disc has radius 0.04).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from data.generated.envs import EnvConfig
from data.generated.trajectories import TrajectoryConfig, generate
from hjepa.world_model.encoders import EncoderConfig, VJEPAEncoder
from hjepa.world_model.feature_cache import encode_dataset
from vjepa.engine import checkpoint as ckpt
from vjepa.models import ModelConfig


def ridge_readout(ztr, ytr, zte, yte, lambdas=(1e-3, 1e-2, 1e-1, 1.0, 10.0)) -> dict:
    """Standardised features, ridge to (x, y); penalty chosen on the last fifth of the training set."""
    mu, sd = ztr.mean(0), ztr.std(0) + 1e-6
    ztr, zte = (ztr - mu) / sd, (zte - mu) / sd

    def fit(z, y, lam):
        X = np.concatenate([z, np.ones((len(z), 1))], 1)
        reg = lam * len(z) * np.eye(X.shape[1])
        reg[-1, -1] = 0
        return np.linalg.solve(X.T @ X + reg, X.T @ y)

    def predict(W, z):
        return np.concatenate([z, np.ones((len(z), 1))], 1) @ W

    cut = int(0.8 * len(ztr))
    best = min(lambdas, key=lambda lam: np.mean((predict(fit(ztr[:cut], ytr[:cut], lam), ztr[cut:]) - ytr[cut:]) ** 2))
    pred = predict(fit(ztr, ytr, best), zte)
    r2 = 1 - ((pred - yte) ** 2).sum(0) / ((yte - yte.mean(0)) ** 2).sum(0)
    return {"r2": float(r2.mean()), "err": float(np.linalg.norm(pred - yte, axis=1).mean()), "lambda": best}


def frames_dataset(name: str, num_layouts: int, layout_seed: int, seed: int) -> dict:
    cfg = TrajectoryConfig(env=EnvConfig(name=name), num_trajectories=400, length=16, num_layouts=num_layouts,
                           layout_seed=layout_seed, seed=seed, cache_dir=None)
    return generate(cfg)


def score(encoder, data, env) -> dict:
    z = encode_dataset(encoder, data, env, batch=512).numpy()  # [N, T+1, D]
    y = data["states"]
    n_tr = 300
    return ridge_readout(z[:n_tr].reshape(-1, z.shape[-1]), y[:n_tr].reshape(-1, 2),
                         z[n_tr:].reshape(-1, z.shape[-1]), y[n_tr:].reshape(-1, 2))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="V-JEPA pretraining checkpoint (jepa-latest.pt)")
    p.add_argument("--wm-checkpoint", default=None, help="a world model whose conv encoder to compare")
    p.add_argument("--world", default="two_rooms")
    p.add_argument("--model-name", default="vit_micro")
    p.add_argument("--patch-size", type=int, default=8)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    a = p.parse_args()
    env = EnvConfig(name=a.world)
    sets = {"fixed map": frames_dataset(a.world, 1, 0, 11), "64 maps": frames_dataset(a.world, 64, 777, 12)}
    vit = ModelConfig(model_name=a.model_name)
    arms = {"V-JEPA pretrained": [VJEPAEncoder(EncoderConfig(type="vjepa", vit=vit, patch_size=a.patch_size,
                                                             checkpoint=a.checkpoint), env.img_size)]}
    rand = []
    for s in a.seeds:
        torch.manual_seed(s)
        rand.append(VJEPAEncoder(EncoderConfig(type="vjepa", vit=vit, patch_size=a.patch_size), env.img_size))
    arms["V-JEPA random init"] = rand
    if a.wm_checkpoint:
        from hjepa.world_model.train import load_trained

        arms["conv (trained world model)"] = [load_trained(a.wm_checkpoint)[1].encoder]
    print("| encoder | maps | R^2 (x, y) | mean error | seeds |\n| --- | --- | --- | --- | --- |")
    for name, encs in arms.items():
        for set_name, data in sets.items():
            t0 = time.time()
            rs = [score(e, data, env) for e in encs]
            r2 = np.array([r["r2"] for r in rs])
            err = np.array([r["err"] for r in rs])
            spread = lambda v: f"{v.mean():.3f}" + (f" +/- {v.std(ddof=1):.3f}" if len(v) > 1 else "")
            print(f"| {name} | {set_name} | {spread(r2)} | {spread(err)} | {len(rs)} |  ({time.time() - t0:.0f}s)",
                  flush=True)
    state = ckpt.load(a.checkpoint)
    print(f"checkpoint step {state.get('step')}")


if __name__ == "__main__":
    main()
