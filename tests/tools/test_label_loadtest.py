"""tools/label_loadtest.py, quickly: 5 simulated annotators for 3 s against a server it starts on
a new SQLite file. Every acknowledged label is in the database once, double clicks are answered
200 with the first label's id, and the JSON holds the latency percentiles per endpoint."""
import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_loadtest_loses_and_duplicates_nothing(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("label_loadtest", ROOT / "tools" / "label_loadtest.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out_file = tmp_path / "load.json"
    rc = tool.main(["--annotators", "5", "--seconds", "3", "--tasks-per-annotator", "60", "--resend", "0.3",
                    "--db", str(tmp_path / "labels.sqlite"), "--out", str(out_file)])
    out = json.loads(out_file.read_text())
    assert json.loads(capsys.readouterr().out) == out
    assert rc == 0
    assert out["lost"] == 0 and out["duplicated"] == 0 and out["failures"] == 0 and out["conflicts"] == 0
    assert out["labels_acknowledged"] > 0 and out["rows_in_db"] == out["labels_acknowledged"]
    assert out["double_clicks"] > 0 and out["double_clicks_answered_200"] == out["double_clicks"]
    post = out["endpoints"]["POST /api/tasks/{id}/label"]
    assert post["status"] == {"201": out["labels_acknowledged"]}
    assert out["endpoints"]["POST /api/tasks/{id}/label (resend)"]["status"] == {"200": out["double_clicks"]}
    for e in out["endpoints"].values():
        assert 0 < e["p50_ms"] <= e["p95_ms"] <= e["p99_ms"] <= e["max_ms"]
