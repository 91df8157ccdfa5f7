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
