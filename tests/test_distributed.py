"""Data-parallel training (examples/ddp_train.py) on two processes with torchrun:
the processes stay in sync and take the steps of one process with the global
minibatch."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "examples" / "ddp_train.py")
STEPS = ["--steps", "40", "--log-every", "40", "--batch-size", "128"]


def _run(command, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    result = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _torchrun():
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


@pytest.mark.parametrize("family", ["delta", "normal"])
def test_two_processes_stay_in_sync(family, tmp_path):
    output = _run([*_torchrun(), SCRIPT, *STEPS, "--family", family, "--save", "ddp.pt"], tmp_path)
    assert "2 process(es)" in output
    assert re.search(r"parameters in sync across 2 processes: max difference 0\n", output)
    if family == "normal":
        return
    # A point-estimate guide has no sampling noise: two processes with half the
    # minibatch each take the same steps as one process with the whole of it.
    _run([sys.executable, SCRIPT, *STEPS, "--family", family, "--save", "one.pt"], tmp_path)
    distributed = torch.load(tmp_path / "ddp.pt")
    single = torch.load(tmp_path / "one.pt")
    assert distributed.keys() == single.keys()
    for name, value in single.items():
        assert not torch.equal(value, torch.zeros_like(value)), name  # trained
        assert torch.allclose(distributed[name], value, atol=1e-5, rtol=1e-5), name
