"""CPU threads for the command line: how many, and how they wait.

Torch's CPU kernels run on an OpenMP pool with one thread per core. By default an idle OpenMP thread
*spins* for a while before it sleeps, so two torch processes on the same cores (two runs, a run and a
training job, ComfyUI and the CLI) burn each other's time slices spinning: measured on 2 cores, a run
took 13-50x longer next to another torch process. With the *passive* wait policy an idle thread sleeps
at once, and both processes share the cores at about the cost of halving them. The policy is read when
the OpenMP runtime starts, i.e. when torch is imported, so :func:`prepare_threads` must run first; the
CLI calls it before any command imports torch. A user's own ``OMP_WAIT_POLICY`` or ``OMP_NUM_THREADS``
is respected.
"""
from __future__ import annotations

import os

THREADS_HELP = ("CPU threads for torch (0 = one per core). Idle threads sleep instead of spinning, so a run "
                "sharing the cores with another torch process slows down gracefully; give a smaller number to "
                "leave cores free")


def add_threads_option(parser) -> None:
    parser.add_argument("--threads", type=int, default=0, help=THREADS_HELP)


def prepare_threads(threads: int = 0) -> None:
    """Set the OpenMP environment before torch is imported: passive waiting (unless the user chose a
    policy) and, for ``threads > 0``, that many threads."""
    if threads is None or threads < 0:
        raise ValueError(f"--threads must be 0 (one per core) or a positive number, got {threads}.")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if threads > 0:
        os.environ["OMP_NUM_THREADS"] = str(threads)


def apply_threads(threads: int = 0) -> None:
    """Size torch's pool (where torch was already imported, the environment came too late for it)."""
    if threads and threads > 0:
        import torch

        torch.set_num_threads(threads)
