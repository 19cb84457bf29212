"""Reliability: kill anywhere and resume, a workdir that knows its config and its holder, corrupt
files named, clean exits, W&B modes. Each test reproduces a defect an outside probe found."""
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from rlhf_jax import checkpoint, signals
from rlhf_jax.errors import CorruptFileError, user_message
from rlhf_jax.logging import Writer, truncate_metrics, wandb_mode
from rlhf_jax.stages import run as run_pipeline
from rlhf_jax.workdir import RunLock, WorkdirError, prepare

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import kill_anywhere  # noqa: E402


from tests.children import child_env
from tests.micro import micro, numbers  # noqa: E402


@pytest.fixture(scope="module")
def straight(micro_trained):
    """An uninterrupted micro run (the session's), shared by the tests that compare against it."""
    return micro_trained


def test_sigkill_at_random_moments_then_resume_gives_the_same_numbers(tmp_path):
    """CI-sized: 6 kills over the micro config (tools/kill_anywhere.py runs hundreds)."""
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    code, _, tail = kill_anywhere.run_once(kill_anywhere.command("configs/instructgpt.py:micro", reference, []), 600)
    assert code == 0, tail
    report = kill_anywhere.kill_and_resume(kill_anywhere.command("configs/instructgpt.py:micro", killed, []),
                                           kills=6, seed=0, events=kill_anywhere.timeline(reference))
    assert report["final_exit"] == 0, report["final_output"]
    load = lambda d: numbers(json.loads((d / "summary.json").read_text()))
    assert load(killed) == load(reference)
    assert kill_anywhere.metrics_clean(killed) == {"sft": True, "rm": True, "ppo": True}
    assert len(set(report["progress_at_kill"])) >= 3  # the kills fell in several phases


def test_a_stage_with_nothing_left_to_run_still_reports(tmp_path, straight):
    path, summary = straight
    work = tmp_path / "copy"
    shutil.copytree(path, work)
    # the 0.7-7.6 s window after a stage's last checkpoint: checkpoints all there, no final/summary
    shutil.rmtree(work / "ppo" / "final")
    (work / "ppo" / "summary.json").unlink()
    assert numbers(run_pipeline(micro(), work, use_wandb=False)) == numbers(summary)


def test_zero_step_configs_finish(tmp_path):
    summary = run_pipeline(micro(**{"stages": "sft", "sft.epochs": 0}), tmp_path / "sft0", use_wandb=False)["sft"]
    assert summary["steps"] == 0 and summary["train_loss"] is None and np.isfinite(summary["val_loss"])


def test_metrics_files_are_truncated_to_the_resumed_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, 7)) + '{"step": 7, "lo')
    assert truncate_metrics(path, 4) == 3
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3, 4]
    w = Writer(tmp_path, "x", wandb="disabled", resume_step=2)
    w.write(3, {"loss": 0.5})
    w.close()
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3]


def test_a_changed_config_is_refused_naming_the_fields(tmp_path, straight):
    path, summary = straight
    work = tmp_path / "copy"
    shutil.copytree(path, work)
    with pytest.raises(WorkdirError, match=r"ppo\.kl_coef: 0\.05 -> 0\.5 \(read by stage ppo\)"):
        run_pipeline(micro(**{"ppo.kl_coef": 0.5}), work, use_wandb=False)
    with pytest.raises(WorkdirError, match=r"data\.max_len: 24 -> 20 \(read by stage ppo, rm, sft\)"):
        run_pipeline(micro(**{"data.max_len": 20}), work, use_wandb=False)
    # the rankings' size is read by rm and ppo (through rm), not by sft, which ignores that part of data
    with pytest.raises(WorkdirError, match=r"data\.n_rankings: \d+ -> 7 \(read by stage ppo, rm\)"):
        run_pipeline(micro(**{"data.n_rankings": 7}), work, use_wandb=False)
    # logging is safe to change; so is a field only unstarted stages read
    assert numbers(run_pipeline(micro(**{"log.project": "other"}), work, use_wandb=False)) == numbers(summary)
    for stage in ("ppo",):
        shutil.rmtree(work / stage)
    changed = run_pipeline(micro(**{"ppo.kl_coef": 0.5, "log.project": "other"}), work, use_wandb=False)
    assert changed["ppo"]["kl_coef_final"] == pytest.approx(0.5)
    # --fresh starts over
    again = run_pipeline(micro(**{"stages": "sft"}), work, use_wandb=False, fresh=True)
    assert set(again) == {"sft"} and not (work / "rm").exists()


def test_another_gold_judge_is_taken_by_a_workdir_whose_rm_has_run_but_not_by_a_judging_stage(tmp_path):
    """data.gold is what the judging stages (ppo's and dpo's gold rows, bon, eval) read; sft and rm never
    do, so a finished RM is reused under another judge, and a started PPO refuses it."""
    from rlhf_jax import workdir as workdirs
    from rlhf_jax.stages import STAGES, stage_reads
    c = micro(stages="sft,rm,ppo,dpo,bon", **{"data.gold": "rm:/judges/a"})
    reads = {name: stage_reads(name, c) for name in STAGES}
    ignores = {name: STAGES[name].ignores for name in STAGES}
    assert {"ppo", "dpo", "bon", "eval"} <= workdirs.readers("data.gold", reads, ignores)
    assert not {"sft", "rm"} & workdirs.readers("data.gold", reads, ignores)
    workdirs.check_config(tmp_path, c, reads, set(), ignores)
    other = micro(stages="sft,rm,ppo,dpo,bon", **{"data.gold": "rm:/judges/b"})
    assert workdirs.check_config(tmp_path, other, reads, {"sft", "rm"}, ignores, write=False) == ["data.gold"]
    with pytest.raises(WorkdirError, match=r"data\.gold: 'rm:/judges/a' -> 'rm:/judges/b' \(read by stage ppo\)"):
        workdirs.check_config(tmp_path, other, reads, {"sft", "rm", "ppo"}, ignores, write=False)


def test_resume_with_another_batch_size_is_refused(tmp_path):
    with pytest.raises(SystemExit):
        run_pipeline(micro(**{"debug_stop_after.ppo": 2}), tmp_path, use_wandb=False)
    with pytest.raises(WorkdirError, match=r"ppo\.batch_size: 16 -> 32 \(read by stage ppo\)"):
        run_pipeline(micro(**{"ppo.batch_size": 32}), tmp_path, use_wandb=False)


def test_a_second_run_on_the_same_workdir_fails_at_once_naming_the_holder(tmp_path):
    prepare(tmp_path)
    env = child_env(1)
    with RunLock(tmp_path):
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "rlhf_jax.main", "--config", "configs/instructgpt.py:micro",
                              "--workdir", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=120)
    assert out.returncode == 2 and f"another run holds this workdir (pid {os.getpid()}" in out.stderr
    assert "Traceback" not in out.stderr and time.perf_counter() - t0 < 60
    assert not (tmp_path / "sft").exists()


def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, straight, capfd):
    _, summary = straight
    with pytest.raises(SystemExit):
        run_pipeline(micro(**{"debug_stop_after.sft": 6}), tmp_path, use_wandb=False)  # checkpoints 4 and 6
    latest = tmp_path / "sft" / "checkpoints" / "6"
    for f in (latest / "state").rglob("*"):
        if f.is_file():
            f.write_bytes(b"\0garbage")
    resumed = run_pipeline(micro(), tmp_path, use_wandb=False)
    err = capfd.readouterr().err
    assert f"checkpoint {latest} is unreadable" in err and "falling back to step 4" in err
    assert numbers(resumed) == numbers(summary)


def test_a_checkpoint_of_another_shape_is_refused_naming_the_leaf(tmp_path, capfd):
    """A checkpoint whose arrays have other shapes than the run's state (another configuration or
    version) is refused before orbax reads it, naming the first such leaf, with no traceback from
    orbax's asynchronous reads (it printed one per read in flight)."""
    import jax.numpy as jnp
    ckpt = checkpoint.Checkpointer(tmp_path / "ckpt")
    ckpt.save(3, {"params": {"w": jnp.zeros((1, 4, 2)), "b": jnp.zeros(2)}, "step": jnp.zeros((), jnp.int32)}, {})
    like = {"params": {"w": jnp.zeros((4, 2)), "b": jnp.zeros(2)}, "step": jnp.zeros((), jnp.int32)}
    with pytest.raises(ValueError, match=r"^params/w: stored shape \(1, 4, 2\), this run's \(4, 2\)"):
        ckpt.restore(like)
    with pytest.raises(CorruptFileError, match="no checkpoint can be read"):
        ckpt.restore_latest_readable(like, "rm")
    checkpoint.save_final(tmp_path, "rm", {"w": jnp.zeros((2, 3))}, {})
    with pytest.raises(CorruptFileError,
                       match=r"rm/final: .*\(ValueError: v: stored shape absent, this run's \(2, 3\)"):
        checkpoint.load_final(tmp_path, "rm", {"v": jnp.zeros((2, 3))})
    err = capfd.readouterr().err
    assert "params/w: stored shape (1, 4, 2)" in err and "Traceback" not in err and "Event loop" not in err
    back, _ = ckpt.restore({"params": {"w": jnp.ones((1, 4, 2)), "b": jnp.ones(2)}, "step": jnp.ones((), jnp.int32)})
    assert float(back["params"]["w"].sum()) == 0.0  # the same shapes restore


def test_corrupt_files_are_named(tmp_path, straight):
    path, _ = straight
    work = tmp_path / "copy"
    shutil.copytree(path, work)
    (work / "rm" / "summary.json").write_text("{not json")
    with pytest.raises(CorruptFileError, match=r"rm/summary\.json: not valid JSON"):
        checkpoint.read_summary(work, "rm")
    for f in (work / "sft" / "final").rglob("*"):
        if f.is_file():
            f.write_bytes(b"junk")
    from rlhf_jax.context import build_context
    from rlhf_jax.stages.handoff import load_sft
    with pytest.raises(CorruptFileError, match=r"sft/final: the final parameters of stage 'sft' cannot be read"):
        load_sft(build_context(micro(), work, use_wandb=False))
    from rlhf_jax.models import load_pretrained
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 40)
    with pytest.raises(CorruptFileError, match=r"model\.gguf: cannot be read as a checkpoint"):
        load_pretrained(bad)


def test_user_mistakes_and_resource_failures_get_a_message_and_an_exit_code(tmp_path):
    assert user_message(OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x")))[1] == 3
    msg, code = user_message(OSError(errno.EROFS, "Read-only file system", "/ro/run"))
    assert code == 2 and msg.startswith("/ro/run: cannot write")
    assert user_message(KeyError("a bug")) is None
    (tmp_path / "file").write_text("x")
    with pytest.raises(WorkdirError, match="is a file, not a directory"):
        prepare(tmp_path / "file")


@pytest.mark.parametrize("args, code, words", [
    (["--config.ppo.kl_coeff=0.5"], 2, '--config.ppo.kl_coeff: no such field. Did you mean "kl_coef"'),
    (["--config.model.overrides.n_layers=0"], 2, "config.model.overrides.n_layers: 0 must be a positive integer"),
    (["--config.data.max_len=0"], 2, "config.data.max_len: must be > 0"),
    (["--config.sft.lr=nan"], 2, "config.sft.lr: nan must be a positive number"),
    (["--config.sft.lr=1e30", "--config.sft.max_grad_norm=0", "--config.stages=sft"], 3, "step 3: non-finite"),
    (["--config.model.preset=", "--config.model.path=/absent/model.gguf"], 2,
     "config.model.path: /absent/model.gguf does not exist"),
])
def test_cli_errors_are_one_line_without_traceback(tmp_path, args, code, words):
    env = child_env(1)
    out = subprocess.run([sys.executable, "-m", "rlhf_jax.main", "--config", "configs/instructgpt.py:micro",
                          "--workdir", str(tmp_path / "w"), *args], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == code, out.stderr[-2000:]
    assert words in out.stderr and "Traceback" not in out.stderr


def test_a_missing_model_file_says_how_to_fetch_it(tmp_path, monkeypatch):
    from rlhf_jax.context import base_model
    from rlhf_jax.errors import ConfigError
    monkeypatch.setenv("RLHF_JAX_SMOLLM2", str(tmp_path / "absent.gguf"))  # where the fetch tool puts it
    c = micro()
    c.model.path = str(tmp_path / "absent.gguf")
    with pytest.raises(ConfigError, match=r"config\.model\.path: .*absent\.gguf does not exist; fetch it with "
                                          r"`python tools/fetch_smollm2\.py`"):
        base_model(c, None)


def test_sigint_saves_a_checkpoint_and_exits_130(tmp_path):
    env = child_env(1)
    work = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "rlhf_jax.main", "--config", "configs/instructgpt.py:micro",
                             "--workdir", str(work), "--config.sft.epochs=50", "--config.sft.save_every=1000"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    metrics = work / "sft" / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and (not metrics.exists() or metrics.stat().st_size < 200):
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode == 130, out[-2000:]
    assert "SIGINT: checkpoint saved at step" in out and "KeyboardInterrupt" not in out


def test_a_signal_stops_sampling_and_evaluation_between_batches():
    from rlhf_jax.data.batches import evaluate_all
    signals.reset()
    signals._STATE["signal"] = "SIGTERM"
    try:
        with pytest.raises(signals.StopRequested) as e:
            evaluate_all(lambda p, b: {"x": 1.0}, None, {"a": np.zeros((10, 2))}, 4)
        assert e.value.code == 143 and e.value.stage == "evaluation"
    finally:
        signals.reset()


def test_too_few_prompts_fail_before_the_first_stage(tmp_path):
    from rlhf_jax.errors import UserError
    with pytest.raises(UserError, match=r"config\.ppo\.batch_size: 8 prompts cannot fill one PPO batch of 16"):
        run_pipeline(micro(**{"data.n_prompts": 8}), tmp_path, use_wandb=False)
    assert not (tmp_path / "sft").exists()


def test_wandb_mode_follows_the_config_then_the_environment_never_the_key():
    key = {"WANDB_API_KEY": "x" * 40}
    assert wandb_mode("auto", {**key, "WANDB_MODE": "offline"}) == "offline"
    assert wandb_mode("offline", key) == "offline"
    assert wandb_mode("auto", key) == "online" and wandb_mode("auto", {}) == "offline"
    with pytest.raises(ValueError, match="log.wandb='onlin' must be"):
        wandb_mode("onlin", {})


def test_online_wandb_that_cannot_start_falls_back_to_offline(tmp_path, monkeypatch):
    import rlhf_jax.logging as lg
    monkeypatch.setattr(lg, "WANDB_INIT_TIMEOUT", 5.0)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.delenv("WANDB_MODE", raising=False)
    t0 = time.perf_counter()
    w = Writer(tmp_path, "sft", wandb="online", run_name="fallback")
    w.write(1, {"loss": 1.0})
    w.close()
    assert w.run is not None and w.run.settings.mode in ("offline", "dryrun")
    assert time.perf_counter() - t0 < 90


@pytest.mark.devices(8)
def test_a_checkpoint_of_replicated_arrays_is_written_whole_and_restores(tmp_path, monkeypatch):
    """An array replicated over the 8 devices is saved by one replica as a whole shard (orbax's
    replica-parallel split, one slice op per array and device, only from REPLICA_PARALLEL_MIN_BYTES
    per part), and restores bit for bit with its sharding."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec
    from orbax.checkpoint._src.serialization import replica_slices

    sliced = []
    data = replica_slices.ReplicaSlice.data
    monkeypatch.setattr(replica_slices.ReplicaSlice, "data",
                        lambda self: (sliced.append(self.slice_args), data(self))[1])
    mesh = jax.make_mesh((8,), ("data",), devices=jax.devices()[:8])
    replicated = NamedSharding(mesh, PartitionSpec())
    state = {"w": jax.device_put(np.arange(4096, dtype=np.float32).reshape(64, 64), replicated),
             "b": jax.device_put(np.ones(8, np.float32), replicated)}
    ckpt = checkpoint.Checkpointer(tmp_path / "ckpt")
    ckpt.save(1, state, {"position": 3})
    assert sliced and all(args is None for args in sliced)  # whole shards, written once each
    back, meta = ckpt.restore(state)
    assert meta == {"position": 3}
    for k in state:
        assert back[k].sharding == replicated
        np.testing.assert_array_equal(np.asarray(back[k]), np.asarray(state[k]))
