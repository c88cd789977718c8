"""Resident memory of this process, as Linux reports it in /proc/self/status (no third-party import).

    VmHWM: the peak resident set size so far (high-water mark), in kB
    VmRSS: the resident set size now, in kB
"""
from __future__ import annotations


def status_bytes(key: str) -> int:
    """The `key:` line of /proc/self/status (kB) in bytes; RuntimeError where the kernel has no such line."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key} in /proc/self/status")


def peak_rss_bytes() -> int:
    """VmHWM of this process: the peak resident set so far."""
    return status_bytes("VmHWM")


def rss_bytes() -> int:
    """VmRSS of this process: the resident set now."""
    return status_bytes("VmRSS")
