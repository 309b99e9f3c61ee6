"""The training loop: DDP over 2 gloo processes equals 1 process on the same global batch; resume is
exact; the batch builder follows the noise-regularised memory recipe; configs are validated."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from letstalk_core.families.letstalk.config import get_preset
from letstalk_core.train.config import TrainConfig, load_train_config

ROOT = Path(__file__).resolve().parents[2]


def _write_shards(folder: Path, *, count=3, frames=30, with_frames=True, seed=0) -> None:
    cfg = get_preset("tiny")
    c, s = cfg.dcae.latent_channels, cfg.video.height // cfg.dcae.spatial_compression
    g = torch.Generator().manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        t = {"latents": torch.randn(frames, c, s, s, generator=g).half(),
             "audio": torch.randn(frames, 1, cfg.speech_encoder.mel.n_mels, generator=g)}
        if with_frames:
            t["frames"] = torch.randint(0, 256, (frames, cfg.video.height, cfg.video.width, 3), generator=g, dtype=torch.uint8)
        save_file(t, str(folder / f"v{i}.safetensors"))


def _config(tmp_path: Path, out: str, **kw) -> Path:
    values = dict(data=str(tmp_path / "shards"), out=str(tmp_path / out), model="tiny", steps=3, batch_size=4,
                  lr=1e-3, checkpoint_every=1, log_every=1, threads=1, seed=7)
    values.update(kw)
    p = tmp_path / f"{out}.json"
    p.write_text(json.dumps(values))
    return p


def _run(args: list[str], nproc: int = 1) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    if nproc == 1:
        cmd = [sys.executable, "-m", "letstalk_core.cli", *args]
    else:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
               f"--master_port={port}", "-m", "letstalk_core.cli", *args]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


def _weights(run: Path, step: int) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / f"step_{step:07d}.pt", map_location="cpu", weights_only=True)["model"]


@pytest.fixture
def shards(tmp_path):
    _write_shards(tmp_path / "shards", with_frames=False)
    return tmp_path


def test_two_gloo_processes_match_one_process(shards):
    tmp = shards
    _run(["train", str(_config(tmp, "one")), "--no-progress"])
    _run(["train", str(_config(tmp, "two")), "--no-progress"], nproc=2)
    one, two = _weights(tmp / "one", 3), _weights(tmp / "two", 3)
    _check_same_training(tmp, one, two)
    log = [json.loads(line) for line in (tmp / "two" / "log.jsonl").read_text().splitlines()]
    assert [r["world"] for r in log] == [2, 2, 2]


def test_fsdp_matches_one_process_and_resumes(shards):
    """FSDP2 (fully_shard per block) over 2 gloo processes: same weights as one process; a run
    stopped after step 2 and resumed (sharded optimizer state gathered and re-sharded) ends the same."""
    tmp = shards
    _run(["train", str(_config(tmp, "one")), "--no-progress"])
    _run(["train", str(_config(tmp, "fsdp", strategy="fsdp")), "--no-progress"], nproc=2)
    _check_same_training(tmp, _weights(tmp / "one", 3), _weights(tmp / "fsdp", 3))
    _run(["train", str(_config(tmp, "fsdp_resumed", strategy="fsdp", steps=2)), "--no-progress"], nproc=2)
    _run(["train", str(_config(tmp, "fsdp_resumed", strategy="fsdp", steps=3)), "--no-progress"], nproc=2)
    a, b = _weights(tmp / "fsdp", 3), _weights(tmp / "fsdp_resumed", 3)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6


def _check_same_training(tmp: Path, one: dict, two: dict) -> None:
    init = _weights(tmp / "one", 1)
    assert one.keys() == two.keys()
    moved = max(float((one[k] - init[k]).abs().max()) for k in one)
    assert moved > 1e-3  # the weights did train
    worst = max(float((one[k] - two[k]).abs().max()) for k in one)
    assert worst < 1e-4, worst


def test_resume_is_exact(shards):
    from letstalk_core.train.loop import train

    tmp = shards
    straight = TrainConfig(**json.loads(_config(tmp, "straight", steps=4).read_text()))
    train(straight, progress=False)
    first = TrainConfig(**{**json.loads(_config(tmp, "resumed", steps=2).read_text())})
    train(first, progress=False)
    train(TrainConfig(**{**json.loads(_config(tmp, "resumed", steps=4).read_text())}), progress=False)
    a, b = _weights(tmp / "straight", 4), _weights(tmp / "resumed", 4)
    assert all(torch.equal(a[k], b[k]) for k in a)
    ea = load_file(str(tmp / "straight" / "model.safetensors"))
    eb = load_file(str(tmp / "resumed" / "model.safetensors"))
    assert all(torch.equal(ea[k], eb[k]) for k in ea)


def test_exported_model_generates(shards, tmp_path):
    """The export is a LetsTalk checkpoint (EMA weights, DC-AE bundled) that the generator loads."""
    from letstalk_core.autoencoder.checkpoint import save_dcae
    from letstalk_core.autoencoder.dc_ae import DCAE
    from letstalk_core.families.letstalk.loading import load_generator
    from letstalk_core.loop import GenerationSettings, ListSink
    from letstalk_core.train.loop import train

    cfg = get_preset("tiny")
    torch.manual_seed(0)
    save_dcae(DCAE(cfg.dcae), cfg.dcae, tmp_path / "dcae.safetensors")
    _write_shards(tmp_path / "pix", with_frames=True)
    tc = TrainConfig(data=str(tmp_path / "pix"), out=str(tmp_path / "run"), model="tiny", steps=2, batch_size=2,
                     dcae=str(tmp_path / "dcae.safetensors"), checkpoint_every=1, threads=1,
                     export_steps=[1], provenance={"command": "test"})
    train(tc, progress=False)
    assert (tmp_path / "run" / "model_step_0000001.safetensors").is_file()
    gen = load_generator(tmp_path / "run" / "model.safetensors", device="cpu", dtype="fp32")
    sink = ListSink()
    wave = torch.randn(1, 16000) * 0.1
    gen.generate(torch.rand(3, 32, 32) * 2 - 1, wave, 16000, sink, GenerationSettings(steps=2))
    assert sink.frames().shape[0] == 25


def test_flow_objective_trains_and_generates(shards, tmp_path):
    """A flow-objective config trains with the velocity loss (memory noise still from the DDPM
    schedule's first 50 steps) and its export samples with the Euler sampler ("auto")."""
    from letstalk_core.families.letstalk.config import LetsTalkConfig
    from letstalk_core.families.letstalk.loading import load_generator
    from letstalk_core.loop import GenerationSettings, ListSink
    from letstalk_core.train.loop import train

    d = json.loads(get_preset("tiny").to_json())
    d["diffusion"]["objective"], d["diffusion"]["learn_sigma"], d["dit"]["learn_sigma"] = "flow", False, False
    (tmp_path / "flow.json").write_text(LetsTalkConfig.from_json(json.dumps(d)).to_json())
    tc = TrainConfig(data=str(shards / "shards"), out=str(tmp_path / "flow_run"), model=str(tmp_path / "flow.json"),
                     steps=3, batch_size=2, threads=1, checkpoint_every=3, lr=1e-3)
    record = train(tc, progress=False)
    assert record["vb"] == 0.0 and record["loss"] > 0
    from letstalk_core.autoencoder.checkpoint import save_dcae
    from letstalk_core.autoencoder.dc_ae import DCAE

    cfg = get_preset("tiny")
    save_dcae(DCAE(cfg.dcae), cfg.dcae, tmp_path / "dcae.safetensors")
    gen = load_generator(tmp_path / "flow_run" / "model.safetensors", dcae_path=tmp_path / "dcae.safetensors",
                         device="cpu", dtype="fp32")
    assert gen.config.diffusion.objective == "flow"
    sink = ListSink()
    gen.generate(torch.rand(3, 32, 32) * 2 - 1, torch.randn(1, 8000) * 0.1, 16000, sink, GenerationSettings(steps=2))
    assert sink.frames().shape[0] == 13


def test_ema_warmup():
    from letstalk_core.train.loop import ema_decay_at

    assert ema_decay_at(0, 0.999) == pytest.approx(0.1)
    assert ema_decay_at(90, 0.999) == pytest.approx(0.91)
    assert ema_decay_at(100_000, 0.999) == 0.999


def test_batch_builder_recipe(tmp_path):
    """Memory regularisation: t ≤ 49 latent noise + one spatial mask for the whole batch; dropout
    and memory-from-portrait rates; identical batches for the same step, different for another."""
    from letstalk_core.diffusion.schedule import make_schedule
    from letstalk_core.train.batches import BatchBuilder, ShardSource

    _write_shards(tmp_path / "s", with_frames=False)
    cfg = get_preset("tiny")
    sched = make_schedule(cfg.diffusion)
    src = ShardSource(tmp_path / "s", min_frames=11)

    def builder(**kw):
        args = dict(seed=1, alphas_cumprod=sched.alphas_cumprod, num_timesteps=1000, p_drop_portrait=0.2,
                    p_drop_audio=0.3, p_drop_both=0.1, p_memory_from_portrait=0.0, noise_regularisation=True)
        args.update(kw)
        return BatchBuilder(src, cfg, **args)

    b = builder().build(5, 8)
    again = builder().build(5, 8)
    other = builder().build(6, 8)
    assert torch.equal(b.memory, again.memory) and torch.equal(b.target, again.target)
    assert not torch.equal(b.noise, other.noise)
    zero_cols = (b.memory == 0).all(dim=(0, 1, 2))  # masked positions are zero in every sample/frame/channel
    assert 0 < int(zero_cols.sum()) < zero_cols.numel()
    clean = builder(noise_regularisation=False).build(5, 8)
    assert torch.equal(clean.target, b.target)
    assert not torch.equal(clean.memory, b.memory)
    # the clean memory is the two frames before the clip
    assert clean.memory.shape == (8, cfg.dcae.latent_channels, 2, 4, 4) and clean.windows.shape[:3] == (8, 8, 5)
    big = builder(p_drop_portrait=0.2, p_drop_audio=0.3, p_drop_both=0.1).build(0, 2000)
    assert abs((~big.portrait_keep).float().mean().item() - (0.1 + 0.9 * 0.2)) < 0.04
    assert abs((~big.audio_keep).float().mean().item() - (0.1 + 0.9 * 0.3)) < 0.04
    portrait_mem = builder(p_memory_from_portrait=1.0, noise_regularisation=False).build(3, 4)
    assert torch.equal(portrait_mem.memory[:, :, 0], portrait_mem.portrait)
    with pytest.raises(ValueError, match="divisible"):
        builder().build(0, 5, rank=0, world=2)


def test_train_config_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown keys"):
        TrainConfig.from_dict({"data": "d", "out": "o", "stepz": 3})
    with pytest.raises(ValueError, match="must be given"):
        TrainConfig.from_dict({"data": "d"})
    with pytest.raises(ValueError, match="probability"):
        TrainConfig(data="d", out="o", p_drop_audio=1.5)
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"data": "d", "out": "o"}))
    assert load_train_config(p, ["steps=7", "model_overrides={\"depth\": 1}"]).steps == 7
    with pytest.raises(ValueError, match="no shards"):
        from letstalk_core.train.batches import ShardSource

        ShardSource(tmp_path, min_frames=3)


class _Payload:
    """A pickle that, if loaded with ``weights_only=False``, creates a file: what a shared run folder could hold."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_crafted_pickle_in_a_run_folder_is_refused_and_runs_nothing(shards, tmp_path):
    """`letstalk train` resumes from the run folder's latest checkpoint: one whose pickle holds code is refused
    with a message naming it, and the code never runs (it would create ``marker``)."""
    from letstalk_core.train.loop import train

    marker = tmp_path / "pwned"
    run = tmp_path / "shared_run"
    (run / "checkpoints").mkdir(parents=True)
    bad = run / "checkpoints" / "step_0000009.pt"
    torch.save({"step": 9, "model": {}, "x": _Payload(marker)}, bad)
    with pytest.raises(ValueError, match=r"step_0000009\.pt.*refused and nothing in it was run"):
        train(TrainConfig(**json.loads(_config(tmp_path, "shared_run", steps=10).read_text())), progress=False)
    assert not marker.exists()
    r = subprocess.run([sys.executable, "-m", "letstalk_core.cli", "train", str(_config(tmp_path, "shared_run", steps=10))],
                       env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode != 0 and "refused" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert not marker.exists()


def test_the_autoencoder_trainer_refuses_a_crafted_state_too(tmp_path):
    from letstalk_core.io import VideoWriter
    from letstalk_core.train.autoencoder import AutoencoderTrainConfig, train_autoencoder

    video = tmp_path / "v.mp4"
    with VideoWriter(video, 10) as w:
        w.write(torch.rand(6, 3, 32, 32) * 2 - 1)
    out = tmp_path / "dcae.safetensors"
    marker = tmp_path / "pwned"
    torch.save({"step": 1, "model": {}, "x": _Payload(marker)}, out.with_suffix(".train_state.pt"))
    cfg = AutoencoderTrainConfig(videos=(str(video),), out=str(out), preset="tiny", steps=2, batch_size=2,
                                 frame_stride=1, threads=1)
    with pytest.raises(ValueError, match=r"dcae\.train_state\.pt.*refused"):
        train_autoencoder(cfg, progress=False)
    assert not marker.exists()
