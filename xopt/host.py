"""What machine and libraries produced an artefact or a measurement (manifests and records)."""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform

LIBS = ("torch", "transformers", "onnx", "onnxruntime", "openvino", "nncf", "triton", "tensorrt", "torch_tensorrt",
        "torchao", "bitsandbytes")
# the instruction-set extensions CPU recipes depend on (int8 dot products, bf16)
ISA_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16",
             "amx_int8")


def env_threads() -> int | None:
    """XOPT_THREADS, the intra-op thread count of ONNX Runtime sessions (unset or empty: the
    library's default)."""
    from xopt.errors import XoptError

    raw = os.environ.get("XOPT_THREADS", "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise XoptError(f"XOPT_THREADS={raw!r}: expected a positive whole number of threads, "
                        "e.g. XOPT_THREADS=4, or unset it for the library's default")
    return int(raw)


def available_memory() -> int | None:
    """Bytes of memory this process can still take without swapping (MemAvailable of
    /proc/meminfo, else psutil's), None where neither says."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist.replace("_", "-"))
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    """The CPU's flags from /proc/cpuinfo (empty where it is not readable)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")     # int8 dot products that accumulate in int32


def has_int8_dot() -> bool:
    """Whether the CPU has VNNI (or AMX) int8 dot products. Without them ONNX Runtime's uint8 x
    int8 kernels add pairs of products in int16 with saturation (VPMADDUBSW)."""
    return bool(cpu_flags() & set(INT8_DOT_FLAGS))


@functools.lru_cache(maxsize=1)
def host_info() -> dict:
    """CPU, GPU (when torch sees one), and the versions of every library a variant may use."""
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": _cpu_name(),
        "cpu_flags": [f for f in ISA_FLAGS if f in cpu_flags()],
        "cpu_count": os.cpu_count(),
        "libs": {lib: v for lib in LIBS if (v := _version(lib))},
        "gpu": None,
    }
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            info["gpu"] = {"name": p.name, "capability": f"sm_{p.major}{p.minor}",
                           "memory_mb": p.total_memory // 2**20, "cuda": torch.version.cuda,
                           "count": torch.cuda.device_count()}
    except ImportError:
        pass
    return info

