"""`slm train --nproc N` and its multi-node flags: the same entry point relaunched under torchrun, and a
rank that dies turned into a failed run whose status names the rank and its error."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Optional

from slm_core.errors import SLMError
from slm_core.run import runs

LAUNCH_FLAGS = ("--nproc", "--nnodes", "--node-rank", "--rdzv-endpoint")


def under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or int(os.environ.get("WORLD_SIZE", "1")) > 1


def torchrun_command(entry_args: list[str], nproc: int, nnodes: int = 1, node_rank: int = 0,
                     rdzv_endpoint: Optional[str] = None) -> list[str]:
    """The torchrun line that runs `python -m slm_core <entry_args>` on nproc processes per node."""
    if nproc < 1 or nnodes < 1:
        raise SLMError("--nproc and --nnodes must be at least 1")
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}"]
    if nnodes == 1 and not rdzv_endpoint:
        cmd.append("--standalone")  # one machine: a local rendezvous on a free port
    else:
        if not rdzv_endpoint:
            raise SLMError("several machines (--nnodes > 1) need --rdzv-endpoint HOST:PORT of node 0, "
                           "the same on every machine")
        if not 0 <= node_rank < nnodes:
            raise SLMError(f"--node-rank {node_rank} must be between 0 and {nnodes - 1}")
        cmd += [f"--nnodes={nnodes}", f"--node-rank={node_rank}", "--rdzv-backend=c10d",
                f"--rdzv-endpoint={rdzv_endpoint}", "--max-restarts=0"]
    return cmd + ["-m", "slm_core", *entry_args]


def strip_launch_flags(argv: list[str]) -> list[str]:
    """argv without --nproc/--nnodes/--node-rank/--rdzv-endpoint (and their values): what each rank gets."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in LAUNCH_FLAGS:
            skip = "=" not in arg
            continue
        out.append(arg)
    return out


def launch(entry_args: list[str], run_dir: Path, nproc: int, nnodes: int = 1, node_rank: int = 0,
           rdzv_endpoint: Optional[str] = None, env: Optional[dict] = None) -> int:
    """Run torchrun in the foreground; on failure, record the first failing rank's error in status.json."""
    cmd = torchrun_command(entry_args, nproc, nnodes, node_rank, rdzv_endpoint)
    env = {**(env or os.environ)}
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(1, nproc))))
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    tail: list[str] = []
    for line in proc.stderr:  # pass torchrun's and the ranks' stderr through, keep the end to explain a failure
        sys.stderr.write(line)
        tail = (tail + [line])[-200:]
    code = proc.wait()
    if code != 0:
        message = failure_message(run_dir, "".join(tail), code)
        runs.write_status(run_dir, state="failed", pid=None, error=message)
        print(f"error: {message}", file=sys.stderr)
    return code


def failure_message(run_dir: Path, torchrun_output: str, code: int) -> str:
    """'rank R failed: <its error>' for the rank torchrun saw fail first (its root cause): the rank's own
    message where it left one (rank<N>.error, or status.json for rank 0), else how it died."""
    cause = torchrun_output.split("Root Cause", 1)[-1]
    rank = re.search(r"rank\s*:\s*(\d+)", cause)
    exitcode = re.search(r"exitcode\s*:\s*(-?\d+)", cause)
    trace = re.search(r"traceback\s*:\s*(.+)", cause)
    errors = {int(f.stem.removeprefix("rank")): f for f in Path(run_dir).glob("rank*.error")}
    if rank is None and errors:
        rank_id = min(errors)
    elif rank is None:
        return f"the distributed run failed (torchrun exit code {code}); see the output above"
    else:
        rank_id = int(rank.group(1))
    if rank_id in errors:
        return f"rank {rank_id} failed: {errors[rank_id].read_text().strip().splitlines()[-1]}"
    status = runs.read_status(run_dir) if (Path(run_dir) / "status.json").exists() else {}
    if rank_id == 0 and status.get("state") == "failed" and status.get("error"):
        return f"rank 0 failed: {status['error']}"
    detail = trace.group(1).strip() if trace and "elastic/errors" not in trace.group(1) else \
        f"exit code {exitcode.group(1) if exitcode else '?'}"
    return f"rank {rank_id} died ({detail}); the other ranks were stopped. Resume with `slm resume`"


def write_rank_error(run_dir: Path, rank: int, message: str) -> None:
    """A non-zero rank's error, for the launcher to show (only rank 0 writes status.json)."""
    runs.atomic_write_text(Path(run_dir) / f"rank{rank}.error", message + "\n")
