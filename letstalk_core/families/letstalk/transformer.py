"""The LetsTalk linear diffusion transformer (letstalk_memo.md §1.5–1.7).

Inputs are DC-AE latents: the noisy clip ``x`` ``[B, C, F, h, w]``, the memory (the last f clean latents
of the previous clip, or the portrait latent repeated) ``[B, C, f, h, w]``, the portrait latent
``[B, C, h, w]`` and the per-frame audio windows ``[B, F, window, layers, channels]``, which the audio
projector (Hallo's AudioProjModel, part of this model so it is trained with it) turns into 32 tokens per
frame. Output: ε and the learned-range variance values, ``[B, 2C, F, h, w]`` (``learn_sigma``).
"""
from __future__ import annotations

import torch
from torch import nn

from ...audio.projector import AudioProjector
from .block import BlockState, LetsTalkBlock
from .config import DiTConfig, LetsTalkConfig
from .embeddings import PatchEmbed, TimestepEmbedder, sincos_1d, sincos_2d
from .fusion import PortraitContext, SiameseBranch
from .modules import NORM_EPS, modulate, zero_init


class FinalLayer(nn.Module):
    """LN → adaLN (shift, scale) → Linear to p²·C_out, all zero-initialised (DiT ``FinalLayer``)."""

    def __init__(self, hidden: int, out_features: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden, eps=NORM_EPS, elementwise_affine=False)
        self.adaLN = nn.Sequential(nn.SiLU(), zero_init(nn.Linear(hidden, 2 * hidden)))
        self.linear = zero_init(nn.Linear(hidden, out_features))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN(c)[:, None, None].chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


class LetsTalkTransformer(nn.Module):
    """The denoiser ε_θ(x_t, t | memory, portrait, audio)."""

    def __init__(self, config: LetsTalkConfig):
        super().__init__()
        cfg: DiTConfig = config.dit
        self.config = config
        self.cfg = cfg
        d = cfg.hidden_size
        self.patch_embed = PatchEmbed(cfg.in_channels, d, cfg.patch_size)  # shared by clip, memory, portrait
        self.t_embedder = TimestepEmbedder(d)
        self.audio_projector = AudioProjector(config.audio_projector)
        self.null_portrait = nn.Parameter(torch.zeros(d))  # the dropped portrait (classifier-free guidance)
        self.audio_embed = nn.Linear(cfg.audio_dim, d) if cfg.audio_fusion == "symbiotic" else None
        self.siamese = None
        if cfg.portrait_fusion == "siamese":
            self.siamese = SiameseBranch(cfg.siamese_depth or cfg.depth, d, cfg.linear_head_dim, cfg.ffn_hidden)
        self.blocks = nn.ModuleList(LetsTalkBlock(cfg) for _ in range(cfg.depth))
        self.final = FinalLayer(d, cfg.patch_size**2 * cfg.out_channels)
        self._init_weights()

    def _init_weights(self) -> None:
        """DiT initialisation: Xavier-uniform linears with zero bias, patch embedding like a linear,
        timestep MLP N(0, 0.02); layers marked by ``zero_init`` (adaLN, final, temporal_fc) stay zero."""
        for m in self.modules():
            if isinstance(m, nn.Linear) and not getattr(m, "zero_initialised", False):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.proj.bias)
        for layer in (self.t_embedder.mlp[0], self.t_embedder.mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)

    # --- conditions --------------------------------------------------------------------------------
    def grid(self, h: int, w: int) -> tuple[int, int]:
        p = self.cfg.patch_size
        if h % p or w % p:
            raise ValueError(f"latent size {h}×{w} is not a multiple of the patch size {p}.")
        return h // p, w // p

    def _spatial_pos(self, grid: tuple[int, int], like: torch.Tensor) -> torch.Tensor:
        return sincos_2d(self.cfg.hidden_size, *grid).to(device=like.device, dtype=like.dtype)

    def embed_frames(self, latents: torch.Tensor) -> torch.Tensor:
        """``[B, C, T, h, w]`` → ``[B, T, N, D]`` tokens with spatial positions."""
        b, c, t, h, w = latents.shape
        tokens = self.patch_embed(latents.transpose(1, 2).reshape(b * t, c, h, w))
        tokens = tokens + self._spatial_pos(self.grid(h, w), tokens)
        return tokens.view(b, t, -1, self.cfg.hidden_size)

    def project_audio(self, windows: torch.Tensor) -> torch.Tensor:
        """Audio windows ``[B, F, window, L, C]`` → tokens ``[B, F, 32, audio_dim]``."""
        return self.audio_projector(windows)

    def prepare_portrait(self, portrait: torch.Tensor, keep: torch.Tensor | None = None) -> PortraitContext:
        """Portrait latent ``[B, C, h, w]`` → :class:`PortraitContext`. Where ``keep`` is False the
        portrait is replaced by the learned null token (condition dropout / unconditional guidance)."""
        b, c, h, w = portrait.shape
        grid = self.grid(h, w)
        tokens = self.patch_embed(portrait)
        if keep is not None:
            null = self.null_portrait.to(tokens.dtype).expand_as(tokens)
            tokens = torch.where(keep.view(b, 1, 1).to(tokens.device), tokens, null)
        tokens = tokens + self._spatial_pos(grid, tokens)
        feats = self.siamese(tokens, grid) if self.siamese is not None else None
        return PortraitContext(tokens, feats)

    # --- forward -----------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, t: torch.Tensor, *, portrait: torch.Tensor | PortraitContext,
                audio_tokens: torch.Tensor, memory: torch.Tensor | None = None,
                audio_keep: torch.Tensor | None = None, portrait_keep: torch.Tensor | None = None) -> torch.Tensor:
        """Predict ε (and variance values) for the noisy clip.

        Args:
            x: ``[B, C, F, h, w]`` noisy clip latents. t: ``[B]`` timesteps (training scale, 0…999).
            portrait: the portrait latent ``[B, C, h, w]`` or a prepared :class:`PortraitContext`.
            audio_tokens: ``[B, F, A, audio_dim]`` from :meth:`project_audio`.
            memory: ``[B, C, f, h, w]`` clean memory latents, or None for no memory.
            audio_keep / portrait_keep: ``[B]`` bool; False drops that condition for that sample
                (audio → zero tokens after the projector; portrait → null token).
        """
        b, c, frames, h, w = x.shape
        grid = self.grid(h, w)
        ctx = portrait if isinstance(portrait, PortraitContext) else self.prepare_portrait(portrait, portrait_keep)
        if audio_keep is not None:
            audio_tokens = audio_tokens * audio_keep.view(b, 1, 1, 1).to(audio_tokens)
        d = self.cfg.hidden_size

        video = self.embed_frames(x)
        mem = self.embed_frames(memory) if memory is not None and memory.shape[2] > 0 else None
        f = 0 if mem is None else mem.shape[1]
        tpos = sincos_1d(d, torch.arange(f + frames)).to(video)  # memory at 0…f−1, clip at f…f+F−1
        video = video + tpos[f:, None]
        if mem is not None:
            mem = mem + tpos[:f, None]

        state = BlockState(video, mem)
        if self.cfg.portrait_fusion == "symbiotic":
            state.portrait = ctx.tokens[:, None].expand(b, frames, -1, -1)
        if self.audio_embed is not None:
            state.audio = self.audio_embed(audio_tokens)

        cond = self.t_embedder(t.to(x.device))
        for i, block in enumerate(self.blocks):
            feats = ctx.siamese_features
            state = block(state, cond, grid,
                          audio_context=audio_tokens,
                          portrait_tokens=ctx.tokens,
                          siamese_feature=feats[i] if feats is not None and i < len(feats) else None)
        out = self.final(state.video, cond)  # [B, F, N, p²·C_out]
        return self.unpatchify(out, grid)

    def unpatchify(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """``[B, F, N, p²·C_out]`` → ``[B, C_out, F, h, w]``."""
        b, frames, _, _ = tokens.shape
        p, co = self.cfg.patch_size, self.cfg.out_channels
        gh, gw = grid
        x = tokens.view(b, frames, gh, gw, p, p, co)
        return x.permute(0, 6, 1, 2, 4, 3, 5).reshape(b, co, frames, gh * p, gw * p)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
