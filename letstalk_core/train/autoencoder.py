"""Trainer of a small DC-AE (the demo autoencoder) on video frames.

The published DC-AEs are trained in phases with L1 + LPIPS and then a GAN loss (Chen et al. 2024,
arXiv 2410.10733 §3.3). No LPIPS weights can be downloaded here, so this trainer uses the
reconstruction terms only: L1 + MSE on pixels in [-1, 1]. After training the latent scale is
measured and ``scaling_factor = 1/std(latents)`` is stored, as the published configs do, so the
diffusion model sees unit-variance latents.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .batches import keyed_generator
from .state import load_training_state


@dataclass(frozen=True)
class AutoencoderTrainConfig:
    videos: tuple  # video files or folders
    out: str  # .safetensors of the trained DC-AE
    preset: str = "demo"  # LetsTalk preset whose DC-AE structure and frame size are trained
    steps: int = 2000
    batch_size: int = 32
    lr: float = 1e-3
    frame_stride: int = 3  # keep every n-th frame of each video in the training pool
    seed: int = 0
    threads: int = 0
    checkpoint_every: int = 500

    def __post_init__(self):
        for name in ("steps", "batch_size", "frame_stride", "checkpoint_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}.")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}.")
        if not str(self.out).endswith(".safetensors"):
            raise ValueError(f"the DC-AE is written as .safetensors; got out='{self.out}'.")


VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi")


def collect_videos(inputs) -> list[Path]:
    found: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found += sorted(q for q in p.rglob("*") if q.suffix.lower() in VIDEO_SUFFIXES)
        elif p.is_file():
            found.append(p)
        else:
            raise ValueError(f"'{p}' is neither a video file nor a folder.")
    if not found:
        raise ValueError(f"no videos ({', '.join(VIDEO_SUFFIXES)}) found in {list(map(str, inputs))}.")
    return found


def square_resize(frames: torch.Tensor, size: int) -> torch.Tensor:
    """Centre square crop and area/bilinear resize of ``[N, 3, H, W]`` to ``size``×``size``."""
    h, w = frames.shape[-2:]
    s = min(h, w)
    y, x = (h - s) // 2, (w - s) // 2
    frames = frames[..., y:y + s, x:x + s]
    if s == size:
        return frames
    mode = "area" if s > size else "bilinear"
    return F.interpolate(frames, size=(size, size), mode=mode, **({} if mode == "area" else {"align_corners": False}))


def frame_pool(videos: list[Path], size: int, stride: int) -> torch.Tensor:
    """Every ``stride``-th frame of every video, as uint8 ``[N, 3, size, size]`` (kept in memory)."""
    from ..io.video import read_video_frames

    pool = []
    for v in videos:
        frames = read_video_frames(v)[::stride]
        pool.append(((square_resize(frames, size) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8))
    return torch.cat(pool)


def reconstruction_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.l1_loss(y, x) + F.mse_loss(y, x)


@torch.no_grad()
def latent_std(model, pool: torch.Tensor, n: int = 512) -> float:
    idx = torch.linspace(0, len(pool) - 1, min(n, len(pool))).long()
    z = torch.cat([model.encoder(pool[i].float() / 127.5 - 1) for i in idx.split(64)])
    return float(z.float().std())


def train_autoencoder(cfg: AutoencoderTrainConfig, *, progress: bool = True) -> dict:
    """Train, set the scaling factor, write ``cfg.out`` (and ``<out>.model_config.json``: the preset's
    LetsTalk config with this DC-AE, for ``letstalk preprocess`` / ``letstalk train``)."""
    from ..autoencoder.checkpoint import save_dcae
    from ..autoencoder.dc_ae import DCAE
    from ..families.letstalk.config import get_preset

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    config = get_preset(cfg.preset)
    size = config.video.height
    pool = frame_pool(collect_videos(cfg.videos), size, cfg.frame_stride)
    torch.manual_seed(cfg.seed)
    model = DCAE(config.dcae)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    out = Path(cfg.out)
    state_path = out.with_suffix(".train_state.pt")
    step = 0
    if state_path.is_file():  # resume
        st = load_training_state(state_path)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        step = st["step"]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=step, desc="train-dcae", unit="step", dynamic_ncols=True)
    t0, losses = time.perf_counter(), []
    model.train()
    while step < cfg.steps:
        gen = keyed_generator(cfg.seed, step, "dcae")
        idx = torch.randint(0, len(pool), (cfg.batch_size,), generator=gen)
        x = pool[idx].float() / 127.5 - 1
        lr = cfg.lr * min(1.0, (step + 1) / 100) * (0.1 + 0.9 * 0.5 * (1 + torch.cos(torch.tensor(step / cfg.steps * torch.pi)).item()))
        for g in opt.param_groups:
            g["lr"] = lr
        loss = reconstruction_loss(x, model.decoder(model.encoder(x)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        losses.append(float(loss))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if step % cfg.checkpoint_every == 0 and step < cfg.steps:
            tmp = state_path.with_suffix(".tmp")
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step}, tmp)
            os.replace(tmp, state_path)
    if bar is not None:
        bar.close()
    model.eval()
    std = latent_std(model, pool)
    dcae_config = dataclasses.replace(config.dcae, scaling_factor=1.0 / std)
    save_dcae(model, dcae_config, out)
    model_config = dataclasses.replace(config, dcae=dcae_config)
    out.with_suffix(".model_config.json").write_text(model_config.to_json())
    with torch.no_grad():
        x = pool[torch.linspace(0, len(pool) - 1, min(256, len(pool))).long()].float() / 127.5 - 1
        y = model.decoder(model.encoder(x)).clamp(-1, 1)
        mse = float(F.mse_loss(y, x))
    if state_path.is_file():
        state_path.unlink()
    summary = {"steps": step, "frames_in_pool": len(pool), "final_loss": sum(losses[-50:]) / max(1, len(losses[-50:])),
               "psnr_db": 10 * torch.log10(torch.tensor(4.0 / mse)).item(), "latent_std": std,
               "seconds": time.perf_counter() - t0}
    out.with_suffix(".train_summary.json").write_text(json.dumps(summary, indent=2))
    return summary
