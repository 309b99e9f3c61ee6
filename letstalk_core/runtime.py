"""CPU threads for the command line: how many, and how they wait.

Torch's CPU kernels run on an OpenMP pool with one thread per core. By default an idle OpenMP thread
*spins* for a while before it sleeps, so two torch processes on the same cores (two runs, a run and a
training job, ComfyUI and the CLI) burn each other's time slices spinning: measured on 2 cores, a run
took 13-50x longer next to another torch process. With the *passive* wait policy an idle thread sleeps
at once, and both processes share the cores at about the cost of halving them. The policy is read when
the OpenMP runtime starts, i.e. when torch is imported, so :func:`prepare_threads` must run first; the
CLI calls it before any command imports torch. A user's own ``OMP_WAIT_POLICY`` or ``OMP_NUM_THREADS``
is respected.

Passive waiting alone is not enough when the other process spins: a pool of one thread per core must
wait at every barrier for its slowest thread, and a thread that lost its core to the other process
holds up the whole operation for a time slice. :class:`CoreShare` therefore sizes the pool, between
clips, to the cores the *other* processes left free over the last clip (from ``/proc/stat`` minus this
process's own CPU time; Linux only, elsewhere the pool stays as it is).

The number of threads is part of the numerics: a reduction split over 1 or 2 threads sums in another
order (measured on MEMO's tiny test model: 1.1e-5 apart in fp32). So the pool is fixed for a run unless
``--share-cores`` asks for :class:`CoreShare` (then a run next to another job is faster, and its last bits
depend on that job), and a resumed run uses the thread count its saved state records
(:func:`run_threads`), so that it equals the uninterrupted run bit for bit.
"""
from __future__ import annotations

import os

THREADS_HELP = ("CPU threads for torch (0 = one per core). Idle threads sleep instead of spinning, so a run "
                "sharing the cores with another torch process slows down gracefully; give a smaller number to "
                "leave cores free")


SHARE_HELP = ("resize the thread pool between clips to the cores other processes leave free (faster next to "
              "another job; the frames then depend on that job in their last bits, so two runs or a resumed run "
              "may differ slightly). Off: the pool is fixed for the run and the result is exact")


def add_threads_option(parser) -> None:
    parser.add_argument("--threads", type=int, default=0, help=THREADS_HELP)
    parser.add_argument("--share-cores", action="store_true", help=SHARE_HELP)


class run_threads:
    """For one run: torch's pool at ``threads`` (None: as it is), restored afterwards. A resumed run passes
    the count its saved state records, so its sums split as the interrupted run's did."""

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads

    def __enter__(self) -> int:
        import torch

        self._before = torch.get_num_threads()
        if self.threads and self.threads != self._before:
            torch.set_num_threads(int(self.threads))
        return torch.get_num_threads()

    def __exit__(self, *exc) -> None:
        import torch

        if torch.get_num_threads() != self._before:
            torch.set_num_threads(self._before)


def prepare_threads(threads: int = 0) -> None:
    """Set the OpenMP environment before torch is imported: passive waiting (unless the user chose a
    policy) and, for ``threads > 0``, that many threads."""
    if threads is None or threads < 0:
        raise ValueError(f"--threads must be 0 (one per core) or a positive number, got {threads}.")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if threads > 0:
        os.environ["OMP_NUM_THREADS"] = str(threads)


def _busy_jiffies() -> tuple[int, int] | None:
    """(busy, total) CPU jiffies of the whole machine, or None where /proc/stat is unavailable."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def _own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


class CoreShare:
    """Between clips, give torch as many threads as cores the other processes leave free.

    ``update()`` looks at the machine since the previous call: the cores busy with other processes
    (all busy time minus this process's own CPU time) and sets ``torch.set_num_threads`` to the rest,
    at least 1 and at most ``max_threads``. A no-op where ``/proc/stat`` does not exist."""

    def __init__(self, max_threads: int | None = None) -> None:
        import torch

        self.cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        self.max_threads = max_threads or torch.get_num_threads()
        self.threads = self.max_threads
        self._last = (_busy_jiffies(), _own_cpu_seconds())

    def update(self) -> int:
        import torch

        now = (_busy_jiffies(), _own_cpu_seconds())
        (prev, own0), (cur, own1) = self._last, now
        self._last = now
        if prev is None or cur is None or cur[1] <= prev[1]:
            return self.threads
        machine_cores = os.cpu_count() or self.cores
        elapsed = (cur[1] - prev[1]) / machine_cores / os.sysconf("SC_CLK_TCK")  # wall seconds
        if elapsed < 0.05:
            return self.threads
        busy_cores = (cur[0] - prev[0]) / os.sysconf("SC_CLK_TCK") / elapsed
        others = max(0.0, busy_cores - (own1 - own0) / elapsed)
        want = max(1, min(self.max_threads, round(self.cores - others)))
        if want != self.threads:
            torch.set_num_threads(want)
            self.threads = want
        return self.threads


def apply_threads(threads: int = 0) -> None:
    """Size torch's pool (where torch was already imported, the environment came too late for it)."""
    if threads and threads > 0:
        import torch

        torch.set_num_threads(threads)


# -- torch.compile ------------------------------------------------------------------------------------
COMPILE_HELP = ("compile the denoiser (DiT / Diffusion Net) with torch.compile: the first clip takes longer "
                "(minutes on a CPU), later ones may run faster; without a working compiler it warns and runs "
                "as usual")


def add_compile_option(parser) -> None:
    parser.add_argument("--compile", action="store_true", help=COMPILE_HELP)


def _from_compiler(error: BaseException) -> bool:
    """Whether ``error`` was raised by torch.compile itself (Dynamo, Inductor, the C++/Triton toolchain)
    rather than by the model's own checks, which must reach the user unchanged."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if type(error).__module__.startswith(("torch._dynamo", "torch._inductor", "torch.fx", "triton")):
            return True
        error = error.__cause__ or error.__context__
    return False


def compile_forward(module, *, warn=None) -> None:
    """Compile ``module.forward`` with ``torch.compile`` in place (an instance attribute: parameter names,
    ``state_dict`` and the class are unchanged). The first call compiles. If compiling fails (no C++
    compiler, an operation the compiler cannot take), ``warn`` gets one message and the module runs as
    usual from then on; errors of the model's own (bad inputs) pass through untouched.
    :func:`uncompile` undoes it."""
    import warnings

    import torch

    eager = type(module).forward.__get__(module)
    compiled = torch.compile(eager, dynamic=False)

    def forward(*args, **kwargs):
        try:
            return compiled(*args, **kwargs)
        except Exception as e:
            if not _from_compiler(e):
                raise
            message = (f"torch.compile could not compile {type(module).__name__} ({type(e).__name__}: "
                       f"{str(e).strip().splitlines()[0][:200] if str(e).strip() else 'no message'}); running it "
                       "without compiling.")
            (warn or (lambda m: warnings.warn(m, RuntimeWarning, stacklevel=2)))(message)
            uncompile(module)
            return eager(*args, **kwargs)

    forward.compiled = True
    module.forward = forward


def uncompile(module) -> None:
    """Undo :func:`compile_forward` (a no-op on a module that is not compiled)."""
    if is_compiled(module):
        del module.forward


def is_compiled(module) -> bool:
    return bool(getattr(module.__dict__.get("forward"), "compiled", False))


def release_freed_memory() -> None:
    """Give the memory a finished run freed back to the operating system.

    A run frees its tensors, but glibc keeps freed heap pages in its arenas (one per thread that allocated:
    the sampler, the resume writer, the encoder), so a server that runs prompt after prompt grows as the
    arenas fragment. After a cycle collection ``malloc_trim(0)`` returns the free pages of every arena.
    Where there is no glibc (macOS, Windows, musl) only the collection runs.
    """
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    trim(0)
