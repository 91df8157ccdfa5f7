"""The step-speed options (vjepa/engine/speed.py): the deferred finiteness check never lets a NaN reach a
saved checkpoint, fused AdamW makes the same update as the foreach one, compiled models give the eager loss."""
import copy
import logging

import pytest
import torch

from conftest import TINY_PRETRAIN
from vjepa.engine import checkpoint as ckpt
from vjepa.engine import speed
from vjepa.engine.config import load_config
from vjepa.engine.optim import FiniteWatch, NonFiniteLoss, optimizer_step
from vjepa.engine.runtime import make_accelerator

CPU = torch.device("cpu")


def tiny_cfg(tmp_path, *overrides):
    from vjepa.pretrain import PretrainConfig

    return load_config(PretrainConfig, TINY_PRETRAIN, [f"logging.folder={tmp_path}", *overrides])


def test_finite_watch_names_the_first_bad_step_and_only_raises_when_checked():
    watch = FiniteWatch(CPU, every=4)
    watch.record(torch.tensor(1.0), 0)
    watch.check(1)
    watch.record(torch.tensor(float("inf")), 2)  # no error yet: nothing is read from the device
    watch.record(torch.tensor(float("nan")), 3)
    watch.record(torch.tensor(0.5), 4)
    with pytest.raises(NonFiniteLoss, match=r"loss became inf at step 2, found by the deferred check at step 5 "
                                            r"\(the previous one passed at step 1"):
        watch.check(5)
    with pytest.raises(ValueError, match=">= 1"):
        FiniteWatch(CPU, every=0)


def test_deferred_check_lets_the_update_run_and_stops_at_the_check():
    accelerator = make_accelerator("float32")
    layer = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    watch = FiniteWatch(CPU, every=10)
    before = layer.weight.detach().clone()

    def objective():  # a NaN loss whose gradient is finite: only the loss check can catch it
        return layer(torch.ones(2, 3)).sum() + torch.tensor(float("nan")), {}

    out = optimizer_step(accelerator, opt, objective, (layer,), 7, watch=watch)
    assert torch.isnan(out["loss"]) and not torch.equal(layer.weight, before)  # no sync, no stop: updated
    with pytest.raises(NonFiniteLoss, match="step 7"):
        ckpt.save_checkpoint(accelerator, "/nonexistent/never-written.pt", {}, step=8, finite=[layer],
                             replicated=[layer], watch=watch)


def test_a_nan_between_checks_stops_the_run_before_any_save(tmp_path, monkeypatch):
    """check_finite_every=4 and checkpoints every 3 steps; the loss turns NaN in step 4 (the fifth; its
    gradients stay finite, so the weights stay finite and only the recorded loss tells): the check after
    step 4 passed, the save after step 6 (of 9) must refuse, leaving the checkpoint of step 3."""
    import vjepa.pretrain as pretrain

    real, calls = pretrain.objective, [0]

    def poisoned(*args, **kwargs):
        loss, aux = real(*args, **kwargs)
        calls[0] += 1
        return (loss + torch.tensor(float("nan")) if calls[0] == 5 else loss), aux

    monkeypatch.setattr(pretrain, "objective", poisoned)
    cfg = tiny_cfg(tmp_path, "optimization.check_finite_every=4", "logging.log_every=4", "optimization.epochs=3")
    with pytest.raises(NonFiniteLoss, match=r"loss became nan at step 4, found by the deferred check at step 6 "
                                            r"\(the previous one passed at step 4"):
        pretrain.train(cfg)
    state = ckpt.load(tmp_path / "jepa-latest.pt")
    assert state["step"] == 3  # older than the NaN
    assert all(torch.isfinite(v).all() for part in ("encoder", "predictor", "target_encoder")
               for v in state[part].values())
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["4"]  # logged once, before the NaN


def test_auto_check_period_is_every_step_on_cpu_and_log_every_on_gpu():
    assert speed.make_finite_watch(None, 10, CPU) is None  # today's check before the update
    assert speed.make_finite_watch(1, 10, CPU) is None
    assert speed.make_finite_watch(5, 10, CPU).every == 5
    with pytest.raises(ValueError, match="check_finite_every"):
        speed.make_finite_watch(0, 10, CPU)


def _adam_run(fused, steps=4):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 4))
    from vjepa.engine.optim import param_groups

    opt = speed.build_adamw(param_groups(model), CPU, fused, lr=1e-2, betas=(0.9, 0.999), eps=1e-8)
    x, y = torch.randn(8, 16), torch.randn(8, 4)
    for _ in range(steps):
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()
    return model, opt


def test_fused_adamw_matches_the_foreach_update_on_cpu():
    if not speed.fused_supported(CPU):
        pytest.skip(f"torch {torch.__version__} has no fused CPU AdamW")
    fused, opt_f = _adam_run(True)
    plain, opt_p = _adam_run(False)
    assert opt_f.param_groups[0]["fused"] and not opt_p.param_groups[0]["fused"]
    for a, b in zip(fused.parameters(), plain.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(a, b) for a, b in zip(fused.parameters(), _adam_run(False, steps=3)[0].parameters()))


def test_fused_adamw_falls_back_with_a_log_line_where_unsupported(monkeypatch, caplog):
    monkeypatch.setattr(speed, "fused_supported", lambda device: False)
    with caplog.at_level(logging.INFO, logger="vjepa.engine.speed"):
        model, opt = _adam_run(True, steps=2)
    assert not opt.param_groups[0]["fused"] and "fused AdamW is not available" in caplog.text
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert speed.build_adamw([torch.nn.Parameter(torch.zeros(2))], CPU, None, 1e-3, (0.9, 0.99), 1e-8) \
        .param_groups[0]["fused"] is None  # auto: off on CPU


def test_resume_keeps_this_runs_fused_choice():
    _, fused = _adam_run(True)
    _, plain = _adam_run(False)
    speed.keep_fused_flag(plain, copy.deepcopy(fused.state_dict()))
    assert not plain.param_groups[0]["fused"]
    torch.testing.assert_close(plain.state[plain.param_groups[0]["params"][0]]["exp_avg"],
                               fused.state[fused.param_groups[0]["params"][0]]["exp_avg"])


def test_compile_is_off_on_cpu_by_default_and_reports_missing_prerequisites(monkeypatch, caplog):
    layer = torch.nn.Linear(2, 2)
    assert not speed.compile_modules([layer], ["layer"], CPU, None)
    monkeypatch.setattr(speed, "compile_prerequisites", lambda device: "no C++ compiler on PATH")
    with caplog.at_level(logging.WARNING, logger="vjepa.engine.speed"):
        assert not speed.compile_modules([layer], ["layer"], CPU, True)
    assert "torch.compile unavailable (no C++ compiler on PATH): running layer eagerly" in caplog.text
    assert layer._compiled_call_impl is None


@pytest.mark.slow
def test_compiled_pretraining_gives_the_eager_losses(tmp_path):
    """meta.compile=true on CPU (inductor's C++ backend): the same 3 losses as eager within 1e-4, and the
    checkpoint keys are the eager ones."""
    import csv

    from vjepa.pretrain import train

    if speed.compile_prerequisites(CPU) is not None:
        pytest.skip(speed.compile_prerequisites(CPU))
    curves = {}
    for mode in ("false", "true"):
        run = tmp_path / mode
        train(tiny_cfg(run, f"meta.compile={mode}", "meta.max_steps=3"))
        with open(run / "metrics.csv") as f:
            curves[mode] = [float(r["loss"]) for r in csv.DictReader(f)]
    assert len(curves["true"]) == 3
    torch.testing.assert_close(torch.tensor(curves["true"]), torch.tensor(curves["false"]), rtol=0, atol=1e-4)
    a, b = ckpt.load(tmp_path / "true" / "jepa-latest.pt"), ckpt.load(tmp_path / "false" / "jepa-latest.pt")
    assert a["encoder"].keys() == b["encoder"].keys()


def test_uint8_clips_normalised_on_the_device_equal_the_workers_float_clips_bit_for_bit():
    from data.transforms import TrainTransform, normalize_clip, to_float_clip, to_uint8_clip

    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    g = torch.Generator().manual_seed(0)
    clips = [torch.randint(0, 256, (4, 20, 24, 3), dtype=torch.uint8, generator=g) for _ in range(3)]
    batch = torch.stack([to_uint8_clip(c) for c in clips])  # [B, C, T, H, W] uint8: what collate stacks
    assert batch.dtype == torch.uint8 and batch.shape == (3, 3, 4, 20, 24)
    assert torch.equal(normalize_clip(batch, mean, std), torch.stack([to_float_clip(c, mean, std) for c in clips]))
    s = torch.tensor(std).view(3, 1, 1, 1)  # the formula written out, independently of the module's code
    assert torch.equal(normalize_clip(batch, mean, std), batch.float() * (1.0 / (255.0 * s)) - torch.tensor(mean).view(3, 1, 1, 1) / s)
    x = torch.randn(2, 3)
    assert normalize_clip(x, mean, std) is x  # float clips pass through (already normalised)
    with pytest.raises(ValueError, match="uint8"):
        normalize_clip(torch.zeros(3, 1, 2, 2, dtype=torch.int32), mean, std)
    out = {}
    for uint8 in (False, True):  # the same random crop and flip either way
        torch.manual_seed(3)
        out[uint8] = TrainTransform(16, mean=mean, std=std, uint8=uint8)(clips[0])
    assert out[True].dtype == torch.uint8 and torch.equal(normalize_clip(out[True], mean, std), out[False])
    with pytest.raises(ValueError, match="random erasing"):
        TrainTransform(16, reprob=0.25, uint8=True)


def test_pretraining_datasets_send_uint8_and_evaluation_refuses_it():
    from data.build import build_dataset
    from data.config import DataAugConfig, DataConfig

    data = DataConfig(num_frames=4, crop_size=16)
    data.synthetic.num_videos = 4
    clip = build_dataset(data, DataAugConfig(), train=True, uint8=True)[0]["clip"]
    assert clip.dtype == torch.uint8 and clip.shape == (3, 4, 16, 16)
    assert build_dataset(data, DataAugConfig(), train=True)[0]["clip"].dtype == torch.float32
    with pytest.raises(ValueError, match="only built for training"):
        build_dataset(data, DataAugConfig(), train=False, uint8=True)


def test_only_video_pretraining_sends_uint8_images_and_random_erasing_stay_float(tmp_path):
    """The pretraining modes' datasets: V-JEPA's clips are uint8 (normalised on the device), unless random
    erasing needs them normalised on the workers; I-JEPA's images are float as before, and the loop's
    `normalize_clip` hands float input back unchanged."""
    from conftest import ROOT
    from data.transforms import normalize_clip
    from vjepa import ijepa, pretrain

    clip = pretrain.build_train_dataset(tiny_cfg(tmp_path), 1)[0]["clip"]
    assert clip.dtype == torch.uint8
    erased = pretrain.build_train_dataset(tiny_cfg(tmp_path, "data_aug.reprob=0.25"), 1)[0]["clip"]
    assert erased.dtype == torch.float32
    icfg = load_config(ijepa.IJEPAConfig, ROOT / "tests" / "tiny_ijepa.yaml", [f"logging.folder={tmp_path}"])
    image = ijepa.build_train_dataset(icfg, 1)[0]["clip"]
    assert image.dtype == torch.float32 and normalize_clip(image, (0.5,) * 3, (0.2,) * 3) is image


def test_train_step_benchmark_knows_the_dense_peaks_of_the_cards_it_names():
    import importlib.util

    from conftest import ROOT

    spec = importlib.util.spec_from_file_location("train_step_bench", ROOT / "benchmarks" / "train_step.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.detect_peak("NVIDIA H100 80GB HBM3") == 989.0
    assert bench.detect_peak("NVIDIA H100 PCIe") == 756.0
    assert bench.detect_peak("NVIDIA H200") == 989.0
    assert bench.detect_peak("NVIDIA A100-SXM4-80GB") == 312.0
    assert bench.detect_peak("NVIDIA L4") is None


def test_deferred_check_trains_exactly_as_the_per_step_check(tmp_path):
    from vjepa.pretrain import train

    for mode in ("1", "4"):
        train(tiny_cfg(tmp_path / mode, f"optimization.check_finite_every={mode}", "optimization.fused_adamw=false"))
    a, b = ckpt.load(tmp_path / "1" / "jepa-latest.pt"), ckpt.load(tmp_path / "4" / "jepa-latest.pt")
    assert all(torch.equal(a["encoder"][k], b["encoder"][k]) for k in a["encoder"])
    def losses(run):
        return [r.split(",")[:2] for r in (run / "metrics.csv").read_text().splitlines()[1:]]  # step, loss

    assert len(losses(tmp_path / "1")) == 6 and losses(tmp_path / "1") == losses(tmp_path / "4")
