"""Sweep backends past one machine: SLURM (a fake `sbatch` on PATH records its arguments and runs
each array task in turn; a fake `squeue` lists the tasks still queued) and W&B sweep agents (the
sweep configuration and the parameters -> run mapping, offline). The SLURM sweep is the micro
config, SFT only, 2 points x 1 seed, against the same grid run by the local backend."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rlhf_jax.sweep import Sweep, SweepError, procs, run_sweep
from rlhf_jax.sweep.results import is_wall_clock
from rlhf_jax.sweep.slurm import parse_opts
from rlhf_jax.sweep.wandb_sweep import offline_reason, parse_args, run_for, sweep_config

ROOT = Path(__file__).resolve().parents[2]
MICRO = "configs/instructgpt.py:micro"
ARGS = ["--config", MICRO, "--grid", "sft.lr=0.003,0.001", "--seeds", "0", "--set", "stages=sft",
        "--set", "sft.epochs=2", "--no_wandb", "--metrics", "sft.val_loss"]

FAKE_SBATCH = '''#!{python}
"""A fake sbatch: appends its argv to calls.jsonl, runs every task of the script's --array (unless
FAKE_SLURM_RUN=0) with SLURM_ARRAY_TASK_ID set, prints a job id (--parsable)."""
import json, os, re, subprocess, sys
from pathlib import Path
state = Path(os.environ["FAKE_SLURM_DIR"])
with open(state / "calls.jsonl", "a") as f:
    f.write(json.dumps(sys.argv) + "\\n")
counter = state / "job_id"
job = int(counter.read_text()) + 1 if counter.exists() else 1
counter.write_text(str(job))
script = Path(sys.argv[-1])
text = script.read_text()
low, high = map(int, re.search(r"^#SBATCH --array=(\\d+)-(\\d+)$", text, re.M).groups())
output = re.search(r"^#SBATCH --output=(.*)$", text, re.M).group(1)
code = 0
for i in range(low, high + 1) if os.environ.get("FAKE_SLURM_RUN", "1") == "1" else []:
    env = dict(os.environ, SLURM_ARRAY_TASK_ID=str(i), SLURM_ARRAY_JOB_ID=str(job))
    with open(output.replace("%a", str(i)), "w") as log:
        task = subprocess.run(["bash", str(script)], env=env, stdout=log, stderr=subprocess.STDOUT)
        code = max(code, task.returncode)
print(job)
sys.exit(code if "--wait" in sys.argv else 0)
'''

FAKE_SQUEUE = '''#!/usr/bin/env bash
# A fake squeue: the array indices listed in $FAKE_SLURM_DIR/queued (one a line) are still queued.
cat "$FAKE_SLURM_DIR/queued" 2>/dev/null || true
'''


def fake_slurm(root: Path, squeue: bool = True) -> dict[str, str]:
    """An environment whose PATH starts with a fake sbatch (and squeue), state under `root`."""
    bin_dir = root / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "sbatch").write_text(FAKE_SBATCH.format(python=sys.executable))
    if squeue:
        (bin_dir / "squeue").write_text(FAKE_SQUEUE)
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_SLURM_DIR": str(root)}


def calls(root: Path) -> list[list[str]]:
    path = root / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def run_cli(out: Path, args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "experiments" / "sweep.py"), "--out", str(out), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})})


def numbers(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    return [row for row in rows if not is_wall_clock(row["metric"])]


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "sweep"
    done = run_cli(out, ARGS)
    assert done.returncode == 0, done.stdout + done.stderr
    return out


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """The same grid through --backend slurm --wait; (out, fake state dir, env, the CLI's result)."""
    root = tmp_path_factory.mktemp("slurm")
    env = fake_slurm(root)
    out = root / "sweep"
    done = run_cli(out, [*ARGS, "--backend", "slurm", "--wait", "--slurm_opts", "--partition=debug --time=0:10:00"],
                   env)
    return out, root, env, done


# --- SLURM ---------------------------------------------------------------------------------------

def test_slurm_backend_runs_the_grid_as_one_array_job(slurm, local):
    out, root, env, done = slurm
    assert done.returncode == 0, done.stdout + done.stderr
    (argv,) = calls(root)
    script = out / "slurm" / "submit_1" / "array.sh"
    assert argv[1:] == ["--parsable", "--wait", "--partition=debug", "--time=0:10:00", str(script)]
    text = script.read_text()
    assert "#SBATCH --array=0-1\n" in text and f"#SBATCH --output={script.parent}/task_%a.out" in text
    listing = json.loads((script.parent / "runs.json").read_text())
    assert [r["label"] for r in listing["runs"]] == ["lr=0.003/seed_0", "lr=0.001/seed_0"]
    first = listing["runs"][0]
    assert first["command"] == procs.command(MICRO, out / "lr=0.003" / "seed_0", first["overrides"], wandb=False)
    for run in listing["runs"]:
        assert (Path(run["workdir"]) / "summary.json").exists()
        assert "rlhf_jax.main" in (Path(run["workdir"]) / "run.log").read_text()  # the run's output, as locally
    state = json.loads((out / "sweep.json").read_text())
    assert state["backend"] == "slurm" and [j["job_id"] for j in state["slurm"]["jobs"]] == ["1"]
    assert [(r["status"], r["job"]) for r in state["runs"]] == [("ok", "1_0"), ("ok", "1_1")]
    assert numbers(out) == numbers(local)  # the same table as local processes give
    assert "| lr=0.001 | 0.001 | 1/1 |" in (out / "summary.md").read_text()


def test_slurm_rerun_submits_only_unfinished_runs(slurm, local):
    out, root, env, _ = slurm
    again = run_cli(out, [*ARGS, "--backend", "slurm"], env)
    assert again.returncode == 0 and "(2 finished before, 0 to run)" in again.stdout, again.stdout + again.stderr
    assert len(calls(root)) == 1  # nothing submitted
    (out / "lr=0.001" / "seed_0" / "summary.json").unlink()
    third = run_cli(out, [*ARGS, "--backend", "slurm"], env)
    assert third.returncode == 0, third.stdout + third.stderr
    assert "(1 finished before, 1 to run)" in third.stdout and "submitted SLURM array job 2" in third.stdout
    argv = calls(root)[-1]
    assert argv[1:] == ["--parsable", str(out / "slurm" / "submit_2" / "array.sh")]
    assert "#SBATCH --array=0-0\n" in (out / "slurm" / "submit_2" / "array.sh").read_text()
    listing = json.loads((out / "slurm" / "submit_2" / "runs.json").read_text())
    assert [r["label"] for r in listing["runs"]] == ["lr=0.001/seed_0"]
    state = json.loads((out / "sweep.json").read_text())
    assert [(r["status"], r["job"]) for r in state["runs"]] == [("ok", "1_0"), ("ok", "2_0")]
    assert numbers(out) == numbers(local)


def test_the_array_script_passes_shellcheck(slurm, shellcheck):
    out = slurm[0]
    done = subprocess.run([shellcheck, str(out / "slurm" / "submit_1" / "array.sh")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout


def queued_sweep(tmp_path) -> Sweep:
    return Sweep(MICRO, {"sft.lr": ["0.003", "0.002", "0.001"]}, [0], {"stages": "sft"}, tmp_path / "sweep")


def test_submit_and_return_then_resubmit_what_squeue_no_longer_lists(tmp_path, monkeypatch, capsys):
    env = fake_slurm(tmp_path)
    monkeypatch.setenv("PATH", env["PATH"])
    monkeypatch.setenv("FAKE_SLURM_DIR", env["FAKE_SLURM_DIR"])
    monkeypatch.setenv("FAKE_SLURM_RUN", "0")  # sbatch queues; no task runs
    sweep = queued_sweep(tmp_path)
    first = run_sweep(sweep, wandb=False, backend="slurm", slurm_opts=["--gres=gpu:1"])
    assert first.submitted == 3 and first.failed == 0 and first.rows == []
    assert [r["job"] for r in first.runs] == ["1_0", "1_1", "1_2"]
    assert "Run this command again once the job has ended" in capsys.readouterr().out
    (tmp_path / "queued").write_text("1\n")  # task 1 still pending, 0 and 2 ended without a summary
    second = run_sweep(sweep, wandb=False, backend="slurm")
    assert [(r["status"], r["job"]) for r in second.runs] == [("submitted", "2_0"), ("submitted", "1_1"),
                                                              ("submitted", "2_1")]
    said = capsys.readouterr().out
    assert "lr=0.003/seed_0: its task 1_0 ended without a finished run" in said and "1 still queued" in said
    assert json.loads((sweep.out / "slurm" / "submit_2" / "runs.json").read_text())["runs"][1]["label"] == \
        "lr=0.001/seed_0"
    state = json.loads((sweep.out / "sweep.json").read_text())
    assert [j["labels"] for j in state["slurm"]["jobs"]] == [
        ["lr=0.003/seed_0", "lr=0.002/seed_0", "lr=0.001/seed_0"], ["lr=0.003/seed_0", "lr=0.001/seed_0"]]
    (tmp_path / "queued").write_text("0\n1\n")  # job 2's task 0 is queued; job 1 is gone (nothing lists 1_1)
    (tmp_path / "bin" / "squeue").unlink()
    with pytest.raises(RuntimeError, match="`squeue` is not on PATH"):
        run_sweep(sweep, wandb=False, backend="slurm")
    assert len(calls(tmp_path)) == 2


@pytest.mark.parametrize("kw, message", [
    ({"backend": "ray"}, r"--backend 'ray': choose one of \('local', 'slurm', 'wandb'\)"),
    ({"backend": "slurm", "share": ("sft",)}, r"--share sft: only with --backend local"),
    ({"backend": "wandb", "jobs": 2}, r"--jobs 2: only with --backend local"),
    ({"slurm_opts": ["--time=1"]}, r"--slurm_opts: only with --backend slurm"),
    ({"backend": "wandb", "wait": True}, r"--wait: only with --backend slurm"),
])
def test_backend_flags_are_checked(tmp_path, kw, message):
    with pytest.raises(ValueError, match=message):
        run_sweep(queued_sweep(tmp_path), wandb=False, **kw)
    assert not (tmp_path / "sweep").exists()


def test_slurm_needs_sbatch_and_keeps_its_own_options(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch
    with pytest.raises(RuntimeError, match="`sbatch` is not on PATH"):
        run_sweep(queued_sweep(tmp_path), wandb=False, backend="slurm")
    assert not (tmp_path / "sweep" / "sweep.json").exists()
    assert parse_opts("--partition=gpu --time=4:00:00 --gres='gpu:1'") == ["--partition=gpu", "--time=4:00:00",
                                                                           "--gres=gpu:1"]
    with pytest.raises(ValueError, match="--array is set by the sweep runner"):
        parse_opts("--array=0-3 -p x")


def test_a_task_index_out_of_range_is_named(tmp_path, capsys):
    from rlhf_jax.sweep import task
    runs = tmp_path / "runs.json"
    runs.write_text(json.dumps({"runs": [{"label": "a"}]}))
    assert task.main([str(runs), "3"]) == 2
    assert "task index 3 is not in 0-0" in capsys.readouterr().err


# --- W&B sweep agents ---------------------------------------------------------------------------

def wandb_sweep(tmp_path) -> Sweep:
    return Sweep(MICRO, {"ppo.kl_coef": ["0.01", "0.2"], "stages": ["sft", "sft,rm"]}, [0, 1],
                 {"ppo.iterations": "2"}, tmp_path / "kl")


def test_wandb_sweep_configuration_is_a_grid_over_the_keys_and_seeds(tmp_path):
    sweep = wandb_sweep(tmp_path)
    assert sweep_config(sweep, "proj") == {
        "name": "kl", "method": "grid", "program": "rlhf_jax/sweep/agent.py",
        "command": ["${env}", "python", "-m", "rlhf_jax.sweep.agent", "--out", str(sweep.out.resolve()), "${args}"],
        "parameters": {"ppo.kl_coef": {"values": ["0.01", "0.2"]}, "stages": {"values": ["sft", "sft,rm"]},
                       "seed": {"values": [0, 1]}},
        "project": "proj"}


def test_wandb_parameters_map_to_the_runs_workdir_and_command(tmp_path):
    sweep = wandb_sweep(tmp_path)
    run = run_for(sweep, parse_args(["--ppo.kl_coef=0.2", "--stages=sft,rm", "--seed=1"]))
    assert run.workdir == tmp_path / "kl" / "kl_coef=0.2__stages=sft,rm" / "seed_1"
    assert run.overrides == {"name": "kl/kl_coef=0.2__stages=sft,rm", "log.group": "kl", "ppo.iterations": "2",
                             "ppo.kl_coef": "0.2", "stages": "sft,rm", "seed": "1"}
    assert run_for(sweep, {"ppo.kl_coef": 0.01, "stages": "sft", "seed": 0}).label == "kl_coef=0.01__stages=sft/seed_0"
    cmd = procs.command(MICRO, run.workdir, run.overrides, wandb=True)
    assert cmd[-3:] == ["--config.ppo.kl_coef=0.2", "--config.stages=sft,rm", "--config.seed=1"]
    for params, message in [({"ppo.kl_coef": "0.5", "stages": "sft", "seed": "0"}, r"ppo.kl_coef='0.5' is not one"),
                            ({"ppo.kl_coef": "0.2", "stages": "sft", "seed": "7"}, r"seed='7' is not one"),
                            ({"ppo.kl_coef": "0.2", "seed": "0"}, r"missing: \['stages'\]"),
                            ({"ppo.kl_coef": "0.2", "stages": "sft", "seed": "0", "lr": "1"}, r"unknown: \['lr'\]")]:
        with pytest.raises(SweepError, match=message):
            run_for(sweep, params)
    with pytest.raises(SweepError, match="expected --KEY=VALUE"):
        parse_args(["seed", "1"])


def test_wandb_backend_offline_writes_the_yaml_and_the_commands(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    sweep = wandb_sweep(tmp_path)
    outcome = run_sweep(sweep, wandb=True, backend="wandb")
    said = capsys.readouterr().out
    written = yaml.safe_load((sweep.out / "wandb" / "sweep.yaml").read_text())
    assert written == sweep_config(sweep, "rlhf_jax")
    assert "not creating the W&B sweep (WANDB_MODE=offline)" in said
    assert f"wandb sweep --project rlhf_jax {sweep.out / 'wandb' / 'sweep.yaml'}" in said
    assert "wandb agent ENTITY/rlhf_jax/SWEEP_ID" in said
    assert {r["status"] for r in outcome.runs} == {"pending"} and outcome.submitted == 0
    assert json.loads((sweep.out / "sweep.json").read_text())["backend"] == "wandb"
    assert offline_reason(False, {}) == "--no_wandb"
    assert offline_reason(True, {"WANDB_MODE": "disabled", "WANDB_API_KEY": "k"}) == "WANDB_MODE=disabled"
    assert offline_reason(True, {"WANDB_API_KEY": "k"}) is None


def test_the_agent_program_finds_the_run_of_a_sweep(slurm, monkeypatch, capsys):
    """On the SLURM sweep's directory: a finished run is not run again; a value outside the grid fails."""
    from rlhf_jax.sweep import agent
    out = slurm[0]
    monkeypatch.chdir(ROOT)
    run, cmd, cwd, _ = agent.plan(out, ["--sft.lr=0.003", "--seed=0"])
    assert run.workdir == out / "lr=0.003" / "seed_0" and cwd == str(ROOT)
    assert cmd[1:5] == ["-m", "rlhf_jax.main", "--config", MICRO] and "--no_wandb" not in cmd
    assert agent.main(["--out", str(out), "--sft.lr=0.003", "--seed=0"]) == 0
    assert "lr=0.003/seed_0: already finished" in capsys.readouterr().out
    assert agent.main(["--out", str(out), "--sft.lr=0.5", "--seed=0"]) == 2
    assert "sft.lr='0.5' is not one of the sweep's values ['0.003', '0.001']" in capsys.readouterr().err


def test_cli_takes_one_sbatch_option_as_the_value_of_slurm_opts(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "experiments"))
    import sweep as cli
    argv = cli._attach_opts(["--config", MICRO, "--out", "o", "--backend", "slurm", "--slurm_opts", "--time=1:00:00"])
    args = cli.parser().parse_args(argv)
    assert (args.backend, args.slurm_opts, args.wait) == ("slurm", "--time=1:00:00", False)
    assert cli.parser().parse_args(["--config", MICRO, "--out", "o"]).backend == "local"
