"""Input checks shared by the public ops: clear ValueError/TypeError naming the argument, never a kernel crash."""

from __future__ import annotations

from typing import Iterable

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INDEX_DTYPES = (torch.int64, torch.int32)


def _names(dtypes: Iterable[torch.dtype]) -> str:
    return "/".join(str(d).replace("torch.", "") for d in dtypes)


def check_tensor(op: str, name: str, value, *, dtypes=None, ndim=None) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{op}: `{name}` must be a torch.Tensor; got {type(value).__name__}")
    if dtypes is not None and value.dtype not in dtypes:
        raise TypeError(f"{op}: `{name}` must have dtype {_names(dtypes)}; got {value.dtype}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if value.dim() not in allowed:
            want = " or ".join(f"{d}-D" for d in allowed)
            raise ValueError(f"{op}: `{name}` must be {want}; got shape {tuple(value.shape)}")
    return value


def check_same_device(op: str, **tensors: torch.Tensor | None) -> torch.device:
    present = {k: v for k, v in tensors.items() if v is not None}
    devices = {k: v.device for k, v in present.items()}
    first_name, first = next(iter(devices.items()))
    for name, dev in devices.items():
        if dev != first:
            raise ValueError(f"{op}: all tensors must be on one device; `{first_name}` is on {first} but `{name}` is on {dev}")
    return first


def check_float(op: str, name: str, value, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{op}: `{name}` must be a float; got {type(value).__name__}")
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{op}: `{name}` must be finite; got {value}")
    if positive and value <= 0:
        raise ValueError(f"{op}: `{name}` must be > 0; got {value}")
    return value


def check_targets(op: str, targets: torch.Tensor, vocab: int, ignore_index: int) -> None:
    """Every target id must lie in [0, vocab) unless it equals ignore_index.  (One device->host sync on GPU.)"""
    if targets.numel() == 0:
        return
    bad = ((targets < 0) | (targets >= vocab)) & (targets != ignore_index)
    if bool(bad.any()):
        first = targets[bad].flatten()[0].item()
        raise ValueError(f"{op}: `targets` must lie in [0, {vocab}) (the vocabulary size of `weight`) or equal "
                         f"ignore_index={ignore_index}; found {first} at {int(bad.sum())} position(s)")
