"""MEMO's sampling recipe (code ``memo/pipelines/video_pipeline.py``, ``inference.py``,
``configs/inference.yaml``; reference/letstalk_memo.md §2.6): rectified flow, 20 Euler steps on
diffusers' ``FlowMatchEulerDiscreteScheduler`` grid (shift 1), classifier-free guidance with one scale
(3.5) whose unconditional branch drops every condition at once — zero face embedding (through
ImageProj), zero audio tokens (after the audio projector), the null emotion class, and no
reference-attention tokens — evaluated together with the conditional branch in **one** batched
forward (batch ``[uncond, cond]``, as the reference orders it).

The sampler is the common one (:func:`letstalk_core.diffusion.samplers.sample_euler`); this module
gives it MEMO's schedule and a guided velocity function.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ...diffusion.schedule import DiffusionConfig, Schedule, make_schedule
from ...memory.linear_state import LinearAttentionMemory
from .audio_module import NULL_EMOTION
from .diffusion_net import DiffusionNet

MEMO_STEPS = 20
MEMO_CFG = 3.5


def memo_schedule() -> Schedule:
    """Rectified flow with 1000 training steps, shift 1, diffusers' Euler grid."""
    return make_schedule(DiffusionConfig(objective="flow", learn_sigma=False, flow_shift=1.0, flow_grid="diffusers"))


@dataclass
class GuidedConditions:
    """The two guidance branches of one clip, stacked ``[uncond, cond]`` on the batch axis."""

    reference_tokens: dict[str, torch.Tensor]  # {layer: [2, L, C]}
    face_tokens: torch.Tensor  # [2, n, c]
    audio_tokens: torch.Tensor  # [2, F, m, a]
    emotion: torch.Tensor  # [2] long
    uncond: torch.Tensor  # [2] bool: [True, False]


def guided_conditions(*, reference_tokens: dict[str, torch.Tensor], face_tokens: torch.Tensor,
                      uncond_face_tokens: torch.Tensor, audio_tokens: torch.Tensor, emotion: int) -> GuidedConditions:
    """Stack a clip's conditions with MEMO's unconditional branch.

    ``reference_tokens`` already hold both branches (the Reference Net runs on both, see
    :func:`letstalk_core.families.memo.diffusion_net.split_reference_features`); ``face_tokens`` and
    ``uncond_face_tokens`` are ImageProj of the face embedding and of zeros (``[1, n, c]``);
    ``audio_tokens`` the projected audio of the clip (``[1, F, m, a]``); ``emotion`` the clip's class.
    """
    if not 0 <= int(emotion) < NULL_EMOTION:
        raise ValueError(f"emotion must be a class index 0..{NULL_EMOTION - 1}; got {emotion!r}.")
    dev = face_tokens.device
    return GuidedConditions(
        reference_tokens=reference_tokens,
        face_tokens=torch.cat([uncond_face_tokens, face_tokens]),
        audio_tokens=torch.cat([torch.zeros_like(audio_tokens), audio_tokens]),
        emotion=torch.tensor([NULL_EMOTION, int(emotion)], device=dev),
        uncond=torch.tensor([True, False]),  # a host-side mask (the network reads it without a device sync)
    )


def guided_velocity(net: DiffusionNet, conditions: GuidedConditions, memory: LinearAttentionMemory,
                    scale: float = MEMO_CFG, *, sequential: bool = False):
    """``model_fn(x [1, C, F, h, w], t [1]) -> v_u + scale·(v_c − v_u)``: one forward of batch 2, or with
    ``sequential`` the two rows one after the other (half the activations; each row reads its own rows of
    the conditions and of the memory state, :meth:`LinearAttentionMemory.rows`)."""
    def batched(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        pred = net(torch.cat([x, x]), t.reshape(-1)[:1].expand(2), reference_tokens=conditions.reference_tokens,
                   face_tokens=conditions.face_tokens, audio_tokens=conditions.audio_tokens,
                   emotion=conditions.emotion, memory=memory, uncond=conditions.uncond)
        return pred.float().chunk(2)

    def one_row(x: torch.Tensor, t: torch.Tensor, r: int) -> torch.Tensor:
        # In the batch of 2, frame j of row r is stacked row r·F + j and sees reference row (r·F + j) mod 2
        # (the reference's repeat pairing): alone, it must see the same, so the rows are rolled by r·F.
        c, shift = conditions, -(r * x.shape[2])
        reference = {k: torch.roll(v, shifts=shift, dims=0) if shift % v.shape[0] else v
                     for k, v in c.reference_tokens.items()}
        return net(x, t.reshape(-1)[:1], reference_tokens=reference,
                   face_tokens=c.face_tokens[r:r + 1], audio_tokens=c.audio_tokens[r:r + 1],
                   emotion=c.emotion[r:r + 1], memory=memory.rows(r, 2), uncond=c.uncond[r:r + 1]).float()

    def model_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != 1:
            raise ValueError(f"MEMO samples one clip at a time; got a batch of {x.shape[0]}.")
        u, c = (one_row(x, t, 0), one_row(x, t, 1)) if sequential else batched(x, t)
        return (u + scale * (c - u)).to(x.dtype)

    return model_fn
