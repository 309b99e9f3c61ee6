"""The training loop: one process or ``torchrun --nproc_per_node N`` (DDP; FSDP as an option).

Per step (letstalk_memo.md §1.7–§1.9): build this process's share of the global batch
(:mod:`.batches`), run the denoiser on ``x_t = q_sample(x0, t, ε)``, take the hybrid loss
(``mse + vb``, ADM ``training_losses``) — or, for a flow-objective config, the rectified-flow
velocity loss on ``x_σ = (1 − σ)x0 + σε`` (SD3, as Sana trains its linear DiT) — average gradients over processes, clip, AdamW, and update
the EMA weights that are exported. Checkpoints hold model, EMA, optimizer and step; because every
random draw is keyed by the step (:func:`.batches.keyed_generator`), resuming is exact.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from ..families.letstalk.config import LetsTalkConfig, get_preset
from .config import TrainConfig
from .state import load_training_state

CHECKPOINT_DIR = "checkpoints"
EXPORT_NAME = "model.safetensors"
LOG_NAME = "log.jsonl"


# --- set-up ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DistInfo:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistInfo:
    """Join the process group when launched by torchrun (NCCL on GPU, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    return DistInfo(rank, world, local, device)


def model_config(cfg: TrainConfig) -> LetsTalkConfig:
    """The preset (or JSON config file) with ``model_overrides`` applied to its DiT."""
    p = Path(cfg.model)
    if p.suffix == ".json":
        if not p.is_file():
            raise ValueError(f"model config '{p}' does not exist.")
        base = LetsTalkConfig.from_json(p.read_text())
        if not cfg.model_overrides:
            return base
        d = json.loads(base.to_json())
        d["dit"].update(cfg.model_overrides)
        return LetsTalkConfig.from_json(json.dumps(d))
    return get_preset(cfg.model, **cfg.model_overrides)


def load_trained_dcae(path, config: LetsTalkConfig):
    """The DC-AE the shards were encoded with; its latent shape must match the model config."""
    from ..autoencoder.checkpoint import load_dcae

    dcae = load_dcae(path)
    c = dcae.config
    if c.latent_channels != config.dcae.latent_channels or c.spatial_compression != config.dcae.spatial_compression:
        raise ValueError(f"the DC-AE '{path}' has {c.latent_channels} channels at {c.spatial_compression}×, but the "
                         f"model config expects {config.dcae.latent_channels} at {config.dcae.spatial_compression}×.")
    return dcae.eval().requires_grad_(False)


class TrainingDenoiser(nn.Module):
    """The model call of one training step as a single ``forward`` (what DDP/FSDP wrap)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x_t, t, portrait, windows, memory, portrait_keep, audio_keep):
        tokens = self.model.project_audio(windows)
        return self.model(x_t, t, portrait=portrait, audio_tokens=tokens, memory=memory,
                          audio_keep=audio_keep, portrait_keep=portrait_keep)


def wrap_model(model: nn.Module, info: DistInfo, strategy: str) -> nn.Module:
    net = TrainingDenoiser(model)
    if info.world == 1:
        return net
    if strategy == "fsdp":  # FSDP2: every block is its own shard unit (works with gloo on CPU too)
        from torch.distributed.fsdp import fully_shard

        for block in model.blocks:
            fully_shard(block)
        return fully_shard(net)
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(net, device_ids=[info.local_rank] if info.device.type == "cuda" else None)


def autocast_for(precision: str, device: torch.device):
    """bf16 autocast on CUDA (``auto`` or ``bf16``); fp32 elsewhere (CPU bf16 is slow and not asked for)."""
    if device.type == "cuda" and precision in ("auto", "bf16"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return nullcontext()


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Constant learning rate after a linear warm-up (the authors use constant, no warm-up)."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    return cfg.lr


# --- EMA -------------------------------------------------------------------------------------------
def _is_sharded(net: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(net, FSDPModule)


def full_state_dict(net: nn.Module) -> dict[str, torch.Tensor]:
    """The unwrapped model's full state dict (gathered on every rank under FSDP)."""
    if _is_sharded(net):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(net, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return {k.removeprefix("model."): v for k, v in state.items()}
    inner = net.module if hasattr(net, "module") else net
    return dict(inner.model.state_dict())


def ema_decay_at(step: int, decay: float) -> float:
    """EMA decay with the usual warm-up ``min(decay, (1 + step)/(10 + step))``: early on the average
    follows the weights closely, so a short run's EMA is not dominated by its random start."""
    return min(decay, (1 + step) / (10 + step))


@torch.no_grad()
def ema_update(ema: dict[str, torch.Tensor], state: dict[str, torch.Tensor], decay: float) -> None:
    """``ema ← decay·ema + (1 − decay)·θ`` in fp32 over the model's parameters and buffers."""
    for k, v in state.items():
        e = ema[k]
        if v.dtype.is_floating_point:
            e.mul_(decay).add_(v.detach().to(e.device, e.dtype), alpha=1 - decay)
        else:
            e.copy_(v)


# --- checkpoints -----------------------------------------------------------------------------------
def checkpoint_path(out: Path, step: int) -> Path:
    return out / CHECKPOINT_DIR / f"step_{step:07d}.pt"


def latest_checkpoint(out: Path) -> Path | None:
    found = sorted((out / CHECKPOINT_DIR).glob("step_*.pt"))
    return found[-1] if found else None


def _atomic_save(obj, path: Path) -> None:
    """Write ``obj`` to ``path`` atomically; a failed write (a full disk) removes the half-written file and says
    where, how much is free and that the checkpoints before it are kept."""
    from ..io.space import write_failed

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise write_failed(e, path, kept="The checkpoints written before are kept: run the same command again to "
                                         "resume from the last one.") from e


def export_model(path: Path, config: LetsTalkConfig, ema: dict, dcae, cfg: TrainConfig, step: int) -> Path:
    """The EMA weights as a LetsTalk checkpoint with the DC-AE bundled and the training recipe in the
    metadata (``letstalk_training``)."""
    from ..families.letstalk.checkpoint import recipe_metadata, save_checkpoint
    from ..families.letstalk.transformer import LetsTalkTransformer

    with torch.device("meta"):
        shell = LetsTalkTransformer(config)
    shell = shell.to_empty(device="cpu")
    shell.load_state_dict({k: v.cpu() for k, v in ema.items()})
    recipe = {"step": step, "train_config": json.loads(cfg.to_json())}
    tmp = path.with_name(path.name + ".tmp.safetensors")
    save_checkpoint(tmp, config, shell, dcae=dcae, extra_metadata={"letstalk_training": json.dumps(recipe), **recipe_metadata(config)})
    os.replace(tmp, path)
    return path


# --- the loop --------------------------------------------------------------------------------------
def train(cfg: TrainConfig, *, progress: bool = True) -> dict:
    """Train (or resume) to ``cfg.steps``. Returns the last logged record."""
    from ..diffusion.flow import flow_training_loss
    from ..diffusion.gaussian import training_losses
    from ..diffusion.schedule import DiffusionConfig, make_schedule
    from ..families.letstalk.transformer import LetsTalkTransformer
    from .batches import BatchBuilder, ShardSource

    info = init_distributed()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    config = model_config(cfg)
    flow = config.diffusion.objective == "flow"
    schedule = make_schedule(config.diffusion)
    # The memory's latent noise is "t ≤ 49 of the linear 1000-step DDPM schedule" (§1.7), for either objective.
    memory_schedule = make_schedule(DiffusionConfig()) if flow else schedule
    dcae = load_trained_dcae(cfg.dcae, config) if cfg.dcae else None
    if dcae is not None:
        dcae = dcae.to(info.device)
        config = dataclasses.replace(config, dcae=dcae.config)  # its trained scaling factor goes into the model

    source = ShardSource(cfg.data, min_frames=config.memory.frames + config.video.clip_frames + 1)
    expect = (config.dcae.latent_channels, config.video.height // config.dcae.spatial_compression,
              config.video.width // config.dcae.spatial_compression)
    if tuple(source.latent_shape) != expect:
        raise ValueError(f"the shards hold latents {tuple(source.latent_shape)} per frame but the model expects {expect}; "
                         "preprocess with this model's config and DC-AE.")
    builder = BatchBuilder(source, config, seed=cfg.seed, alphas_cumprod=memory_schedule.alphas_cumprod,
                           num_timesteps=config.diffusion.num_train_timesteps, objective=config.diffusion.objective,
                           flow_shift=config.diffusion.flow_shift, p_drop_portrait=cfg.p_drop_portrait,
                           p_drop_audio=cfg.p_drop_audio, p_drop_both=cfg.p_drop_both,
                           p_memory_from_portrait=cfg.p_memory_from_portrait,
                           noise_regularisation=cfg.noise_regularisation, dcae=dcae)

    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = LetsTalkTransformer(config).to(info.device)
    step, ck = 0, None
    last = latest_checkpoint(out)
    if last is not None:
        ck = load_training_state(last)
        if ck["model_config"] != config.to_json():
            raise ValueError(f"'{last}' was written for another model config; use a new run folder or the old config.")
        model.load_state_dict(ck["model"])
        step = ck["step"]
    ema = ({k: v.to(info.device) for k, v in ck["ema"].items()} if ck is not None
           else {k: v.detach().clone().float() for k, v in model.state_dict().items()})
    fsdp = cfg.strategy == "fsdp" and info.world > 1
    net = wrap_model(model, info, cfg.strategy)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if ck is not None:
        if fsdp:
            _load_optim_state(net, opt, ck["optimizer"])
        else:
            opt.load_state_dict(ck["optimizer"])
    if info.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(cfg.to_json())
        (out / "model_config.json").write_text(config.to_json())

    bar = None
    if progress and info.main:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=step, desc="train", unit="step", dynamic_ncols=True)
    record: dict = {}
    window = {"loss": 0.0, "mse": 0.0, "vb": 0.0, "n": 0, "t0": time.perf_counter()}
    log = open(out / LOG_NAME, "a") if info.main else None
    try:
        while step < cfg.steps:
            batch = builder.build(step, cfg.batch_size, info.rank, info.world)
            dev = info.device
            portrait, windows, memory = batch.portrait.to(dev), batch.windows.to(dev), batch.memory.to(dev)
            pk, ak = batch.portrait_keep.to(dev), batch.audio_keep.to(dev)
            for g in opt.param_groups:
                g["lr"] = lr_at(step, cfg)

            def model_fn(x_t, t):
                with autocast_for(cfg.precision, dev):
                    return net(x_t, t, portrait, windows, memory, pk, ak).float()

            if flow:
                terms = flow_training_loss(model_fn, batch.target.to(dev), batch.t.to(dev), batch.noise.to(dev),
                                           num_train_timesteps=config.diffusion.num_train_timesteps)
            else:
                terms = training_losses(schedule, model_fn, batch.target.to(dev), batch.t.to(dev), batch.noise.to(dev))
            loss = terms["loss"].mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gn = torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
            if hasattr(gn, "full_tensor"):  # a DTensor under FSDP
                gn = gn.full_tensor()
            opt.step()
            ema_update(ema, full_state_dict(net) if fsdp else model.state_dict(), ema_decay_at(step, cfg.ema_decay))
            step += 1

            window["loss"] += float(loss.detach())
            window["mse"] += float(terms["mse"].detach().mean())
            window["vb"] += float(terms["vb"].detach().mean()) if "vb" in terms else 0.0
            window["n"] += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{float(loss):.4f}")
            if step % cfg.log_every == 0 or step == cfg.steps:
                n, now = window["n"], time.perf_counter()
                record = {"step": step, "loss": window["loss"] / n, "mse": window["mse"] / n, "vb": window["vb"] / n,
                          "grad_norm": float(gn), "lr": lr_at(step - 1, cfg),
                          "sec_per_step": (now - window["t0"]) / n, "world": info.world}
                window = {"loss": 0.0, "mse": 0.0, "vb": 0.0, "n": 0, "t0": now}
                if log is not None:
                    log.write(json.dumps(record) + "\n")
                    log.flush()
            if step % cfg.checkpoint_every == 0 or step == cfg.steps or step in cfg.export_steps:
                state = full_state_dict(net)
                optim_state = _optim_state_to_save(net, opt) if fsdp else opt.state_dict()
                if info.main:
                    _atomic_save({"step": step, "model": state, "ema": ema, "optimizer": optim_state,
                                  "model_config": config.to_json(), "train_config": cfg.to_json()},
                                 checkpoint_path(out, step))
                    _prune(out, cfg.keep_checkpoints)
                    export_model(out / EXPORT_NAME, config, ema, dcae, cfg, step)
                    if step in cfg.export_steps:
                        export_model(out / f"model_step_{step:07d}.safetensors", config, ema, dcae, cfg, step)
                if info.world > 1:
                    dist.barrier()
    finally:
        if bar is not None:
            bar.close()
        if log is not None:
            log.close()
    return record


def _optim_state_to_save(net, opt) -> dict:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(net, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def _load_optim_state(net, opt, state) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(net, opt, state, options=StateDictOptions(full_state_dict=True))


def _prune(out: Path, keep: int) -> None:
    found = sorted((out / CHECKPOINT_DIR).glob("step_*.pt"))
    for p in found[:-keep]:
        p.unlink()
