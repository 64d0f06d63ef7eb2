"""Machine probes: memory, disk, GPUs, CPU features and processes, and how a failure reads (disk full,
out of memory). Nothing here imports torch at module level."""

from __future__ import annotations

import errno
import os
import resource
import time
from pathlib import Path
from typing import Any, Optional

import psutil

from slm_core.errors import SLMError

MB = 1024 * 1024


_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


# How full disks surface through libraries that wrap the OS error: torch.save's zip writer
# ("[enforce fail at inline_container.cc] unexpected pos"), safetensors' Rust I/O error, plain text.
_DISK_TEXT = ("unexpected pos", "inline_container", "No space left on device", "File too large",
              "Disk quota exceeded", "os error 28", "os error 27", "os error 122")


_OOM_TEXT = ("DefaultCPUAllocator: can't allocate memory", "CUDA out of memory", "out of memory",
             "Cannot allocate memory", "not enough memory")


class DiskFullError(SLMError):
    """A checkpoint or log could not be written for lack of space (the message names how much)."""


def is_disk_full(error: BaseException) -> bool:
    if isinstance(error, DiskFullError):
        return True
    if isinstance(error, OSError) and error.errno in _DISK_ERRNOS:
        return True
    return any(t in str(error) for t in _DISK_TEXT) and not is_out_of_memory(error)


def is_out_of_memory(error: BaseException) -> bool:
    import torch

    if isinstance(error, (MemoryError, torch.OutOfMemoryError)):
        return True
    return isinstance(error, RuntimeError) and any(t in str(error) for t in _OOM_TEXT)


def available_memory_mb(device: str) -> Optional[float]:
    """Free memory on `device` in MB (None if unknown). On CPU the least of the host's available
    RAM, a container's (cgroup) limit and this process's address-space limit (RLIMIT_AS)."""
    if device.startswith("cuda"):
        gpus = gpu_info()
        index = int(device.split(":")[1]) if ":" in device else 0
        return gpus[index]["free_mb"] if len(gpus) > index else None
    candidates = [system_memory()["available_mb"]]
    limit, used = _cgroup_memory()
    if limit is not None:
        candidates.append((limit - used) / MB)
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        candidates.append((soft - _vm_size()) / MB)
    return max(0.0, min(candidates))


def _cgroup_memory() -> tuple[Optional[int], int]:
    """(limit, usage) in bytes of this process's cgroup (v2, else v1); (None, 0) when unlimited."""
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            raw = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if raw == "max" or int(raw) >= 1 << 60:  # v1 says "unlimited" with a huge number
            return None, 0
        return int(raw), usage
    return None, 0


def _vm_size() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _nvml() -> Any:
    """The initialised pynvml module, or None where there is no NVIDIA driver (tried once per process)."""
    global _NVML_OK
    try:
        import pynvml
    except ImportError:
        _NVML_OK = False
        return None
    if _NVML_OK is None:
        try:
            pynvml.nvmlInit()
            _NVML_OK = True
        except pynvml.NVMLError:  # NVMLError_LibraryNotFound on machines without a GPU driver
            _NVML_OK = False
    return pynvml if _NVML_OK else None


def this_process() -> psutil.Process:
    # One Process object for the life of the process: cpu_percent(interval=None) reports the
    # usage since the previous call on the same object, so a fresh object would always say 0.
    global _PROCESS
    if _PROCESS is None or _PROCESS.pid != os.getpid():  # a forked worker gets its own
        _PROCESS = psutil.Process()
        _PROCESS.cpu_percent(interval=None)
    return _PROCESS


def system_memory() -> dict:
    """Host RAM and CPUs: {"total_mb", "available_mb", "used_percent", "cpu_count"}."""
    mem = psutil.virtual_memory()
    return {"total_mb": mem.total / MB, "available_mb": mem.available / MB,
            "used_percent": float(mem.percent), "cpu_count": psutil.cpu_count(logical=True) or 1}


def gpu_info() -> list[dict]:
    """One dict per NVIDIA GPU: {"index", "name", "total_mb", "used_mb", "free_mb"}; [] without a GPU."""
    nvml = _nvml()
    if nvml is None:
        return []
    devices = []
    try:
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            name = nvml.nvmlDeviceGetName(handle)
            mem = nvml.nvmlDeviceGetMemoryInfo(handle)
            devices.append({"index": index, "name": name.decode() if isinstance(name, bytes) else str(name),
                            "total_mb": mem.total / MB, "used_mb": mem.used / MB, "free_mb": mem.free / MB})
    except nvml.NVMLError:  # a GPU that vanished or a driver hiccup: report what we have
        pass
    return devices


_LAST_CPU_SAMPLE: Optional[tuple] = None  # (monotonic s, machine busy CPU-s, this process's CPU-s, cores then)


def cores_used_by_others(window_s: float = 0.1) -> float:
    """Cores' worth of CPU other processes used lately: since the previous call (a server or chat between
    requests), or over `window_s` now on the first call; a call within 0.2 s of the last repeats its answer. This
    process's own use is left out, so a server busy decoding does not count itself as load."""
    global _LAST_CPU_SAMPLE

    def sample(cores: float = 0.0) -> tuple:
        times, own = psutil.cpu_times(), this_process().cpu_times()
        busy = times.user + times.nice + times.system + getattr(times, "steal", 0.0)
        return time.monotonic(), busy, own.user + own.system + own.children_user + own.children_system, cores

    previous = _LAST_CPU_SAMPLE
    if previous is not None and time.monotonic() - previous[0] < 0.2:
        return previous[3]
    if previous is None:
        previous = sample()
        time.sleep(window_s)
    now = sample()
    elapsed = now[0] - previous[0]
    cores = max(0.0, ((now[1] - previous[1]) - (now[2] - previous[2])) / elapsed) if elapsed > 0 else 0.0
    _LAST_CPU_SAMPLE = (*now[:3], cores)
    return cores


def cpu_has_native_bf16() -> bool:
    """AVX-512 BF16 or AMX: where bf16 matrix multiplies beat fp32 on the CPU (elsewhere they are slower)."""
    try:
        with open("/proc/cpuinfo") as handle:
            flags = handle.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pid_alive(pid: int) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, OSError):
        return True
    # A zombie (exited, not yet reaped by its parent) counts as dead.
    try:
        with open(f"/proc/{int(pid)}/stat") as handle:
            return handle.read().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return True


_NVML_OK: Optional[bool] = None  # None: not tried yet; the answer never changes within a process


_PROCESS: Optional[psutil.Process] = None


# ---- sizes and counts in words --------------------------------------------------------------------

def format_bytes(n: Optional[float]) -> str:
    if n is None:
        return "-"
    for unit, scale in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"


def format_mb(mb: Optional[float]) -> str:
    if mb is None:
        return "-"
    return f"{mb / 1024:.1f} GB" if mb >= 1024 else f"{mb:.0f} MB"


def format_count(n: Optional[float]) -> str:
    """1.2K, 3.4M, 1.0B: parameter and token counts."""
    if n is None:
        return "-"
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f}{unit}"
    return f"{int(n)}"
