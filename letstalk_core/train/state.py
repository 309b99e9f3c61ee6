"""Training checkpoints read without running code (DESIGN.md, "Contracts": no pickle is ever executed).

A run folder is something people share, and unpickling a crafted ``.pt`` file executes whatever its pickle
holds; :func:`load_training_state` reads tensors, numbers, strings and
containers of them only (``weights_only=True``), which is all a letstalk training checkpoint holds
(weights, EMA, optimizer state, step, the configs as JSON), and refuses anything else by name.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import torch


def load_training_state(path) -> dict:
    """The checkpoint at ``path`` as a dict; a file that is not a plain training state is refused."""
    p = Path(path)
    try:
        state = torch.load(str(p), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError) as e:
        raise ValueError(f"'{p}' is not a training checkpoint this program wrote: it holds Python objects that "
                         "would run code when loaded, so it is refused and nothing in it was run. Delete it "
                         "(or the whole run folder, if it came from someone else) to start afresh. "
                         f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    except (EOFError, OSError) as e:
        raise ValueError(f"'{p}' cannot be read as a training checkpoint ({e}); it is incomplete. Delete it to "
                         "resume from the one before, or start afresh.") from None
    if not isinstance(state, dict) or "step" not in state or "model" not in state:
        raise ValueError(f"'{p}' is not a training checkpoint (no 'step' and 'model'); delete it or use another "
                         "run folder.")
    return state
