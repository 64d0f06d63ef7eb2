"""Where torch's CPU work runs, so that decoding keeps its threads' speed: `in_fresh_thread` runs torch
work on a short-lived thread, whose OpenMP team ends with it; `CORES` is a decode loop's thread count."""

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
