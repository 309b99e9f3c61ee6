"""LetsTalk's guided denoiser: every branch of the multimodal guidance (:mod:`letstalk_core.diffusion.guidance`)
evaluated in one batched forward of the transformer, plus the memory branch (``scales.memory``: the
prediction with the memory against the one with the memory of clip 0)."""
from __future__ import annotations

from typing import Callable

import torch

from ...diffusion.guidance import GuidanceScales, combine_guidance, guidance_branches
from ...memory.bank import initial_memory


def guided_model_fn(model, *, portrait: torch.Tensor, audio_tokens: torch.Tensor, memory: torch.Tensor | None,
                    scales: GuidanceScales, eps_channels: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Build ``model_fn(x_t, t) -> output`` for the samplers, evaluating every guidance branch in one batch.

    The portrait context (including a Siamese branch) depends on neither x_t nor t, so it is prepared
    once here and reused at every step. The sampler's state stays in its own dtype (fp32); the model
    runs in its parameters' dtype (e.g. bf16) and its output is returned as fp32."""
    branches = guidance_branches(scales)
    no_history = None
    if scales.memory != 1.0 and memory is not None and memory.shape[2] > 0:
        no_history = initial_memory(portrait, memory.shape[2])  # the memory of clip 0
        if torch.equal(no_history, memory):
            no_history = None  # clip 0: both branches are the same
    if no_history is not None:
        branches = branches + [(True, True)]  # the fully conditioned branch again, with no history
    n, b = len(branches), portrait.shape[0]
    dev = portrait.device
    portrait_keep = torch.tensor([p for p, _ in branches], device=dev).repeat_interleave(b)
    audio_keep = torch.tensor([a for _, a in branches], device=dev).repeat_interleave(b)
    dtype = next(model.parameters()).dtype
    ctx = model.prepare_portrait(portrait.to(dtype).repeat(n, 1, 1, 1), portrait_keep)
    audio = audio_tokens.to(dtype).repeat(n, 1, 1, 1) * audio_keep.view(-1, 1, 1, 1).to(dtype)
    if memory is None:
        mem = None
    elif no_history is None:
        mem = memory.to(dtype).repeat(n, 1, 1, 1, 1)
    else:
        mem = torch.cat([memory.to(dtype).repeat(n - 1, 1, 1, 1, 1), no_history.to(dtype)])

    def model_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = model(x.to(dtype).repeat(n, 1, 1, 1, 1), t.repeat(n), portrait=ctx, audio_tokens=audio, memory=mem).float()
        chunks = out.chunk(n, dim=0)
        if no_history is None:
            eps = combine_guidance([c[:, :eps_channels] for c in chunks], scales)
            return torch.cat([eps, chunks[-1][:, eps_channels:]], dim=1)
        eps = combine_guidance([c[:, :eps_channels] for c in chunks[:-1]], scales)
        eps = eps + (scales.memory - 1.0) * (chunks[-2][:, :eps_channels] - chunks[-1][:, :eps_channels])
        return torch.cat([eps, chunks[-2][:, eps_channels:]], dim=1)

    return model_fn
