"""DistributedDataParallel over SigmoidLinear layers: examples/train_ddp.py under
torchrun with 2 gloo processes on 127.0.0.1 ends with the weights of one process trained
on the whole batches (float64, <= 1e-12), with the last layer feeding the loss and fused
with it. A hang fails the test after a timeout instead
of blocking the suite."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("torch.distributed")

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "train_ddp.py"
TIMEOUT_SECONDS = 240


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("loss", ["unfused", "fused"])
def test_ddp_two_processes_equal_one_process(loss):
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("this PyTorch build has no gloo backend")
    port = free_port()
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
        "--master-addr", "127.0.0.1", "--master-port", str(port),
        str(SCRIPT), "--check", "--steps", "8", "--tolerance", "1e-12",
        *(["--fused-loss"] if loss == "fused" else []),
    ]  # fmt: skip
    # A session of its own: on a timeout the whole group (torchrun and both workers) dies.
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        start_new_session=True,
    )  # fmt: skip
    try:
        output, _ = process.communicate(timeout=TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"DDP run did not finish in {TIMEOUT_SECONDS} s:\n{output}")
    assert process.returncode == 0, output
    fused = ", fused loss" if loss == "fused" else ""
    assert f"2 processes, 8 steps of 64 samples (torch.float64{fused})" in output
    difference = float(output.split("against one process:")[1].split()[0])
    assert difference <= 1e-12, output
