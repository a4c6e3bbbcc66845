"""A check that code makes no host synchronisation, runnable on CPU tensors."""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode

# tensor methods and functions that make the host wait for a CUDA device
HOST_SYNCS = {"item", "tolist", "numpy", "cpu", "nonzero", "argwhere", "masked_select", "unique"}
HOST_SYNCS |= {"__bool__", "__int__", "__float__", "__index__"}


class ForbidHostSync(TorchFunctionMode):
    """Fail on any tensor operation that would synchronise with the host on CUDA (a boolean
    mask index, a copy to another device, or one of HOST_SYNCS), whatever the device."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        index = args[1] if name in ("__getitem__", "__setitem__") else ()
        index = index if isinstance(index, tuple) else (index,)
        bool_index = any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in index)
        to_device = name in ("to", "copy_") and (
            any(isinstance(a, (str, torch.device)) for a in args[1:]) or "device" in kwargs
        )
        assert name not in HOST_SYNCS and not bool_index and not to_device, name
        return func(*args, **kwargs)
