"""Every figure a run writes carries a line of reading help; masks.png has a legend for its three colours."""
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from vjepa import plots


@pytest.fixture
def saved(monkeypatch):
    """{file name: (figure texts, legend labels)} of the figures saved during the test."""
    out = {}
    real = Figure.savefig

    def record(fig, fname, *args, **kw):
        labels = [t.get_text() for leg in fig.legends for t in leg.get_texts()]
        labels += [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
        out[str(fname).rsplit("/", 1)[-1]] = ([t.get_text() for t in fig.texts], labels)
        return real(fig, fname, *args, **kw)

    monkeypatch.setattr(Figure, "savefig", record)
    return out


def has_help(texts):
    return len(texts) == 1 and len(texts[0]) > 60


def test_masks_png_has_a_legend_and_help(tmp_path, saved):
    clip = torch.rand(3, 4, 16, 16)
    ctx, tgt = torch.tensor([0, 1, 2, 3]), torch.tensor([4, 5, 6])  # token 7 is in neither: dropped
    plots.plot_masks(clip, [ctx], [tgt], (2, 2, 2), 8, 2, (0.5,) * 3, (0.25,) * 3, tmp_path / "masks.png")
    texts, labels = saved["masks.png"]
    assert labels == ["context (pixels unchanged)", "target (red tint)", "dropped context (greyed)"]
    assert has_help(texts) and "context" in texts[0]


def test_loss_and_comparison_figures_have_reading_help(tmp_path, saved):
    (tmp_path / "metrics.csv").write_text("step,loss,feature_std,lr\n1,1.0,0.5,1e-4\n2,0.8,0.4,2e-4\n")
    plots.plot_metric_curves(tmp_path / "metrics.csv", tmp_path / "loss.png", ("loss", "feature_std", "lr"))
    assert has_help(saved["loss.png"][0]) and "Healthy" in saved["loss.png"][0][0]
    # a run folder without metrics.csv (a finished run resumed from a copied checkpoint): no figure, no error
    plots.plot_metric_curves(tmp_path / "none" / "metrics.csv", tmp_path / "none.png", ("loss",))
    assert "none.png" not in saved
    from vjepa.quickstart import plot_comparison

    summary = {"rows": [{"name": "pretrained", "top1": 70.0}, {"name": "random init", "top1": 50.0}],
               "chance_top1": 12.5}
    plot_comparison(summary, tmp_path / "comparison.png")
    assert has_help(saved["comparison.png"][0])


def test_hjepa_and_plan_figures_have_reading_help(tmp_path, saved):
    from hjepa.world_model.evaluate import plot_success
    from hjepa.study import _plots

    curves = {f"{m}/{k}": list(np.linspace(0.9, 0.4, 3)) for m in ("level 0", "level 1", "Bayes ceiling")
              for k in ("slow", "slow_refit", "fast", "fast_refit", "cos_err")}
    views = ["level 0", "level 1"]
    _plots(tmp_path, {(v, k): 0.5 for v in views for k in ("fast", "slow")}, curves, 3, views)
    assert has_help(saved["horizon.png"][0]) and has_help(saved["probes.png"][0])
    results = [{"method": m, "bin": b, "success": np.array([1, 0, 1])} for m in ("cem", "hierarchical") for b in (0, 1)]
    plot_success(results, [(0.1, 0.4), (0.4, 0.7)], ["cem", "hierarchical"], tmp_path / "success_vs_distance.png")
    assert has_help(saved["success_vs_distance.png"][0])
