"""Probes on frozen tokens: shapes, reference names, fitting, multi-view math, k-NN, the probe job and its resume."""
import json

import pytest
import torch
import torch.nn.functional as F

from vjepa.engine import checkpoint as ckpt
from vjepa.engine.runtime import make_accelerator
from vjepa import probe_train
from vjepa.models import VisionTransformer
from vjepa.probe import (
    AttentiveClassifier, LinearClassifier, average_softmax, join_segments, knn_predict, topk_correct,
)
from vjepa.probe_train import ProbeConfig, ProbeGrid, ProbeOptimizationConfig, grid_points
from vjepa.probe_train import train as train_probe


@pytest.mark.parametrize("depth", [1, 4])
def test_attentive_probe_shapes_and_gradients(depth):
    probe = AttentiveClassifier(embed_dim=32, num_heads=4, num_classes=7, depth=depth)
    x = torch.randn(5, 40, 32, requires_grad=True)
    out = probe(x)
    assert out.shape == (5, 7)
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in probe.parameters())


@pytest.mark.parametrize("depth, queries, use_proj", [(1, 1, True), (2, 1, True), (1, 3, False)])
def test_folded_cross_attention_equals_the_plain_one_with_gradients(depth, queries, use_proj):
    torch.manual_seed(0)
    probe = AttentiveClassifier(embed_dim=48, num_heads=4, num_classes=5, depth=depth, use_proj=use_proj)
    if queries > 1:
        probe.pooler.query_tokens = torch.nn.Parameter(torch.randn(1, queries, 48) * 0.5)
    block = probe.pooler.cross_attention_block
    with torch.no_grad():  # non-trivial norm1 affine and biases: the fold must carry them
        for t in (block.norm1.weight, block.norm1.bias, block.xattn.kv.bias, block.xattn.q.bias):
            t.add_(torch.randn_like(t) * 0.5)
    x = torch.randn(3, 30, 48) * 2 + 1
    grads = []
    for fold in (False, True):
        block.fold = fold
        probe.zero_grad()
        xi = x.clone().requires_grad_(True)
        out = probe(xi)
        (out * torch.arange(5.0)).sum().backward()  # a loss that weights every logit differently
        grads.append((out.detach(), xi.grad, {k: v.grad.clone() for k, v in probe.named_parameters()}))
    (o0, gx0, gp0), (o1, gx1, gp1) = grads
    torch.testing.assert_close(o1, o0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx1, gx0, rtol=1e-4, atol=1e-5)
    for k in gp0:
        torch.testing.assert_close(gp1[k], gp0[k], rtol=1e-4, atol=1e-5, msg=k)


def test_cross_attention_folds_only_when_it_is_cheaper(monkeypatch):
    calls = []
    probe = AttentiveClassifier(embed_dim=8, num_heads=4, num_classes=3)  # 1 query x 4 heads < 8 channels
    orig = type(probe.pooler.cross_attention_block.xattn).folded
    monkeypatch.setattr(type(probe.pooler.cross_attention_block.xattn), "folded",
                        lambda self, *a: calls.append(1) or orig(self, *a))
    probe(torch.randn(2, 6, 8))
    assert calls == [1]
    probe.pooler.query_tokens = torch.nn.Parameter(torch.zeros(1, 2, 8))  # 2 x 4 = 8: the plain path
    probe(torch.randn(2, 6, 8))
    assert calls == [1]


def test_linear_probe_shape():
    assert LinearClassifier(32, 3)(torch.randn(4, 10, 32)).shape == (4, 3)


def test_probe_parameter_names_match_the_reference():
    keys = set(AttentiveClassifier(32, 4, 5, depth=4).state_dict())
    for k in ("pooler.query_tokens", "pooler.cross_attention_block.norm1.weight",
              "pooler.cross_attention_block.xattn.q.weight", "pooler.cross_attention_block.xattn.kv.weight",
              "pooler.cross_attention_block.xattn.proj.weight", "pooler.cross_attention_block.mlp.fc1.weight",
              "pooler.cross_attention_block.mlp.fc2.weight", "pooler.blocks.2.attn.qkv.weight", "linear.weight"):
        assert k in keys, k
    assert "pooler.blocks.3.attn.qkv.weight" not in keys  # 4 probe blocks = 3 self-attention + 1 cross
    no_proj = AttentiveClassifier(32, 4, 5, use_proj=False).state_dict()  # V-JEPA 2's cross-attention
    assert not any("xattn.proj" in k for k in no_proj)


@pytest.mark.parametrize("kind", ["attentive", "linear"])
def test_probe_overfits_a_tiny_set(kind):
    torch.manual_seed(0)
    x = torch.randn(16, 12, 32)
    y = torch.arange(16) % 4
    probe = AttentiveClassifier(32, 4, 4) if kind == "attentive" else LinearClassifier(32, 4)
    opt = torch.optim.AdamW(probe.parameters(), lr=1e-2)
    for _ in range(150):
        loss = F.cross_entropy(probe(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    probe.eval()
    assert loss.item() < 0.05
    assert (probe(x).argmax(-1) == y).all()


def test_join_segments_layouts():
    B, S, V, N, D = 2, 3, 2, 4, 5
    tokens = torch.arange(B * S * V * N * D, dtype=torch.float).reshape(B, S, V, N, D)
    across = join_segments(tokens, attend_across_segments=True)
    assert across.shape == (B, V, S * N, D)
    # view v of video b: segment 0's tokens, then segment 1's, ...
    assert torch.equal(across[1, 1, N:2 * N], tokens[1, 1, 1])
    alone = join_segments(tokens, attend_across_segments=False)
    assert alone.shape == (B, S * V, N, D)
    assert torch.equal(alone[0, 1 * V + 1], tokens[0, 1, 1])


def test_average_softmax_and_topk():
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 0.0, 4.0]]])  # one video, two views
    probs = average_softmax(logits)
    expected = (logits[0, 0].softmax(-1) + logits[0, 1].softmax(-1)) / 2
    assert torch.allclose(probs[0], expected)
    assert probs.argmax(-1).item() == 2  # the confident view wins the average
    labels = torch.tensor([0])
    assert topk_correct(probs, labels, ks=(1, 2)) == {"top1": 0, "top2": 1}
    assert topk_correct(probs, labels, ks=(5,)) == {"top5": 1}  # k capped at the class count


def test_knn_recovers_clusters():
    torch.manual_seed(0)
    centers = torch.randn(3, 16) * 5
    bank_y = torch.arange(60) % 3
    bank = centers[bank_y] + torch.randn(60, 16)
    q_y = torch.arange(30) % 3
    q = centers[q_y] + torch.randn(30, 16)
    probs = knn_predict(bank, bank_y, q, num_classes=3, k=5)
    assert torch.allclose(probs.sum(-1), torch.ones(30))
    assert (probs.argmax(-1) == q_y).float().mean() > 0.95


def test_probe_grid_keeps_probes_independent():
    o = ProbeOptimizationConfig(num_epochs=1, batch_size=8, lr=1e-2, start_lr=1e-2, final_lr=0.0,
                                lr_grid=[1e-2, 0.0], wd_grid=[0.0])
    points = grid_points(o)
    torch.manual_seed(0)
    probes = [LinearClassifier(8, 3) for _ in points]
    before = [p.linear.weight.detach().clone() for p in probes]
    grid = ProbeGrid(probes, points, o, steps_per_epoch=5, accelerator=make_accelerator("float32"))
    x, y = torch.randn(8, 1, 4, 8), torch.arange(8) % 3
    for step in range(5):
        grid.train_step(x, y, step)
    assert not torch.equal(probes[0].linear.weight, before[0])
    assert torch.equal(probes[1].linear.weight, before[1])  # lr 0: untouched by its neighbour's loss


# ------------------------------------------------------------------------------------------ the probe job
def _tiny_checkpoint(path):
    torch.manual_seed(0)
    enc = VisionTransformer(img_size=16, num_frames=4, patch_size=8, tubelet_size=2, embed_dim=24, depth=2,
                            num_heads=2)
    torch.save({"target_encoder": enc.state_dict(), "encoder": enc.state_dict()}, path)
    return enc


def _tiny_cfg(tmp_path, ck, folder="probe", epochs=2, **pretrain):
    cfg = ProbeConfig()
    cfg.pretrain.checkpoint = str(ck)
    cfg.pretrain.num_heads = 2  # a 24-wide encoder is no reference size: its heads must be given
    for k, v in pretrain.items():
        setattr(cfg.pretrain, k, v)
    cfg.data.motion.num_train, cfg.data.motion.num_val = 48, 24
    cfg.data.motion.num_frames, cfg.data.motion.size, cfg.data.motion.num_speeds = 4, 16, 1
    cfg.data.num_workers = 0
    o = cfg.optimization
    o.num_epochs, o.batch_size, o.lr_grid, o.wd_grid, o.cache_features = epochs, 16, [1e-3, 3e-3], [0.01], True
    cfg.logging.folder = str(tmp_path / folder)
    return cfg


def test_probe_job_writes_results_and_resumes_exactly(tmp_path, monkeypatch):
    ck = tmp_path / "enc.pt"
    _tiny_checkpoint(ck)
    res = train_probe(_tiny_cfg(tmp_path, ck, "straight", epochs=2))
    assert 0.0 <= res["top1"] <= 100.0 and res["top5"] >= res["top1"]
    assert len(res["probes"]) == 2 and "knn_top1" in res
    assert json.loads((tmp_path / "straight" / "results.json").read_text())["top1"] == res["top1"]

    # The same run, killed during its second epoch (after the first epoch's checkpoint), then resumed.
    real_epoch = probe_train.train_epoch

    def dies_in_epoch_2(grid, encoder, ds, cached, cfg, epoch, *args):
        if epoch == 1:
            raise KeyboardInterrupt
        return real_epoch(grid, encoder, ds, cached, cfg, epoch, *args)

    monkeypatch.setattr(probe_train, "train_epoch", dies_in_epoch_2)
    cfg = _tiny_cfg(tmp_path, ck, "resumed", epochs=2)
    with pytest.raises(KeyboardInterrupt):
        train_probe(cfg)
    monkeypatch.setattr(probe_train, "train_epoch", real_epoch)
    with pytest.raises(FileExistsError):
        train_probe(cfg)
    cfg.resume_checkpoint = True
    train_probe(cfg)
    a = ckpt.load(tmp_path / "straight" / "probe-latest.pt")["grid"]["probes"]
    b = ckpt.load(tmp_path / "resumed" / "probe-latest.pt")["grid"]["probes"]
    for sa, sb in zip(a, b):
        for k in sa:
            assert torch.equal(sa[k], sb[k]), k


def test_probe_job_random_init_and_bad_input(tmp_path):
    ck = tmp_path / "enc.pt"
    _tiny_checkpoint(ck)
    res = train_probe(_tiny_cfg(tmp_path, ck, "rand", epochs=1, random_init=True))
    assert "top1" in res
    cfg = _tiny_cfg(tmp_path, ck, "none", epochs=1)
    cfg.pretrain.checkpoint = None
    with pytest.raises(ValueError, match="pretrain.checkpoint"):
        train_probe(cfg)
    cfg = _tiny_cfg(tmp_path, ck, "size", epochs=1)
    cfg.data.motion.size = 32  # fine: the stored position table is resized to the larger clips
    assert "top1" in train_probe(cfg)


REFERENCE_K400 = """
nodes: 8
tasks_per_node: 8
tag: k400-16x8x3
eval_name: video_classification_frozen
resume_checkpoint: false
data:
  dataset_train: /your_path_to_kinetics400_train_csv_file_index.csv
  dataset_val: /your_path_to_kinetics400_val_csv_file_index.csv
  dataset_type: VideoDataset
  num_classes: 400
  frames_per_clip: 16
  num_segments: 8
  num_views_per_segment: 3
  frame_step: 4
optimization:
  attend_across_segments: true
  num_epochs: 20
  resolution: 224
  batch_size: 4
  weight_decay: 0.01
  lr: 0.001
  start_lr: 0.001
  final_lr: 0.0
  warmup: 0.
  use_bfloat16: true
pretrain:
  model_name: vit_large
  checkpoint_key: target_encoder
  clip_duration: null
  frames_per_clip: 16
  tubelet_size: 2
  uniform_power: true
  use_silu: false
  tight_silu: false
  use_sdpa: true
  patch_size: 16
  folder: /your_absolute_file_path_to_directory_where_pretrained_models_are_contained/
  checkpoint: jepa-latest.pth.tar  # name of pretrained model file inside folder
  write_tag: jepa
"""


def test_reference_eval_yaml_loads_unchanged(tmp_path):
    import yaml

    import train as entry
    from vjepa.engine.config import load_config

    raw = yaml.safe_load(REFERENCE_K400)
    assert entry.pick_task(raw, []) == "probe"
    cfg = load_config(ProbeConfig, raw=raw, overrides=["pretrain.checkpoint=/x/y.pt"])
    assert cfg.data.num_segments == 8 and cfg.data.num_views_per_segment == 3
    assert cfg.optimization.attend_across_segments and cfg.pretrain.model_name == "vit_large"
    assert cfg.pretrain.checkpoint == "/x/y.pt"


def test_knn_monitor_scores_an_encoder():
    from vjepa.knn_monitor import MotionKNNMonitor

    monitor = MotionKNNMonitor(num_frames=4, size=16, num_speeds=1, num_train=16, num_val=8, k=3)
    enc = VisionTransformer(img_size=16, num_frames=4, patch_size=8, tubelet_size=2, embed_dim=24, depth=1,
                            num_heads=2).train()
    score = monitor.score(enc)
    assert 0.0 <= score <= 100.0
    assert enc.training  # mode restored
