"""Checking a requested torch device before anything is built on it.

``torch.device("cuda")`` parses on a machine without a GPU, and ``meta`` tensors hold no data,
so both fail only later, deep inside a computation. Here they are refused up front, with the
devices this machine does have.
"""

from __future__ import annotations

import torch

from .errors import FeatvisError


def available_devices() -> list[str]:
    """The devices featvis can compute on here: cpu, each CUDA GPU, and mps where present."""
    devices = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    return devices


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch.device if this machine can compute on it, else a one-line FeatvisError."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise FeatvisError(f"unknown device '{device}'; use one of: {', '.join(available_devices())}") from None
    available = available_devices()
    if parsed.type == "cpu":
        return parsed
    if parsed.type == "meta":
        raise FeatvisError(f"device 'meta' holds no data, so nothing can be computed on it; use one of: {', '.join(available)}")
    kind = [name for name in available if name.split(":")[0] == parsed.type]
    if not kind:
        raise FeatvisError(f"device '{device}' is not available on this machine (no {parsed.type} device found); "
                           f"use one of: {', '.join(available)}")
    if parsed.index is not None and f"{parsed.type}:{parsed.index}" not in kind and parsed.type != "mps":
        raise FeatvisError(f"device '{device}' does not exist here ({len(kind)} {parsed.type} device(s)); "
                           f"use one of: {', '.join(available)}")
    return parsed
