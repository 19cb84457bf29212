"""The sweep runner: flag parsing, point names, aggregation against hand-computed numbers, the
output files, and end-to-end on the micro config (SFT only, 2 points x 2 seeds): a sweep killed
with SIGKILL midway and started again ends with the table of an uninterrupted one, and a
failing point is reported while the others finish."""
import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlhf_jax import hostenv
from rlhf_jax.sweep import (Point, Sweep, SweepError, aggregate, check, expand, interval, numeric_metrics,
                            parse_grid, parse_seeds, parse_sets, points, resolve_config, table)
from rlhf_jax.sweep import procs, results
from rlhf_jax.sweep.results import is_wall_clock, summary_markdown, write_csv, write_jsonl

ROOT = Path(__file__).resolve().parents[2]
MICRO = "configs/instructgpt.py:micro"
T_975 = {1: 12.706204736174707, 2: 4.302652729749464, 3: 3.182446305284263}  # scipy.stats.t.ppf(0.975, df)


# --- flags ---------------------------------------------------------------------------------------

def test_grid_seeds_and_sets_parse():
    assert parse_grid(["ppo.kl_coef=0.01,0.05,0.2", "rm.members=1,5"]) == {
        "ppo.kl_coef": ["0.01", "0.05", "0.2"], "rm.members": ["1", "5"]}
    assert parse_grid(["stages=sft;sft,rm"]) == {"stages": ["sft", "sft,rm"]}
    assert parse_seeds("0-4") == [0, 1, 2, 3, 4]
    assert parse_seeds("0,2,7") == [0, 2, 7]
    assert parse_seeds("0-1, 5") == [0, 1, 5]
    assert parse_sets(["ppo.iterations=50", "stages=sft,rm"]) == {"ppo.iterations": "50", "stages": "sft,rm"}


@pytest.mark.parametrize("specs, message", [
    (["ppo.kl_coef"], r"--grid 'ppo.kl_coef': expected KEY=VALUE"),
    (["ppo.kl_coef=0.1,,0.2"], r"--grid 'ppo.kl_coef=0.1,,0.2': empty value"),
    (["ppo.kl_coef="], r"--grid 'ppo.kl_coef=': empty value"),
    (["ppo.kl_coef=0.1,0.1"], r"listed twice"),
    (["ppo.kl_coef=0.1", "ppo.kl_coef=0.2"], r"--grid ppo.kl_coef: given twice"),
    (["seed=1,2"], r"--grid 'seed=1,2': the seed is set by --seeds"),
    (["config.ppo.kl_coef=1"], r"without 'config.'"),
    (["ppo..kl=1"], r"not a config field path"),
])
def test_bad_grids_name_the_flag(specs, message):
    with pytest.raises(SweepError, match=message):
        parse_grid(specs)


@pytest.mark.parametrize("spec, message", [
    ("", r"--seeds '': '' is not a seed"), ("a", r"'a' is not a seed"), ("4-1", r"range 4-1 runs backwards"),
    ("0,1,1", r"listed twice"), ("-1", r"is not a seed"), ("1.5", r"is not a seed")])
def test_bad_seeds_name_the_flag(spec, message):
    with pytest.raises(SweepError, match=message):
        parse_seeds(spec)


def sweep(tmp_path, grid=None, seeds=(0, 1), sets=None, **kw):
    return Sweep(MICRO, dict(grid or {}), list(seeds), dict(sets or {}), tmp_path / "sweep", **kw)


@pytest.mark.parametrize("grid, sets, message", [
    ({"ppo.kl_coeff": ["1"]}, {}, r"--grid ppo.kl_coeff=1: no such field .*Did you mean \"kl_coef\""),
    ({"ppo.kl_coef": ["0.1", "abc"]}, {}, r"--grid ppo.kl_coef=abc: .*could not convert string to float: 'abc'"),
    ({"rm.members": ["1.5"]}, {}, r"--grid rm.members=1.5: .*invalid literal for int"),
    ({}, {"ppo.iterationz": "5"}, r"--set ppo.iterationz=5: no such field"),
    ({"ppo.kl_coef": ["0.1"]}, {"ppo.kl_coef": "0.2"}, r"--grid ppo.kl_coef: also fixed by --set"),
])
def test_check_resolves_every_flag_against_the_config(tmp_path, grid, sets, message):
    with pytest.raises(SweepError, match=message):
        check(sweep(tmp_path, grid, sets=sets))


def test_check_names_a_bad_variant(tmp_path):
    bad = Sweep("configs/instructgpt.py:mikro", {}, [0], {}, tmp_path)
    with pytest.raises(SweepError, match=r"--config configs/instructgpt.py:mikro: .*unknown variant.*'mikro'"):
        check(bad)
    with pytest.raises(SweepError, match="--vary_world_seed"):
        check(sweep(tmp_path, {"data.world.seed": ["1"]}, vary_world_seed=True))


def test_points_and_runs(tmp_path):
    s = sweep(tmp_path, parse_grid(["ppo.kl_coef=0.01,0.2", "rm.members=1,5"]), seeds=[3, 4],
              sets={"ppo.iterations": "2"})
    runs = expand(s)
    assert [r.label for r in runs[:3]] == ["kl_coef=0.01__members=1/seed_3", "kl_coef=0.01__members=1/seed_4",
                                           "kl_coef=0.01__members=5/seed_3"]
    assert len(runs) == 8 and runs[-1].workdir == tmp_path / "sweep" / "kl_coef=0.2__members=5" / "seed_4"
    config = resolve_config(MICRO, runs[-1].overrides)
    assert (config.seed, config.ppo.kl_coef, config.rm.members, config.ppo.iterations) == (4, 0.2, 5, 2)
    assert config.data.world.seed == 0  # one task world for every seed unless asked
    world = expand(sweep(tmp_path, seeds=[7], vary_world_seed=True))[0]
    assert resolve_config(MICRO, world.overrides).data.world.seed == 7


def test_point_names_fall_back_when_unsafe_long_or_shared():
    shared = points({"sft.lr": ["0.1"], "rm.lr": ["0.2"]})
    assert shared[0].name == "sft.lr=0.1__rm.lr=0.2"  # two keys end in "lr": the full keys
    unsafe = points({"data.sft_train": ["../x y"]})[0]
    assert unsafe.name.startswith("p_") and len(unsafe.name) == 12
    long = points({"data.template": ["a" * 200]})[0]
    assert long.name.startswith("p_") and long.name != unsafe.name
    assert points({"a": ["x__b=1"]})[0].name.startswith("p_")  # '__' would make names ambiguous
    assert points({})[0] == Point("base", {})


def test_child_command_environment_and_cpu_shares(tmp_path):
    cmd = procs.command(MICRO, tmp_path, {"seed": "1", "ppo.kl_coef": "0.1"}, wandb=False)
    assert cmd[1:] == ["-m", "rlhf_jax.main", "--config", MICRO, "--workdir", str(tmp_path), "--config.seed=1",
                       "--config.ppo.kl_coef=0.1", "--no_wandb"]
    env = procs.environment({0}, "sweep:kl", base={"XLA_FLAGS": "--xla_force_host_platform_device_count=8 --x=1"})
    assert env["XLA_FLAGS"] == "--x=1 --xla_force_host_platform_device_count=1"
    assert env["WANDB_TAGS"] == "sweep:kl" and env["OMP_NUM_THREADS"] == "1"
    assert env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] == "0"  # a sweep's runs share their programs
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(ROOT)
    assert procs.cpu_slots(1) is None
    slots = procs.cpu_slots(2)
    assert len(slots) == 2 and all(slots) and (len(os.sched_getaffinity(0)) < 2 or not slots[0] & slots[1])


def test_launch_pins_the_child_and_logs_its_output(tmp_path):
    cpu = min(os.sched_getaffinity(0))
    probe = [sys.executable, "-c", "import os; print('cpus', sorted(os.sched_getaffinity(0)))"]
    proc = procs.launch(probe, tmp_path / "w", procs.environment(), {cpu})
    assert proc.wait(timeout=60) == 0
    log = (tmp_path / "w" / procs.LOG_NAME).read_text()
    assert log.startswith("=== ") and f"cpus [{cpu}]" in log
    assert procs.last_line(tmp_path / "w" / "run.log") == f"cpus [{cpu}]"
    assert procs.describe_exit(-9) == "killed by SIGKILL" and procs.describe_exit(2) == "exit 2"



def test_a_second_runner_on_the_sweep_directory_fails_naming_the_first(tmp_path):
    """The sweep lock and the workdir lock (rlhf_jax.workdir.RunLock) are one HolderLock: taken
    without waiting, naming the holder while held, empty and free again after."""
    from rlhf_jax.workdir import RunLock, WorkdirError
    out = tmp_path / "new" / "sweep"
    with procs.SweepLock(out):
        holder = (out / ".sweep.lock").read_text()
        assert holder.startswith(f"pid {os.getpid()} on ")
        with pytest.raises(RuntimeError, match=f"another sweep runner uses this directory \\(pid {os.getpid()} "):
            with procs.SweepLock(out):
                pass
        with RunLock(out):  # another file, another lock
            with pytest.raises(WorkdirError, match="another run holds this workdir"):
                with RunLock(out):
                    pass
    assert (out / ".sweep.lock").read_text() == "" and (out / ".lock").read_text() == ""
    with procs.SweepLock(out):
        pass

# --- aggregation ---------------------------------------------------------------------------------

def test_aggregate_against_hand_computed_numbers():
    got = aggregate([1.0, 2.0, 4.0])
    mean, std = 7 / 3, math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2)
    half = T_975[2] * std / math.sqrt(3)
    assert got["n"] == 3 and got["ci_method"] == "t"
    assert got["mean"] == pytest.approx(mean, rel=1e-12) and got["std"] == pytest.approx(std, rel=1e-12)
    assert got["half_width"] == pytest.approx(half, rel=1e-9)  # 3.7946...
    assert got["ci_low"] == pytest.approx(mean - half, rel=1e-9)
    assert got["ci_high"] == pytest.approx(mean + half, rel=1e-9)
    two = aggregate([0.5, 1.5, None, float("nan")])  # missing and non-finite values are not counted
    assert two["n"] == 2 and two["half_width"] == pytest.approx(T_975[1] * math.sqrt(0.5) / math.sqrt(2))


def test_one_seed_has_no_interval_and_no_seed_has_no_mean():
    one = aggregate([0.25])
    assert one == {"n": 1, "mean": 0.25, "std": None, "ci_low": None, "ci_high": None, "half_width": None,
                   "ci_method": None}
    assert aggregate([None])["mean"] is None and interval([1.0]) is None
    same = aggregate([2.0, 2.0, 2.0])
    assert (same["ci_low"], same["ci_high"], same["half_width"]) == (2.0, 2.0, 0.0)


def test_bootstrap_interval_comes_from_eval_stats():
    est = interval([1.0, 2.0, 4.0, 3.0, 5.0, 2.5], method="bootstrap")
    assert est.method in ("BCa", "percentile") and est.low < est.value < est.high and est.n == 6
    with pytest.raises(ValueError, match="interval method"):
        interval([1.0, 2.0], method="wald")


def fake_tables(tmp_path):
    pts = points({"ppo.kl_coef": ["0.01", "0.2"]})
    summaries = {("kl_coef=0.01", 0): {"ppo": {"gold_reward_final": 0.5, "kl_final": 1.0, "judge": "gold",
                                                "wall_seconds": 3.0, "flag": True, "curve": [1, 2]}},
                 ("kl_coef=0.01", 1): {"ppo": {"gold_reward_final": 0.7, "kl_final": 2.0, "wall_seconds": 4.0}},
                 ("kl_coef=0.2", 1): {"ppo": {"gold_reward_final": -0.25, "kl_final": 0.125}}}
    return pts, table(pts, [0, 1], summaries)


def test_table_csv_jsonl_and_markdown(tmp_path):
    assert numeric_metrics({"a": {"b": 1, "c": "x", "d": True, "e": {"f": 2.5}}}) == {"a.b": 1.0, "a.e.f": 2.5}
    pts, rows = fake_tables(tmp_path)
    assert [(r["point"], r["metric"]) for r in rows] == [
        ("kl_coef=0.01", "ppo.gold_reward_final"), ("kl_coef=0.01", "ppo.kl_final"),
        ("kl_coef=0.01", "ppo.wall_seconds"), ("kl_coef=0.2", "ppo.gold_reward_final"), ("kl_coef=0.2", "ppo.kl_final")]
    first = rows[0]
    assert first["values"] == [0.5, 0.7] and first["seeds"] == [0, 1] and first["mean"] == pytest.approx(0.6)
    assert first["half_width"] == pytest.approx(T_975[1] * math.sqrt(0.02) / math.sqrt(2))
    assert rows[3]["values"] == [None, -0.25] and rows[3]["n"] == 1 and rows[3]["ci_low"] is None

    write_jsonl(tmp_path / "r.jsonl", rows)
    assert [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()] == rows
    write_csv(tmp_path / "r.csv", rows, ["ppo.kl_coef"], [0, 1])
    table_csv = list(csv.reader(open(tmp_path / "r.csv")))
    assert table_csv[0] == ["point", "ppo.kl_coef", "metric", "n", "mean", "std", "ci_low", "ci_high",
                            "half_width", "ci_method", "seed_0", "seed_1"]
    assert table_csv[4] == ["kl_coef=0.2", "0.2", "ppo.gold_reward_final", "1", "-0.25", "", "", "", "", "", "",
                            "-0.25"]
    assert float(table_csv[1][4]) == rows[0]["mean"]  # full precision

    runs = [{"point": p, "seed": s, "status": st, "exit_code": code, "log": f"{p}/seed_{s}/run.log", "error": err}
            for p, s, st, code, err in [("kl_coef=0.01", 0, "ok", 0, ""), ("kl_coef=0.01", 1, "ok", 0, ""),
                                        ("kl_coef=0.2", 0, "failed", 2, "error: boom"),
                                        ("kl_coef=0.2", 1, "ok", 0, "")]]
    text = summary_markdown(pts, rows, results.headline(rows, None), runs)
    lines = text.splitlines()
    assert lines[0] == "| point | ppo.kl_coef | runs ok | ppo.gold_reward_final | ppo.kl_final |"
    hw = T_975[1] * math.sqrt(0.02) / math.sqrt(2)
    assert lines[2] == f"| kl_coef=0.01 | 0.01 | 2/2 | 0.6 ± {hw:.2g} (2) | 1.5 ± {T_975[1] * 0.5:.2g} (2) |"
    assert lines[3] == "| kl_coef=0.2 | 0.2 | 1/2 | -0.25 (1) | 0.125 (1) |"
    assert "- `kl_coef=0.2/seed_0`: failed (exit 2), log `kl_coef=0.2/seed_0/run.log`: error: boom" in text
    assert "| ppo.nope |" in summary_markdown(pts, rows, ["ppo.nope"], runs) and "No run reported ppo.nope" in \
        summary_markdown(pts, rows, ["ppo.nope"], runs)


# --- end to end (micro, SFT only) -----------------------------------------------------------------

ARGS = ["--config", MICRO, "--grid", "sft.lr=0.003,0.001", "--seeds", "0,1", "--set", "stages=sft",
        "--set", "sft.epochs=4", "--no_wandb", "--metrics", "sft.val_loss,sft.train_loss"]


def sweep_cmd(out: Path, args=ARGS) -> list[str]:
    return [sys.executable, str(ROOT / "experiments" / "sweep.py"), "--out", str(out), *args]


def run_cli(out: Path, args=ARGS, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run(sweep_cmd(out, args), cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def numbers(out: Path) -> list[dict]:
    """The results rows without wall-clock metrics."""
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    return [row for row in rows if not is_wall_clock(row["metric"])]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An uninterrupted 2 x 2 sweep, shared by the end-to-end tests."""
    out = tmp_path_factory.mktemp("straight") / "sweep"
    done = run_cli(out)
    assert done.returncode == 0, done.stdout + done.stderr
    return out


def test_uninterrupted_sweep_writes_every_output(straight):
    state = json.loads((straight / "sweep.json").read_text())
    assert state["seeds"] == [0, 1] and state["grid"] == {"sft.lr": ["0.003", "0.001"]} and state["interrupted"] is None
    assert [(r["workdir"], r["status"], r["exit_code"]) for r in state["runs"]] == [
        ("lr=0.003/seed_0", "ok", 0), ("lr=0.003/seed_1", "ok", 0), ("lr=0.001/seed_0", "ok", 0),
        ("lr=0.001/seed_1", "ok", 0)]
    # each run names the machine its launch ran on (from its WORKDIR/hosts.jsonl): this one, this boot
    boot, model = hostenv.boot_id(), hostenv.cpu_info()["model"]
    for r in state["runs"]:
        assert len(r["hosts"]) == 1 and r["hosts"][0].startswith(f"{model}, "), r["hosts"]
        assert boot is None or r["hosts"][0].endswith(f", boot {boot[:8]}"), r["hosts"]
    rows = numbers(straight)
    val = next(r for r in rows if r["point"] == "lr=0.001" and r["metric"] == "sft.val_loss")
    per_seed = [json.loads((straight / "lr=0.001" / f"seed_{s}" / "summary.json").read_text())["sft"]["val_loss"]
                for s in (0, 1)]
    assert val["values"] == per_seed and val["values"][0] != val["values"][1]  # seeds differ
    assert val["mean"] == pytest.approx(sum(per_seed) / 2, rel=1e-12)
    md = (straight / "summary.md").read_text()
    assert "| point | sft.lr | runs ok | sft.val_loss | sft.train_loss |" in md and "| lr=0.001 | 0.001 | 2/2 |" in md
    assert len(list(csv.reader(open(straight / "results.csv")))) == 1 + len(json.loads(
        "[" + ",".join((straight / "results.jsonl").read_text().splitlines()) + "]"))


def test_a_finished_sweep_is_not_run_again(straight):
    before = {p: p.stat().st_mtime_ns for p in straight.glob("*/seed_*/summary.json")}
    again = run_cli(straight)
    assert again.returncode == 0 and "(4 finished before, 0 to run)" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in straight.glob("*/seed_*/summary.json")} == before
    assert all(r["reused"] for r in json.loads((straight / "sweep.json").read_text())["runs"])


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_sweep_killed_midway_resumes_to_the_same_table(straight, tmp_path):
    out = tmp_path / "sweep"  # the same directory name: the same W&B labels as the reference
    runner = subprocess.Popen(sweep_cmd(out), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    victim = out / "lr=0.003" / "seed_1"
    metrics = victim / "sft" / "metrics.jsonl"
    wait_for(lambda: metrics.exists() and metrics.read_text().count("\n") >= 2, 300, "the second run to train")
    os.kill(runner.pid, signal.SIGKILL)  # the runner only: its child must stop on its own
    runner.wait()
    left = json.loads((out / "sweep.json").read_text())["runs"]
    assert [r["status"] for r in left] == ["ok", "running", "pending", "pending"]
    wait_for(lambda: not procs.locked(victim), 120, "the orphaned run to checkpoint and stop")
    assert "SIGTERM: checkpoint saved" in (victim / "run.log").read_text()
    assert not (victim / "summary.json").exists()

    again = run_cli(out)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "(1 finished before, 3 to run)" in again.stdout
    assert (victim / "run.log").read_text().count("=== ") == 2  # started again, resumed
    assert numbers(out) == numbers(straight)
    strip = lambda p: [row for row in csv.reader(open(p)) if not is_wall_clock(row[2])]
    assert strip(out / "results.csv") == strip(straight / "results.csv")
    state = json.loads((out / "sweep.json").read_text())
    assert [r["status"] for r in state["runs"]] == ["ok"] * 4 and state["runs"][0]["reused"]


def test_a_failing_point_is_reported_and_the_others_go_on(tmp_path):
    out = tmp_path / "sweep"
    args = ["--config", MICRO, "--grid", "sft.batch_size=1000,32", "--seeds", "0", "--set", "stages=sft",
            "--no_wandb"]
    done = run_cli(out, args)
    assert done.returncode == 1, done.stdout + done.stderr  # one run failed
    assert "batch_size=1000/seed_0: failed (exit 2: error: " in done.stdout
    state = json.loads((out / "sweep.json").read_text())
    bad, good = state["runs"]
    assert (bad["status"], bad["exit_code"], good["status"]) == ("failed", 2, "ok")
    assert "sft.batch_size" in bad["error"] and (out / bad["log"]).exists()
    md = (out / "summary.md").read_text()
    assert "| batch_size=1000 | 1000 | 0/1 |" in md and "| batch_size=32 | 32 | 1/1 |" in md
    assert f"- `batch_size=1000/seed_0`: failed (exit 2), log `{bad['log']}`" in md
    assert {r["point"] for r in numbers(out)} == {"batch_size=32"}


def test_cli_refuses_bad_flags_before_running(tmp_path):
    bad = run_cli(tmp_path / "s", ["--config", MICRO, "--grid", "ppo.kl_coef=0.1,x", "--no_wandb"], timeout=120)
    assert bad.returncode == 124 and "error: --grid ppo.kl_coef=x:" in bad.stderr
    assert not (tmp_path / "s").exists()


def test_shared_stages_run_once_per_seed_and_are_refused_when_the_grid_changes_them(tmp_path):
    args = ["--config", MICRO, "--grid", "rm.lr=0.001,0.002", "--seeds", "0", "--set", "stages=sft,rm",
            "--set", "sft.epochs=2", "--set", "rm.steps=4", "--no_wandb", "--share", "sft"]
    done = run_cli(tmp_path / "s", args)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "lr=0.002/seed_0: reuses sft" in done.stdout
    a, b = (json.loads((tmp_path / "s" / f"lr={lr}" / "seed_0" / "sft" / "summary.json").read_text())
            for lr in ("0.001", "0.002"))
    assert a == b  # copied, not recomputed (the wall clock would differ)
    refused = run_cli(tmp_path / "r", [*args[:-1], "sft,rm"])
    assert refused.returncode != 0 and "stage rm reads --grid rm.lr" in refused.stderr


def test_a_sweeps_command_line_parses_back_to_the_same_sweep(tmp_path, monkeypatch):
    from rlhf_jax.sweep import Sweep, parse_grid, parse_seeds, parse_sets
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments"))
    import sweep as cli
    monkeypatch.chdir(tmp_path)
    original = Sweep("configs/instructgpt.py:micro", {"ppo.kl_coef": ["0.01", "0.2"], "stages": ["sft", "sft,rm"]},
                     [0, 1, 2, 7], {"ppo.iterations": "3"}, tmp_path / "out" / "kl", vary_world_seed=True)
    argv = original.cli(share=("sft",), metrics=["ppo.kl_final"])
    assert argv[:2] == ["python", "experiments/sweep.py"] and argv[argv.index("--out") + 1] == "out/kl"
    args = cli.parser().parse_args(argv[2:])
    back = Sweep(args.config, parse_grid(args.grid), parse_seeds(args.seeds), parse_sets(args.set),
                 tmp_path / args.out, args.vary_world_seed)
    assert back == original and args.share == "sft" and args.metrics == "ppo.kl_final" and args.no_wandb
    # a sweep run with W&B records a command that runs it with W&B
    assert not cli.parser().parse_args(original.cli(wandb=True)[2:]).no_wandb
