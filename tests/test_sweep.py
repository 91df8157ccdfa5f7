"""benchmarks/quickstart_sweep.py: the variants file and the table (the runs themselves are quickstarts)."""
import importlib.util
import json

import pytest

spec = importlib.util.spec_from_file_location("quickstart_sweep", "benchmarks/quickstart_sweep.py")
sweep = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sweep)


def test_variants_file(tmp_path):
    f = tmp_path / "v.txt"
    f.write_text("# a comment\nbase  pretrain.meta.seed=0\n\nlong  pretrain.optimization.epochs=20 arms=[pretrained]  # 1000\n")
    assert sweep.read_variants(str(f)) == [("base", ["pretrain.meta.seed=0"]),
                                           ("long", ["pretrain.optimization.epochs=20", "arms=[pretrained]"])]
    f.write_text("base seed\n")
    with pytest.raises(SystemExit, match="not key=value"):
        sweep.read_variants(str(f))
    f.write_text("a@60ep x=1\n")
    with pytest.raises(SystemExit, match="kept for re-probed"):
        sweep.read_variants(str(f))
    f.write_text("a x=1\na x=2\n")
    with pytest.raises(SystemExit, match="repeat"):
        sweep.read_variants(str(f))


def test_table_has_every_readout(tmp_path, capsys):
    row = {"arm": "pretrained", "top1": 75.61, "top5": 98.0, "linear_top1": 33.2, "knn_top1": 23.4,
           "low_shot_top1": None}
    results = {"ok": {"rows": [row], "pretrain_seconds": 357.0, "total_seconds": 444.0,
                      "monitor": [{"step": 0, "knn_top1": 7.2, "linear_top1": 14.8}]},
               "bad": {"error": "exit 1, see bad.log"}}
    lines = sweep.table(results).splitlines()
    assert lines[1].split() == ["ok", "pretrained", "75.6", "98.0", "33.2", "23.4", "-", "357", "444"]
    assert "0: 7.2/14.8" in lines[2] and lines[3].split()[:2] == ["bad", "exit"]
    (tmp_path / "sweep.json").write_text(json.dumps(results))
    assert sweep.main(["--table", str(tmp_path / "sweep.json")]) == 0
    assert capsys.readouterr().out.strip() == "\n".join(lines)


FAKE_TRAIN = """
import json, sys
from pathlib import Path
args = dict(a.split("=", 1) for a in sys.argv[1:])
folder = Path(args["folder"])
folder.mkdir(parents=True, exist_ok=True)
if args.get("fail") == "1":
    sys.exit(3)
if args.get("pretrain.meta.load_checkpoint") == "true":  # a re-probe: the checkpoint must be there, no comparison.json
    assert (folder / "jepa-latest.pt").read_text() == "weights" and not (folder / "comparison.json").exists()
else:
    (folder / "jepa-latest.pt").write_text("weights")
epochs = int(args.get("probe.optimization.num_epochs", 20))
row = {"arm": "pretrained", "top1": float(epochs), "top5": 99.0}
(folder / "comparison.json").write_text(json.dumps({"rows": [row], "pretrain_seconds": 1.0, "total_seconds": 2.0}))
"""


def test_sweep_runs_variants_and_reprobes_the_ones_that_succeed(tmp_path, monkeypatch, capsys):
    root = tmp_path / "repo"
    root.mkdir()
    (root / "train.py").write_text(FAKE_TRAIN)  # stands in for the quickstart: what the sweep does, not the runs
    monkeypatch.setattr(sweep, "ROOT", root)
    f = tmp_path / "v.txt"
    f.write_text("good  pretrain.meta.seed=0\nbad  fail=1\n")
    out = tmp_path / "out"
    assert sweep.main([str(f), "--out", str(out), "--parallel", "2", "--reprobe", "60"]) == 0
    results = json.loads((out / "sweep.json").read_text())
    assert set(results) == {"good", "bad", "good@60ep"}  # a failed run is not re-probed
    assert results["good"]["rows"][0]["top1"] == 20.0 and results["good@60ep"]["rows"][0]["top1"] == 60.0
    assert "error" in results["bad"]
    assert (out / "good" / "comparison.json").exists()  # the original run folder is left as it was


def test_only_runs_the_named_variants(tmp_path, monkeypatch):
    root = tmp_path / "repo"
    root.mkdir()
    (root / "train.py").write_text(FAKE_TRAIN)
    monkeypatch.setattr(sweep, "ROOT", root)
    f = tmp_path / "v.txt"
    f.write_text("a  x=1\nb  x=2\nc  x=3\n")
    out = tmp_path / "out"
    assert sweep.main([str(f), "--out", str(out), "--only", "c,a"]) == 0
    assert list(json.loads((out / "sweep.json").read_text())) == ["a", "c"]  # the file's order, b not run
    with pytest.raises(SystemExit):
        sweep.main([str(f), "--out", str(out), "--only", "a,zz"])  # a misspelt name is an error, not a no-op
