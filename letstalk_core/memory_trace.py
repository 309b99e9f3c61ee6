"""Peak memory of real model code, known before it runs: the code is run on the **meta device** (tensors
with shapes and dtypes, no data, no arithmetic) while every tensor storage it creates is counted until
it is freed. The result is the bytes a device would hold at each moment — the same operators, the same
shapes, the same frees — in a fraction of a second for a full-width network at 512².

Two things differ from a device run and are handled here:

* ``scaled_dot_product_attention`` has no fused kernel on the meta device (it falls back to the math
  path, which materialises the ``N × M`` score matrix). Every device we plan for runs a fused kernel
  (flash / memory-efficient on CUDA, the flash kernel on the CPU), whose extra memory is the output plus
  a row statistic; :class:`FusedAttention` gives the call that footprint.
* what a device adds outside tensors (the CUDA context, the caching allocator's rounding, a CPU
  process's own memory) is not a tensor; the plans add it as named terms.

Used by the memory plans of the model families (``families/memo/memory_plan.py``) and checked against measured
peaks (``tests/core/test_memory_plan.py``, README "Memory").
"""
from __future__ import annotations

import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class FusedAttention(TorchFunctionMode):
    """``F.scaled_dot_product_attention`` as a fused kernel allocates it: the output and a float32
    log-sum-exp per query row (no score matrix)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            q, _, v = args[:3]
            lse = torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)
            out = torch.empty(*q.shape[:-1], v.shape[-1], dtype=q.dtype, device=q.device)
            del lse  # a temporary of the kernel: counted while it lives
            return out
        return func(*args, **kwargs)


@dataclass
class LiveBytes(TorchDispatchMode):
    """Counts the bytes of every storage created under it, until each is freed; ``peak`` is the most
    held at once. :meth:`stage` records the peak within a named stage."""

    live: int = 0
    peak: int = 0
    stages: dict[str, int] = field(default_factory=dict)
    started: dict[str, int] = field(default_factory=dict)  # live bytes when each stage began
    _sizes: dict[int, int] = field(default_factory=dict)
    _ignored: set = field(default_factory=set)
    _stage_peak: int | None = None

    def __post_init__(self):
        super().__init__()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._track(t)
        return out

    def _track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key = id(storage)
        if key in self._sizes or key in self._ignored:
            return
        n = storage.nbytes()
        self._sizes[key] = n
        self.live += n
        self.peak = max(self.peak, self.live)
        if self._stage_peak is not None:
            self._stage_peak = max(self._stage_peak, self.live)
        weakref.finalize(storage, self._free, key)

    def adopt(self, *tensors: torch.Tensor) -> None:
        """Count tensors made outside the trace (inputs) from now on, until they are freed."""
        for t in tensors:
            self._track(t)

    def ignore(self, *modules: torch.nn.Module) -> None:
        """Not count the modules' weights (planned as their own term), nor views of them (``weight.t()``)."""
        for m in modules:
            for t in [*m.parameters(), *m.buffers()]:
                self._ignored.add(id(t.untyped_storage()))
                self._keep = getattr(self, "_keep", []) + [t.untyped_storage()]  # ids stay valid while kept

    def _free(self, key: int) -> None:
        self.live -= self._sizes.pop(key, 0)

    @contextmanager
    def stage(self, name: str):
        """Record the peak of live bytes while the block runs, under ``name`` (the largest if repeated)."""
        import gc

        gc.collect()
        self._stage_peak = self.live
        self.started[name] = self.live
        try:
            yield
        finally:
            gc.collect()
            self.stages[name] = max(self.stages.get(name, 0), self._stage_peak)
            self._stage_peak = None


@contextmanager
def meta_trace():
    """``with meta_trace() as live:`` run model code on meta tensors; ``live.stages`` / ``live.peak``.

    The stages' garbage collections (tensors freed in reference cycles must be counted as freed) look only
    at what the trace creates: everything alive before it is frozen out of the collector (``gc.freeze``), so a
    plan costs the same in a host holding millions of objects (ComfyUI) as in a bare process."""
    import gc

    freeze = gc.get_freeze_count() == 0  # never undo a host's own freeze
    if freeze:
        gc.freeze()
    tracker = LiveBytes()
    try:
        with torch.no_grad(), FusedAttention(), tracker:
            yield tracker
    finally:
        if freeze:
            gc.unfreeze()


def meta_module(build, dtype: torch.dtype) -> torch.nn.Module:
    """A module built on the meta device in ``dtype`` (its weights take no memory)."""
    with torch.device("meta"):
        return build().to(dtype).eval()


def parameter_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])
