"""One micro pipeline (SFT, RM, PPO) per test session, for the tests that read or extend a
finished workdir (the evaluation suites, the critic-free PPO stage on its SFT and RM)."""
import pytest

from configs.instructgpt import get_config
from rlhf_jax.stages import run as run_pipeline


@pytest.fixture(scope="session")
def micro_trained(tmp_path_factory):
    """(workdir, summary) of configs/instructgpt.py:micro; tests copy what they change."""
    path = tmp_path_factory.mktemp("micro_trained")
    return path, run_pipeline(get_config("micro"), path, use_wandb=False)
