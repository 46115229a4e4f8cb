"""The accelerator profile's device: what it is, and a file name for it."""

from __future__ import annotations

import subprocess
from typing import Any

import jax
from common import cpu_model, slugify, versions


def _nvidia_smi() -> str | None:
  query = ["--query-gpu=name,memory.total,driver_version", "--format=csv"]
  try:
    done = subprocess.run(
      ["nvidia-smi", *query], capture_output=True, text=True, check=True, timeout=30
    )
  except (OSError, subprocess.SubprocessError):
    return None
  return done.stdout.strip()


def memory_stat(key: str) -> int | None:
  """One of ``jax.devices()[0].memory_stats()``, e.g. ``peak_bytes_in_use``."""
  stats = jax.devices()[0].memory_stats()  # None where the backend has none
  return stats.get(key) if stats else None


def describe_device() -> dict[str, Any]:
  """``jax.devices()[0]``, the host, the versions, and a file-name slug."""
  dev = jax.devices()[0]
  info: dict[str, Any] = {
    "platform": dev.platform,
    "device_kind": dev.device_kind,
    "device_count": jax.device_count(),
    "memory_bytes": memory_stat("bytes_limit"),
    "nvidia_smi": _nvidia_smi() if dev.platform == "gpu" else None,
    "host_cpu": cpu_model(),
    **versions(),
  }
  if dev.platform == "cpu":
    info["slug"] = "cpu-" + slugify(info["host_cpu"])
  else:
    info["slug"] = slugify(dev.device_kind)
  return info
