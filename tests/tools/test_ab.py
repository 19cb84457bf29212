"""tools/ab.py: a timing tool run in fresh processes, the two sides (checkouts, environment)
alternating, its numbers picked from each run's JSON."""
import json

import pytest

from tools import ab

# a stand-in timing tool: its "time" is the side's SPEED plus the run's index, and every run
# appends its side to a shared log, so the order of the processes can be read back
TOOL = '''import json, os, sys
log = os.environ["AB_LOG"]
with open(log, "a") as f:
    f.write(os.environ.get("SIDE", "{side}") + "\\n")
n = sum(1 for _ in open(log))
out = sys.argv[sys.argv.index("--out") + 1]
json.dump({{"ours": {{"iteration_s": float(os.environ.get("SPEED", {speed})) + n, "argv": sys.argv[1:-2]}}}},
          open(out, "w"))
'''


def checkout(path, side: str, speed: float):
    (path / "tools").mkdir(parents=True)
    (path / "tools" / "bench.py").write_text(TOOL.format(side=side, speed=speed))
    return path


def test_checkouts_alternate_in_abba_order_and_medians_and_pairs_are_read(tmp_path, monkeypatch, capsys):
    log = tmp_path / "order.log"
    monkeypatch.setenv("AB_LOG", str(log))
    a, b = checkout(tmp_path / "a", "a", 10.0), checkout(tmp_path / "b", "b", 1.0)
    out = ab.main(["--pairs", "3", "--a-root", str(a), "--b-root", str(b), "--pick", "ours.iteration_s",
                   "--out", str(tmp_path / "ab.json"), "--", "tools/bench.py", "--steps", "3"])
    assert log.read_text().split() == ["a", "b", "b", "a", "a", "b"]
    # run k (1-based) takes speed + k: A runs 1, 4, 5; B runs 2, 3, 6
    assert out["runs"] == {"a": [{"ours.iteration_s": 11.0}, {"ours.iteration_s": 14.0}, {"ours.iteration_s": 15.0}],
                           "b": [{"ours.iteration_s": 3.0}, {"ours.iteration_s": 4.0}, {"ours.iteration_s": 7.0}]}
    assert out["medians"] == {"a": {"ours.iteration_s": 14.0}, "b": {"ours.iteration_s": 4.0}}
    assert out["pairs_b_less"] == {"ours.iteration_s": 3}
    assert json.loads((tmp_path / "ab.json").read_text()) == out


def test_environment_sides_on_one_checkout(tmp_path, monkeypatch):
    """Same code, B's environment variables only: B slower here, so B took less in no pair."""
    monkeypatch.setenv("AB_LOG", str(tmp_path / "order.log"))
    root = checkout(tmp_path / "c", "?", 0.0)
    out = ab.main(["--pairs", "2", "--a-root", str(root), "--b-root", str(root), "--a-env", "SIDE=a",
                   "--b-env", "SIDE=b", "--b-env", "SPEED=100", "--pick", "ours.iteration_s", "tools/bench.py"])
    assert (tmp_path / "order.log").read_text().split() == ["a", "b", "b", "a"]
    assert out["sides"]["b"]["env"] == {"SIDE": "b", "SPEED": "100"}
    assert out["medians"]["b"]["ours.iteration_s"] == 102.5 and out["pairs_b_less"]["ours.iteration_s"] == 0


@pytest.mark.parametrize("argv,message", [
    (["--pick", "ours.nope"], "no 'nope' at ours of tools/bench.py's JSON; there: argv, iteration_s"),
    (["--pick", "x", "--b-env", "NOEQUALS"], "must be KEY=VALUE: NOEQUALS"),
    (["--pick", "x", "--a-root", "/no/such/dir"], "no such checkout: /no/such/dir"),
    (["--pick", "x", "--pairs", "0"], "--pairs must be at least 1"),
    (["--pick", "ours"], "--pick ours: tools/bench.py's JSON has dict there, not a number"),
])
def test_user_mistakes_exit_with_a_message(tmp_path, monkeypatch, argv, message):
    monkeypatch.setenv("AB_LOG", str(tmp_path / "order.log"))
    root = checkout(tmp_path / "c", "?", 0.0)
    base = ["--b-root", str(root), "--b-env", "SIDE=b"]
    argv = [x if x != "/no/such/dir" else str(tmp_path / "no" / "such" / "dir") for x in argv]
    message = message.replace("/no/such/dir", str(tmp_path / "no" / "such" / "dir"))
    with pytest.raises(SystemExit, match=message.replace(".", r"\.").replace("'", "'")):
        ab.main(["--a-root", str(root), *base, *argv, "tools/bench.py"])


def test_the_same_side_twice_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="the same checkout with the same environment"):
        ab.main(["--a-root", str(tmp_path), "--b-root", str(tmp_path), "--pick", "x", "tools/bench.py"])


def test_a_tool_outside_the_checkouts_or_without_out_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("AB_LOG", str(tmp_path / "order.log"))
    root = checkout(tmp_path / "c", "?", 0.0)
    sides = ["--a-root", str(root), "--b-root", str(root), "--b-env", "SIDE=b", "--pick", "x"]
    with pytest.raises(SystemExit, match="must be a path inside the checkouts"):
        ab.main([*sides, str(root / "tools" / "bench.py")])
    (root / "tools" / "quiet.py").write_text("print('no file')\n")
    with pytest.raises(SystemExit, match="exited 0 but wrote no --out file"):
        ab.main([*sides, "tools/quiet.py"])
