"""Training batches from preprocessed shards (letstalk_memo.md §1.7 "Training sampling").

A training sample is ``f + F`` consecutive frames of one video: the first ``f`` are the memory, the
next ``F`` the target clip; the reference (portrait) is another frame of the same video, outside that
window. Every random choice of step ``s`` is drawn from generators keyed by ``(seed, s, sample)``
and never from global state, so

* a run resumed from a checkpoint continues exactly as if it had not stopped, and
* the global batch is the same whatever the number of processes: rank ``r`` of ``W`` builds samples
  ``r·B/W … (r+1)·B/W − 1`` of it, which is what makes DDP equal to one process over the same batch.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from ..audio.windows import frame_windows_range
from ..diffusion.flow import sample_sigmas
from ..families.letstalk.config import LetsTalkConfig
from ..memory.noise import add_latent_noise, add_pixel_noise, spatial_mask


def keyed_generator(*key) -> torch.Generator:
    """A CPU generator seeded by a hash of ``key`` (independent streams per (seed, step, sample, use))."""
    digest = hashlib.sha256(":".join(map(str, key)).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


@dataclass(frozen=True)
class ShardEntry:
    path: Path
    frames: int
    has_frames: bool


class ShardSource:
    """Random access to the shards of a folder (safetensors, memory-mapped: only the rows a sample
    needs are read). Tensors: ``latents [F, C, h, w]``, ``audio [F, L, D]``, optional ``frames
    [F, H, W, 3]`` uint8."""

    def __init__(self, folder, *, min_frames: int):
        from safetensors import safe_open

        folder = Path(folder)
        files = sorted(folder.glob("*.safetensors"))
        if not files:
            raise ValueError(f"no shards (*.safetensors) in '{folder}'; run `letstalk preprocess` first.")
        self._handles = {}
        entries, shapes = [], set()
        for p in files:
            h = safe_open(str(p), framework="pt")
            keys = set(h.keys())
            if not {"latents", "audio"} <= keys:
                raise ValueError(f"'{p.name}' is not a training shard (needs 'latents' and 'audio' tensors).")
            lat = h.get_slice("latents").get_shape()
            aud = h.get_slice("audio").get_shape()
            if lat[0] != aud[0]:
                raise ValueError(f"'{p.name}': {lat[0]} latent frames but {aud[0]} audio frames.")
            shapes.add((tuple(lat[1:]), tuple(aud[1:])))
            if lat[0] >= min_frames:
                entries.append(ShardEntry(p, lat[0], "frames" in keys))
                self._handles[p] = h
        if len(shapes) > 1:
            raise ValueError(f"the shards in '{folder}' disagree on latent/audio shapes {sorted(shapes)}; "
                             "preprocess them all with the same model config.")
        if not entries:
            raise ValueError(f"no shard in '{folder}' has the {min_frames} frames a training sample needs "
                             "(memory + clip + one reference frame); use longer videos.")
        self.entries = entries
        (self.latent_shape, self.audio_shape), = shapes
        self.has_frames = all(e.has_frames for e in entries)

    def rows(self, entry: ShardEntry, name: str, start: int, stop: int) -> torch.Tensor:
        return self._handles[entry.path].get_slice(name)[start:stop]


@dataclass
class Batch:
    """One process's share of a global batch, ready for the model."""

    target: torch.Tensor  # [b, C, F, h, w] clean clip latents
    memory: torch.Tensor  # [b, C, f, h, w] (regularised) memory latents
    portrait: torch.Tensor  # [b, C, h, w] reference latents
    windows: torch.Tensor  # [b, F, 2m+1, L, D] audio windows
    t: torch.Tensor  # [b] timesteps (DDPM, long) or noise levels σ ∈ (0, 1) (flow, float)
    noise: torch.Tensor  # [b, C, F, h, w]
    portrait_keep: torch.Tensor  # [b] bool
    audio_keep: torch.Tensor  # [b] bool


def _pick_window(gen: torch.Generator, source: ShardSource, span: int) -> tuple[ShardEntry, int, int]:
    """Uniform over all valid (video, start) windows; the reference is uniform outside the window."""
    counts = torch.tensor([e.frames - span + 1 for e in source.entries], dtype=torch.float64)
    i = int(torch.multinomial(counts, 1, generator=gen))
    entry = source.entries[i]
    start = int(torch.randint(0, entry.frames - span + 1, (1,), generator=gen))
    r = int(torch.randint(0, entry.frames - span, (1,), generator=gen))
    ref = r if r < start else r + span
    return entry, start, ref


def _to_unit(frames_u8: torch.Tensor) -> torch.Tensor:
    """uint8 ``[n, H, W, 3]`` → float ``[n, 3, H, W]`` in [-1, 1]."""
    return frames_u8.permute(0, 3, 1, 2).float() / 127.5 - 1.0


class BatchBuilder:
    """Builds the training batch of a step: sampling, noise regularisation of the memory, condition
    dropout, diffusion timesteps (or flow noise levels) and noise. ``alphas_cumprod`` is the DDPM
    schedule whose first 50 steps set the memory's latent noise (§1.7), also for flow models."""

    def __init__(self, source: ShardSource, config: LetsTalkConfig, *, seed: int, alphas_cumprod: torch.Tensor,
                 num_timesteps: int, objective: str = "ddpm", flow_shift: float = 1.0, p_drop_portrait: float, p_drop_audio: float, p_drop_both: float,
                 p_memory_from_portrait: float, noise_regularisation: bool, dcae=None):
        self.source, self.config, self.seed = source, config, seed
        self.alphas_cumprod, self.num_timesteps = alphas_cumprod, num_timesteps
        self.objective, self.flow_shift = objective, flow_shift
        self.p = (p_drop_portrait, p_drop_audio, p_drop_both, p_memory_from_portrait)
        self.noise_regularisation = noise_regularisation
        self.pixel_noise = noise_regularisation and config.memory.pixel_noise and source.has_frames and dcae is not None
        self.dcae = dcae
        self.f, self.F, self.m = config.memory.frames, config.video.clip_frames, config.audio_window

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        """DC-AE latents of (noisy) images; noise may leave [-1, 1], as in the authors' code."""
        p = next(self.dcae.parameters())
        with torch.no_grad():
            return self.dcae.encoder(images.to(p.device, p.dtype)).float().cpu() * self.dcae.config.scaling_factor

    def _sample(self, step: int, j: int) -> dict:
        gen = keyed_generator(self.seed, step, j, "sample")
        entry, start, ref = _pick_window(gen, self.source, self.f + self.F)
        src, f, F, m = self.source, self.f, self.F, self.m
        lat = src.rows(entry, "latents", start, start + f + F).float()
        s = {"target": lat[f:].transpose(0, 1)}  # [C, F, h, w]
        lo, hi = max(0, start + f - m), min(entry.frames, start + f + F + m)
        audio = src.rows(entry, "audio", lo, hi).float()
        s["windows"] = frame_windows_range(audio, start + f - lo, start + f + F - lo, m)
        u = torch.rand(4, generator=gen)
        from_portrait = bool(u[3] < self.p[3])
        if self.pixel_noise:
            mem_px = _to_unit(src.rows(entry, "frames", start, start + f))
            ref_px = _to_unit(src.rows(entry, "frames", ref, ref + 1))
            s["ref_px"] = add_pixel_noise(ref_px, self.config.memory, gen)
            s["mem_px"] = None if from_portrait else add_pixel_noise(mem_px[None], self.config.memory, gen)[0]
        else:
            s["portrait"] = src.rows(entry, "latents", ref, ref + 1).float()[0]
            s["memory"] = None if from_portrait else lat[:f].transpose(0, 1)
        s["from_portrait"] = from_portrait
        both = bool(u[2] < self.p[2])
        s["portrait_keep"] = not (both or bool(u[0] < self.p[0]))
        s["audio_keep"] = not (both or bool(u[1] < self.p[1]))
        if self.objective == "flow":  # σ ~ logit-normal (SD3), continuous
            s["t"] = float(sample_sigmas(1, gen, shift=self.flow_shift)[0])
        else:  # t ~ U{0, …, T−1}
            s["t"] = int(torch.randint(0, self.num_timesteps, (1,), generator=gen))
        s["noise"] = torch.randn(s["target"].shape, generator=gen)
        s["gen"] = gen
        return s

    def build(self, step: int, global_batch: int, rank: int = 0, world: int = 1) -> Batch:
        if global_batch % world:
            raise ValueError(f"the global batch ({global_batch}) must be divisible by the number of processes ({world}).")
        per = global_batch // world
        samples = [self._sample(step, j) for j in range(rank * per, (rank + 1) * per)]
        f = self.f
        if self.pixel_noise:  # one encoder call for every noisy image of this share
            imgs = [s["ref_px"] for s in samples] + [s["mem_px"] for s in samples if s["mem_px"] is not None]
            lat = self._encode(torch.cat(imgs))
            it = iter(lat[len(samples):].split(f))
            for k, s in enumerate(samples):
                s["portrait"] = lat[k]
                s["memory"] = None if s["mem_px"] is None else next(it).transpose(0, 1)
        memories = []
        for s in samples:
            mem = s["memory"] if s["memory"] is not None else s["portrait"][:, None].expand(-1, f, -1, -1)
            if self.noise_regularisation:
                mem = add_latent_noise(mem[None], self.alphas_cumprod, self.config.memory, s["gen"])[0]
            memories.append(mem)
        memory = torch.stack(memories)
        if self.noise_regularisation:  # one mask per global batch (§1.7 step 3)
            memory = spatial_mask(memory, self.config.memory, keyed_generator(self.seed, step, "mask"))
        return Batch(
            target=torch.stack([s["target"] for s in samples]),
            memory=memory,
            portrait=torch.stack([s["portrait"] for s in samples]),
            windows=torch.stack([s["windows"] for s in samples]),
            t=torch.tensor([s["t"] for s in samples]),
            noise=torch.stack([s["noise"] for s in samples]),
            portrait_keep=torch.tensor([s["portrait_keep"] for s in samples]),
            audio_keep=torch.tensor([s["audio_keep"] for s in samples]),
        )
