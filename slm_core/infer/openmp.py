"""Where torch's CPU work runs, so that decoding keeps both its threads' speed.

torch's CPU kernels run on OpenMP (libgomp), which gives every thread that runs a parallel op a team of
worker threads of its own, alive until that thread ends. Once the teams' threads outnumber the cores,
libgomp stops spin-waiting between parallel regions ("throttled" spin): every op then wakes its workers
from sleep. Measured on 2 cores, a 100M model decoding on 2 threads: 99 tokens/s alone, 57 while a
second, idle thread kept the team it made when it last ran torch; 99 again once that thread ended.

So the Studio loads chat models in a short-lived thread (`in_fresh_thread`), the decode loop thread ends
when idle (slm_core.infer.engine), and `slm serve` decodes on the thread that loaded the model.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

import torch

# Threads for one decode loop: torch's count when this module was first imported (every core, unless the
# process lowered it first). Read once: torch.set_num_threads in one thread also becomes every new thread's default.
CORES = torch.get_num_threads()


def in_fresh_thread(fn: Callable[..., Any], *args, **kwargs) -> Any:
    """fn(*args, **kwargs) on a new thread, waited for: the OpenMP team its torch work makes ends with it,
    instead of staying with a long-lived caller (a web server's worker thread). Its exception is raised here."""
    result: dict = {}

    def run() -> None:
        try:
            result["value"] = fn(*args, **kwargs)
        except BaseException as error:  # re-raised in the caller's thread
            result["error"] = error

    thread = threading.Thread(target=run, name="slm-load", daemon=True)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["value"]
