"""MEMO's memory plan: the peak device memory of a run, from the models' real shapes, before any work.

A MEMO run holds, on its device (reference/letstalk_memo.md §2.3, §2.6):

* the **weights**: Diffusion Net, Reference Net, ImageProj, audio projector (model dtype), the SD VAE
  (model dtype) and wav2vec2 (fp32);
* the **memory state**: every temporal layer's ``(KV, Z)``, ``2 × L × heads × (d² + d)`` per layer for
  the two guidance rows — 13.07 GiB in fp32 at 512², 6.53 GiB in bf16;
* the reference image's Reference-Net features (once per video) and, at each stage of a clip, that
  stage's activations: one guided Diffusion Net step, the VAE decode of a chunk, the VAE encode of the
  past frames, the Reference Net over the past frames and the memory update.

The stages' activations are not estimated by formulas: :func:`plan_memo` runs the very code of each
stage on the meta device (:mod:`letstalk_core.memory_trace`) at the asked size and dtype and counts every
tensor it creates until it is freed. Added on top: the CUDA context and the caching allocator's slack
(CUDA), or nothing (a CPU run's figure is the memory above the process's own start).

**Options that make it fit** (:class:`MemoOptions`; each either exact or measured against the
all-resident fp32-state run on the golden fixture, ``tests/core/test_memory_plan.py``):

* ``state_dtype``: ``auto`` keeps the state in the model's dtype (the authors' behaviour in bf16/fp16),
  every product and sum still in fp32; ``fp32`` keeps it in fp32;
* ``offload``: the Reference Net and the VAE leave the device while the Diffusion Net samples;
* ``reference_chunk``: the Reference Net over the past frames a few images at a time;
* ``sequential_guidance``: the two guidance rows one after the other instead of one batch of 2;
* ``state_on_cpu``: the state kept in (pinned) CPU memory, each layer's copied to the device when read;
* ``vae_chunk``: the VAE decodes and encodes that many frames at a time (at 512² its convolutions at full
  resolution are the largest activation of a clip: 5 GiB for 8 frames in bf16).

Tiers (:data:`TIERS`) are named by the memory they fit at MEMO's recipe (512², bf16, CUDA);
:func:`choose_options` takes the fastest that fits the free memory.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

GiB = 1024 ** 3
CUDA_CONTEXT = int(0.5 * GiB)  # the CUDA context and kernels outside torch's allocator (typical, cuda 12)
CUDA_SLACK = 0.10  # the caching allocator's rounding and fragmentation, on top of the tensors


@dataclass(frozen=True)
class MemoOptions:
    """How a MEMO run trades speed for memory (see the module docstring)."""

    state_dtype: str = "auto"  # auto: the model's dtype (fp32 accumulation); fp32
    offload: bool = False
    reference_chunk: int = 0  # images per Reference-Net pass over the past frames (0: all at once)
    sequential_guidance: bool = False
    state_on_cpu: bool = False
    vae_chunk: int = 0  # at most this many frames per VAE decode/encode pass (0: the run's decode_chunk)

    def __post_init__(self):
        if self.state_dtype not in ("auto", "fp32"):
            raise ValueError(f"state_dtype must be 'auto' (the model's dtype) or 'fp32'; got {self.state_dtype!r}.")
        if not isinstance(self.reference_chunk, int) or self.reference_chunk < 0:
            raise ValueError(f"reference_chunk must be 0 (all at once) or a positive number; got {self.reference_chunk!r}.")
        if not isinstance(self.vae_chunk, int) or self.vae_chunk < 0:
            raise ValueError(f"vae_chunk must be 0 (the run's decode chunk) or a positive number; got {self.vae_chunk!r}.")

    def vae_frames(self, decode_chunk: int) -> int:
        return min(decode_chunk, self.vae_chunk) if self.vae_chunk else decode_chunk

    def state_torch_dtype(self, model_dtype: torch.dtype) -> torch.dtype:
        return torch.float32 if self.state_dtype == "fp32" or model_dtype == torch.float32 else model_dtype

    def describe(self) -> str:
        parts = [f"state {self.state_dtype}"]
        if self.offload:
            parts.append("Reference Net + VAE offloaded while sampling")
        if self.reference_chunk:
            parts.append(f"Reference Net {self.reference_chunk} images at a time")
        if self.sequential_guidance:
            parts.append("guidance rows one after the other")
        if self.state_on_cpu:
            parts.append("state on the CPU, streamed per layer")
        if self.vae_chunk:
            parts.append(f"VAE {self.vae_chunk} frame{'s' if self.vae_chunk > 1 else ''} at a time")
        return ", ".join(parts)


# Fastest first; each named by the memory it fits at 512², bf16, on CUDA (see `letstalk info <MEMO> --size 512`).
TIERS: dict[str, MemoOptions] = {
    "24gb": MemoOptions(),
    "16gb": MemoOptions(offload=True, reference_chunk=4, sequential_guidance=True, vae_chunk=1),
    "12gb": MemoOptions(offload=True, reference_chunk=4, sequential_guidance=True, state_on_cpu=True, vae_chunk=1),
}


@dataclass
class MemoryPlan:
    """Bytes on the device: ``resident`` terms held throughout, ``stages`` each stage's peak (resident
    included), ``overhead`` what is not a tensor. ``peak`` is the largest stage plus the overhead."""

    device: str
    size: int
    dtype: torch.dtype
    options: MemoOptions
    resident: dict[str, int] = field(default_factory=dict)
    stages: dict[str, int] = field(default_factory=dict)
    overhead: int = 0

    @property
    def peak(self) -> int:
        return max(self.stages.values()) + self.overhead

    @property
    def largest_stage(self) -> str:
        return max(self.stages, key=self.stages.get)

    def fits(self, free_bytes: int) -> bool:
        return self.peak <= free_bytes

    def lines(self) -> list[str]:
        g = lambda b: f"{b / GiB:.2f} GiB"  # noqa: E731
        out = [f"memory plan, {self.device}, {self.size}², {str(self.dtype).replace('torch.', '')} "
               f"({self.options.describe()}): peak {g(self.peak)} in '{self.largest_stage}'"]
        out += [f"  resident  {name}: {g(b)}" for name, b in self.resident.items()]
        out += [f"  stage     {name}: {g(b)}" for name, b in self.stages.items()]
        if self.overhead:
            out.append(f"  overhead  CUDA context + allocator slack: {g(self.overhead)}")
        return out

    def as_dict(self) -> dict:
        return {"device": self.device, "size": self.size, "dtype": str(self.dtype).replace("torch.", ""),
                "options": self.options.__dict__, "resident": self.resident, "stages": self.stages,
                "overhead": self.overhead, "peak": self.peak, "largest_stage": self.largest_stage}


def _count(module: torch.nn.Module) -> int:
    return sum(t.numel() for t in module.parameters())


def plan_memo(folder, *, size: int = 512, dtype: torch.dtype = torch.bfloat16, device: str = "cuda",
              options: MemoOptions | None = None, frames: int = 16, past: int = 16, decode_chunk: int = 8,
              vae_config=None, speech_config=None) -> MemoryPlan:
    """The plan of one MEMO run (``folder`` a checked :class:`~letstalk_core.families.memo.loading.MemoFolder`)
    at ``size``² in ``dtype`` on a ``device`` of type ``cuda`` or ``cpu``."""
    from ...audio.wav2vec2 import Wav2Vec2Config, Wav2Vec2Encoder
    from ...autoencoder.sd_vae import SDVAE, SDVAEConfig
    from ...memory.linear_state import LinearAttentionMemory
    from ...memory_trace import meta_module, meta_trace, parameter_bytes
    from .conditions import initial_past_features, past_features, reference_features, reference_tokens
    from .sampling import guided_conditions, guided_velocity

    opt = options or MemoOptions()
    device = torch.device(device).type
    if size % 8 or size < 64:
        raise ValueError(f"size must be a multiple of 8 of at least 64; got {size}.")
    parts = folder.parts
    ref = meta_module(parts["reference_net"].build, dtype)
    net = meta_module(parts["diffusion_net"].build, dtype)
    image_proj = meta_module(parts["image_proj"].build, dtype)
    audio_proj = meta_module(parts["audio_proj"].build, dtype)
    vae = meta_module(lambda: SDVAE(vae_config or SDVAEConfig()), dtype)
    speech = meta_module(lambda: Wav2Vec2Encoder(speech_config or Wav2Vec2Config()), torch.float32)
    small = parameter_bytes(image_proj) + parameter_bytes(audio_proj) + _count(meta_module(
        parts["audio_emotion_classifier"].build, dtype)) * torch.finfo(dtype).bits // 8
    weights_dn = parameter_bytes(net) + small
    weights_other = parameter_bytes(ref) + parameter_bytes(vae) + parameter_bytes(speech)
    sdt = opt.state_torch_dtype(dtype)
    h = size // 8
    meta = torch.device("meta")

    with meta_trace() as live:
        live.ignore(ref, net, image_proj, audio_proj, vae)
        face = torch.empty(1, image_proj.tokens, image_proj.dim, device=meta, dtype=dtype)
        uncond = torch.empty_like(face)
        with live.stage("prepare"):
            latent = vae.encode(torch.empty(1, 3, size, size, device=meta, dtype=dtype), chunk_size=1)
            ref_feats = reference_features(ref, latent.to(dtype), face, uncond)
        conditions_bytes = live.live
        memory = LinearAttentionMemory(dtype=sdt)
        with live.stage("memory start"):
            net.update_memory(memory, initial_past_features(ref_feats, past), past, new_video=True)
        state_bytes = memory.nbytes()
        largest_layer = max(kv.numel() * kv.element_size() + z.numel() * z.element_size()
                            for kv, z in memory.layers.values())
        windows = torch.empty(1, frames, 5, audio_proj.config.layers, audio_proj.config.channels, device=meta, dtype=dtype)
        cond = guided_conditions(reference_tokens=reference_tokens(ref_feats), face_tokens=face,
                                 uncond_face_tokens=uncond, audio_tokens=audio_proj(windows), emotion=0)
        fn = guided_velocity(net, cond, memory, sequential=opt.sequential_guidance)
        with live.stage("Diffusion Net step"):
            x = torch.empty(1, 4, frames, h, h, device=meta, dtype=torch.float32)
            fn(x.to(dtype), torch.empty(1, device=meta))
        vae_frames = opt.vae_frames(decode_chunk)
        with live.stage("VAE decode"):
            z = torch.empty(min(vae_frames, frames), 4, h, h, device=meta, dtype=dtype)
            decoded = next(iter(vae.iter_decode(z, chunk_size=vae_frames)))
            del decoded, z
        with live.stage("VAE encode (past frames)"):
            pixels = torch.empty(past, 3, size, size, device=meta, dtype=dtype)
            lat = vae.encode(pixels, chunk_size=vae_frames)
            del pixels
        with live.stage("Reference Net + memory update"):
            feats = past_features(ref, lat.to(dtype), face, uncond, chunk=opt.reference_chunk)
            net.update_memory(memory, feats, past, new_video=False)
            del feats

    plan = MemoryPlan(device=device, size=size, dtype=dtype, options=opt)
    on_device_state = largest_layer if opt.state_on_cpu and device != "cpu" else state_bytes
    plan.resident = {"Diffusion Net + projections (weights)": weights_dn,
                     "Reference Net + VAE + wav2vec2 (weights)": weights_other,
                     f"memory state ({str(sdt).replace('torch.', '')})" + (", on the CPU" if opt.state_on_cpu else ""):
                         state_bytes,
                     "reference image's features": conditions_bytes}
    state_off = state_bytes - on_device_state  # a CPU-kept state is not on the device
    for name, peak in live.stages.items():
        offloaded = name == "Diffusion Net step" and opt.offload and device != "cpu"
        weights = weights_dn + (0 if offloaded else weights_other)
        held = peak if name == "prepare" or device == "cpu" else peak - state_off
        plan.stages[name] = weights + max(0, held)
    if device == "cuda":
        plan.overhead = CUDA_CONTEXT + int(CUDA_SLACK * max(plan.stages.values()))
    return plan


def refusal(plan: MemoryPlan, free_bytes: int, tier: str | None = None) -> str:
    """The message for a run that does not fit: what it needs, what is free, and what makes it fit."""
    need, free = plan.peak / GiB, free_bytes / GiB
    where = "free device memory" if plan.device == "cuda" else "available RAM"
    msg = (f"MEMO at {plan.size}² in {str(plan.dtype).replace('torch.', '')} needs {need:.1f} GiB on the {plan.device} "
           f"({plan.largest_stage} is the largest stage) but {free:.1f} GiB is {where}")
    if tier != "12gb":
        msg += ("; choose a smaller memory tier (memory tier 16gb or 12gb, or auto to pick the fastest that fits; "
                "the CLI's --memory-tier, the MEMO loader's memory_tier)")
    if plan.options.state_dtype == "fp32" and plan.dtype != torch.float32:
        msg += "; keep the memory state in the model's dtype (state dtype auto)"
    if plan.dtype == torch.float32:
        msg += "; run in bf16 (--dtype bf16) to halve the weights and the memory state"
    if plan.size > 256:
        msg += "; or make a smaller video (--size 256)"
    return msg + "."


def free_memory(device: torch.device) -> int:
    """Free device memory (CUDA: ``mem_get_info``) or available RAM (CPU: ``MemAvailable``)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


@dataclass
class _ConfigPart:
    build: object


@dataclass
class ConfigFolder:
    """The parts of a MEMO model from its ``config.json`` files alone (no weights): enough to plan
    (``tests/fixtures/memo/configs`` holds the published ones), e.g. ``plan_memo(ConfigFolder.read(dir))``."""

    parts: dict

    @classmethod
    def read(cls, configs) -> "ConfigFolder":
        import json
        from pathlib import Path

        from ...audio.projector import AudioProjector, AudioProjectorConfig
        from .config import parse_unet_config
        from .diffusion_net import DiffusionNet
        from .projections import EmotionClassifier, ImageProj
        from .reference_net import ReferenceNet

        root = Path(configs)
        raw = {n: json.loads((root / n / "config.json").read_text()) for n in
               ("reference_net", "diffusion_net", "image_proj", "audio_proj", "audio_emotion_classifier")}
        ip, ap, ec = raw["image_proj"], raw["audio_proj"], raw["audio_emotion_classifier"]
        builders = {
            "reference_net": lambda: ReferenceNet(parse_unet_config(raw["reference_net"], "reference", "reference_net")),
            "diffusion_net": lambda: DiffusionNet(parse_unet_config(raw["diffusion_net"], "diffusion", "diffusion_net")),
            "image_proj": lambda: ImageProj(embedding_dim=ip.get("clip_embeddings_dim", 512),
                                            tokens=ip.get("clip_extra_context_tokens", 4),
                                            dim=ip.get("cross_attention_dim", 768)),
            "audio_proj": lambda: AudioProjector(AudioProjectorConfig(
                window=ap.get("seq_len", 5), layers=ap.get("blocks", 12), channels=ap.get("channels", 768),
                hidden=ap.get("intermediate_dim", 512), tokens=ap.get("context_tokens", 32),
                out_dim=ap.get("output_dim", 768))),
            "audio_emotion_classifier": lambda: EmotionClassifier(layers=ec.get("num_classifier_layers", 5),
                                                                  width=ec.get("num_classifier_channels", 2048)),
        }
        return cls({n: _ConfigPart(b) for n, b in builders.items()})


def choose_options(folder, *, tier: str = "auto", state_dtype: str = "auto", free_bytes: int | None = None,
                   device="cpu", **kw) -> tuple[str, MemoOptions, MemoryPlan]:
    """The tier to run (``auto``: the fastest that fits ``free_bytes``, by default the device's free
    memory), its options with ``state_dtype`` applied, and its plan. A run that does not fit is refused
    here, before any work (``ValueError`` saying what makes it fit)."""
    device = torch.device(device)
    free = free_memory(device) if free_bytes is None else int(free_bytes)
    names = list(TIERS) if tier == "auto" else [tier]
    if tier != "auto" and tier not in TIERS:
        raise ValueError(f"unknown memory tier {tier!r}; use auto or one of {', '.join(TIERS)}.")
    plans = {}
    for n in names:  # fastest first: a tier that fits ends the search (each plan traces the networks)
        plans[n] = plan_memo(folder, options=replace(TIERS[n], state_dtype=state_dtype), device=device.type, **kw)
        if plans[n].fits(free):
            return n, plans[n].options, plans[n]
    name, plan = min(plans.items(), key=lambda item: item[1].peak)
    raise ValueError(refusal(plan, free, name))
