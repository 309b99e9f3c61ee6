"""Preprocess talking-face videos into training shards (``letstalk preprocess``).

For each video: the frames are resampled to the model's fps, cropped with one fixed box per video
(found by a face detector on a few sampled frames), resized to the model's frame size, encoded by
the DC-AE, and written with the per-frame speech features of the video's own sound track to
``<out>/<stem>.safetensors`` (format: :mod:`.shards`). A folder run also writes ``index.json``.

Frame timing (the project contract, as at generation): ``S`` seconds of sound give
``F = ceil(S * fps)`` frames; output frame ``i`` is the source frame whose presentation interval
``[t_j, t_{j+1})`` contains ``i / fps`` (timestamps taken relative to the first frame, with 1 ms
of slack for rounded container timestamps). A video whose frames cover up to
:data:`MAX_FRAME_MISMATCH` output frames fewer than ``F`` is padded by repeating its last frame,
one that covers more is truncated; a larger mismatch is refused (the picture and the sound do not
belong together).

Frames are decoded twice (once to sample frames for the detector and to check the timing, once
to encode) and streamed in chunks, so memory does not grow with the video's length except for
the audio waveform and its features (a few MB per minute for log-mel, ~2 GB per hour for wav2vec2).
"""
from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from ..audio.waveform import as_fraction, frame_count, prepare_waveform
from ..face.crop import FaceDetector, crop_and_resize, crop_box_for_video, make_detector, sample_indices
from .shards import (
    INDEX_NAME,
    ShardInfo,
    ShardWriter,
    config_fingerprint,
    dcae_fingerprint,
    read_index,
    read_shard_metadata,
    scan_shards,
    shard_info,
    write_index,
)

__all__ = [
    "MAX_FRAME_MISMATCH",
    "VIDEO_EXTENSIONS",
    "add_preprocess_command",
    "collect_videos",
    "iter_resampled_frames",
    "load_preprocess_models",
    "preprocess_folder",
    "preprocess_video",
    "run_preprocess_command",
]

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi")
#: Output frames a video may lack (padded with its last frame) or have in excess (dropped) versus its sound.
MAX_FRAME_MISMATCH = 2
#: Number of frames shown to the face detector per video.
DETECTOR_SAMPLES = 16
_TIME_SLACK = Fraction(1, 1000)
_RESIZE_BATCH = 8


# --------------------------------------------------------------------------------------------- frames
def iter_resampled_frames(path, fps, n_frames: int, *, max_mismatch: int = MAX_FRAME_MISMATCH,
                          want: Callable[[int], bool] | None = None) -> Iterator[tuple[int, np.ndarray | None]]:
    """Yield ``(i, frame)`` for the ``n_frames`` output frames of ``path`` resampled to ``fps``.

    ``frame`` is RGB uint8 ``[H, W, 3]``; with ``want``, frames for which ``want(i)`` is false are
    yielded as ``None`` (not converted, only decoded). See the module docstring for the timing rule
    and the padding/truncation tolerance ``max_mismatch``; a larger mismatch raises ``ValueError``
    (after the decode, when the video is too long; as soon as it ends, when too short).
    """
    from ..io.audio_file import _open

    rate = as_fraction(fps)
    p = Path(path)
    out_time = lambda i: Fraction(i) / rate
    i = 0
    prev = prev_t = None
    cache: dict = {}

    def convert(frame, index):
        if want is not None and not want(index):
            return None
        if cache.get("frame") is not frame:
            cache["frame"], cache["image"] = frame, frame.to_ndarray(format="rgb24")
        return cache["image"]

    with _open(p, "video file") as container:
        if not container.streams.video:
            raise ValueError(f"'{p}' has no video stream.")
        stream = container.streams.video[0]
        tb = stream.time_base
        nominal = Fraction(stream.average_rate or stream.guessed_rate or 25)
        step = 1 / nominal
        pts0 = None
        for frame in container.decode(stream):
            if frame.pts is None or tb is None:
                t = Fraction(0) if prev_t is None else prev_t + step
            else:
                pts0 = frame.pts if pts0 is None else pts0
                t = Fraction(frame.pts - pts0) * Fraction(tb)
            if prev is not None:
                if t <= prev_t:  # a duplicate timestamp: keep the first frame of that instant
                    continue
                while i < n_frames and out_time(i) + _TIME_SLACK < t:
                    yield i, convert(prev, i)
                    i += 1
                step = t - prev_t
            prev, prev_t = frame, t
        if prev is None:
            raise ValueError(f"'{p}' holds no decodable video frames.")
        end = prev_t + step
        while i < n_frames and out_time(i) + _TIME_SLACK < end:
            yield i, convert(prev, i)
            i += 1
        covered = max(0, math.ceil((end - _TIME_SLACK) * rate))
        if n_frames - covered > max_mismatch or covered - n_frames > max_mismatch:
            raise ValueError(
                f"'{p}': its frames span {float(end):.3f} s ({covered} frames at {float(rate):g} fps) but its sound "
                f"needs {n_frames} frames; more than {max_mismatch} frames apart, so picture and sound do not match. "
                "Trim the video or its audio so that they have the same length."
            )
        while i < n_frames:  # a frame or two short: repeat the last one
            yield i, convert(prev, i)
            i += 1


# --------------------------------------------------------------------------------------------- models
def _load_config(checkpoint_or_config):
    """(config, the path if it is a checkpoint else None) from a checkpoint .safetensors or a config JSON."""
    from ..families.letstalk.checkpoint import CONFIG_KEY
    from ..families.letstalk.config import LetsTalkConfig
    from ..validation import require_file

    p = require_file(checkpoint_or_config, "checkpoint or config")
    if p.suffix == ".json":
        try:
            return LetsTalkConfig.from_json(p.read_text(encoding="utf-8")), None
        except (ValueError, TypeError) as e:
            raise ValueError(f"'{p}' is not a valid LetsTalk config JSON: {e}") from e
    if p.suffix not in {".safetensors", ".sft"}:
        raise ValueError(f"'{p.name}': give a LetsTalk checkpoint (.safetensors) or a config file (.json).")
    from safetensors import safe_open

    with safe_open(str(p), framework="pt") as f:
        meta = f.metadata() or {}
    if CONFIG_KEY not in meta:
        raise ValueError(f"'{p.name}' has no '{CONFIG_KEY}' metadata, so it is not a LetsTalk checkpoint.")
    return LetsTalkConfig.from_json(meta[CONFIG_KEY]), p


def _bundled(checkpoint: Path, prefix: str) -> dict[str, torch.Tensor]:
    """The tensors under ``prefix`` of a checkpoint, without reading the transformer."""
    from safetensors import safe_open

    with safe_open(str(checkpoint), framework="pt") as f:
        keys = [k for k in f.keys() if k.startswith(prefix)]  # noqa: SIM118 (safe_open is not a dict)
        return {k[len(prefix):]: f.get_tensor(k) for k in keys}


def load_preprocess_models(checkpoint_or_config, *, dcae_path=None, speech_encoder_path=None, device="auto"):
    """``(config, dcae, speech_encoder)`` for preprocessing, as :func:`letstalk_core.families.letstalk.loading.load_generator`
    finds them: the DC-AE from ``dcae_path`` or bundled in the checkpoint (``dcae.*``), the wav2vec2
    weights (wav2vec2 configs only) from ``speech_encoder_path`` or bundled (``speech.*``). The DC-AE
    runs in float32 (bf16 on CUDA would change the latents a model is trained on)."""
    from ..devices import pick_device
    from ..families.letstalk.loading import load_parts

    dev = pick_device(device)
    config, checkpoint = _load_config(checkpoint_or_config)
    dcae_state = _bundled(checkpoint, "dcae.") if checkpoint is not None and dcae_path is None else None
    speech_state = _bundled(checkpoint, "speech.") if checkpoint is not None and speech_encoder_path is None else None
    dcae, speech = load_parts(config, dcae_state, speech_state, dcae_path=dcae_path,
                              speech_encoder_path=speech_encoder_path, device=dev)
    return config, dcae, speech


# --------------------------------------------------------------------------------------------- one video
def _detector_name(detector) -> str:
    return str(getattr(detector, "name", type(detector).__name__))


def _existing_matches(path: Path, expected: dict, keep_frames: bool) -> ShardInfo | None:
    """The shard's info when it exists and was made from the same inputs, else ``None``."""
    if not path.is_file():
        return None
    try:
        meta = read_shard_metadata(path)
        info = shard_info(path)
    except (ValueError, OSError):
        return None
    if any(str(meta.get(k)) != str(v) for k, v in expected.items() if k not in ("letstalk_config",)):
        return None
    if config_fingerprint(meta["letstalk_config"]) != config_fingerprint(expected["letstalk_config"]):
        return None
    if keep_frames and not info.has_frames:
        return None
    return info


def preprocess_video(video_path, out_dir, *, config, dcae, speech_encoder, detector: FaceDetector,
                     keep_frames: bool = False, chunk: int = 64, encode_batch: int = 8,
                     fingerprint: str | None = None, overwrite: bool = False) -> ShardInfo:
    """Turn one video into ``out_dir/<stem>.safetensors`` and return its :class:`ShardInfo`.

    ``config``: the :class:`~letstalk_core.families.letstalk.config.LetsTalkConfig` (fps, frame size, speech encoder);
    ``dcae``: a loaded DC-AE; ``speech_encoder``: a :class:`~letstalk_core.audio.features.SpeechEncoder`;
    ``detector``: a :class:`~.faces.FaceDetector`. Frames go through the DC-AE ``chunk`` at a time
    (``encode_batch`` per forward pass). ``fingerprint``: :func:`~.shards.dcae_fingerprint` of ``dcae``
    (computed when ``None``; pass it to save the hashing per video). An existing shard made from the
    same source, config, DC-AE, speech encoder and detector is kept (resumable runs) unless ``overwrite``.
    Raises ``ValueError`` for a video without sound, a picture/sound length mismatch, or no face found.
    """
    from ..autoencoder.dc_ae import encode_frames
    from ..io.audio_file import _open, load_audio
    from ..io.image import tensor_to_uint8
    from ..validation import require_file, require_positive

    src = require_file(video_path, "Video file")
    require_positive(chunk, "chunk", integer=True)
    require_positive(encode_batch, "encode_batch", integer=True)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    height, width = config.video.height, config.video.width
    if height != width:
        raise ValueError(f"preprocessing makes square crops; the config's frames are {width}x{height}.")
    fps = config.video.fps
    fingerprint = fingerprint or dcae_fingerprint(dcae)
    expected = {
        "source": src.name, "source_size": str(src.stat().st_size), "fps": str(float(fps)),
        "size": f"[{height}, {width}]", "dcae_fingerprint": fingerprint,
        "speech_encoder_config": json.dumps(speech_encoder.config.to_dict(), sort_keys=True),
        "letstalk_config": config.to_json(), "detector": _detector_name(detector),
    }
    path = out_dir / f"{src.stem}.safetensors"
    if not overwrite and (info := _existing_matches(path, expected, keep_frames)) is not None:
        return info

    # Sound first: it fixes the frame count.
    with _open(src, "video file") as container:
        has_audio = bool(container.streams.audio)
    if not has_audio:
        raise ValueError(f"'{src}' has no audio track; training shards need the speech that goes with the frames. "
                         "Mux the sound into the video (e.g. ffmpeg -i video.mp4 -i speech.wav -c:v copy -shortest out.mp4).")
    waveform, rate = load_audio(src)
    n = frame_count(int(waveform.shape[-1]), rate, fps)
    wave16k = prepare_waveform(waveform, rate)
    del waveform
    audio = speech_encoder.encode_prepared(wave16k, fps, n_frames=n)
    del wave16k

    # Pass 1: sampled frames for the detector (and the timing check, before any encoding).
    picks = set(sample_indices(n, DETECTOR_SAMPLES))
    detections, frame_size = [], None
    for i, image in iter_resampled_frames(src, fps, n, want=picks.__contains__):
        if image is not None:
            frame_size = (image.shape[1], image.shape[0])
            detections.append(list(detector.detect(image)))
    box = crop_box_for_video(detections, frame_size, source=f"'{src}'")
    x0, y0, x1, y1 = box

    # Pass 2: crop, resize, encode, write; chunk by chunk.
    f = dcae.config.spatial_compression
    meta = {**expected, "crop_box": list(box)}
    with ShardWriter(path, frames=n, latent_shape=(dcae.config.latent_channels, height // f, width // f),
                     audio_shape=tuple(audio.shape[1:]), frame_shape=(height, width, 3) if keep_frames else None,
                     metadata=meta) as writer:
        writer.write("audio", 0, audio)
        del audio
        pending: list[np.ndarray] = []
        resized: list[torch.Tensor] = []
        done = 0

        def flush_resize():
            if pending:
                x = torch.from_numpy(np.stack(pending)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
                resized.append(crop_and_resize(x, (0, 0, x1 - x0, y1 - y0), height))
                pending.clear()

        def flush_encode():
            nonlocal done
            if resized:
                frames = torch.cat(resized)
                resized.clear()
                writer.write("latents", done, encode_frames(dcae, frames, chunk_size=encode_batch).cpu())
                if keep_frames:
                    writer.write("frames", done, torch.from_numpy(tensor_to_uint8(frames)))
                done += frames.shape[0]

        buffered = 0
        for _, image in iter_resampled_frames(src, fps, n):
            pending.append(image[y0:y1, x0:x1])
            buffered += 1
            if len(pending) == _RESIZE_BATCH:
                flush_resize()
            if buffered == chunk:
                flush_resize()
                flush_encode()
                buffered = 0
        flush_resize()
        flush_encode()
    return shard_info(path)


# --------------------------------------------------------------------------------------------- folders
def collect_videos(inputs: Sequence) -> list[Path]:
    """Video files among ``inputs`` (files, or folders searched recursively), sorted, without duplicates.
    Shard names come from the file stems, so two videos with the same stem are refused."""
    found: dict[Path, None] = {}
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            for q in sorted(p.rglob("*")):
                if q.is_file() and q.suffix.lower() in VIDEO_EXTENSIONS:
                    found[q.resolve()] = None
        elif p.is_file():
            found[p.resolve()] = None
        else:
            raise FileNotFoundError(f"input '{p}' does not exist.")
    videos = sorted(found)
    stems: dict[str, Path] = {}
    for v in videos:
        if v.stem in stems:
            raise ValueError(f"'{stems[v.stem]}' and '{v}' would both become '{v.stem}.safetensors'; rename one.")
        stems[v.stem] = v
    return videos


_WORKER: dict = {}


def _init_worker(checkpoint_or_config, dcae_path, speech_encoder_path, detector_spec, device, threads) -> None:
    if threads:
        torch.set_num_threads(threads)
    config, dcae, speech = load_preprocess_models(checkpoint_or_config, dcae_path=dcae_path,
                                                  speech_encoder_path=speech_encoder_path, device=device)
    _WORKER.update(config=config, dcae=dcae, speech=speech, detector=make_detector(detector_spec),
                   fingerprint=dcae_fingerprint(dcae))


def _run_one(video, out_dir, keep_frames, chunk) -> ShardInfo:
    w = _WORKER
    return preprocess_video(video, out_dir, config=w["config"], dcae=w["dcae"], speech_encoder=w["speech"],
                            detector=w["detector"], keep_frames=keep_frames, chunk=chunk, fingerprint=w["fingerprint"])


def preprocess_folder(inputs, out_dir, *, checkpoint_or_config, dcae_path=None, speech_encoder_path=None,
                      detector_spec: str = "none", workers: int = 1, keep_frames: bool = False, chunk: int = 64,
                      device: str = "cpu", skip_errors: bool = False, mp_context: str = "spawn",
                      progress: Callable[[Path, ShardInfo | BaseException], None] | None = None) -> list[ShardInfo]:
    """Preprocess every video of ``inputs`` (files or folders) into ``out_dir`` and write its ``index.json``.

    ``checkpoint_or_config``: a LetsTalk checkpoint (.safetensors; its DC-AE/wav2vec2 may be bundled)
    or a config JSON (``LetsTalkConfig.to_json``). ``workers > 1`` runs videos in a process pool
    (``mp_context``: "spawn", the safe default with CUDA; "fork" starts faster on CPU; each worker loads
    the models once and uses ``cpu_count // workers`` torch threads);
    ``workers == 1`` runs in this process. ``progress(video, info_or_error)`` is called per video.
    With ``skip_errors`` a failing video is reported through ``progress`` and left out; otherwise
    the first failure is raised. The index covers every shard in ``out_dir`` (earlier runs included)
    and is refused when they disagree. Returns the infos of this run's videos.
    """
    import multiprocessing

    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}.")
    videos = collect_videos(inputs)
    if not videos:
        raise ValueError(f"no video files ({', '.join(VIDEO_EXTENSIONS)}) found in {[str(i) for i in inputs]}.")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    make_detector(detector_spec)  # fail fast on a bad spec / missing package, before starting workers
    if (out_dir / INDEX_NAME).is_file():  # refuse to mix with shards of another config before doing any work
        config, _ = _load_config(checkpoint_or_config)
        old = read_index(out_dir)
        if old and old[0].config_hash != config_fingerprint(config.to_json()):
            raise ValueError(f"'{out_dir}' holds shards made for another model config; preprocess into a new folder.")
    args = (str(checkpoint_or_config), dcae_path and str(dcae_path), speech_encoder_path and str(speech_encoder_path),
            detector_spec, device)
    results: dict[Path, ShardInfo] = {}

    def record(video: Path, outcome):
        if isinstance(outcome, BaseException):
            if progress:
                progress(video, outcome)
            if not skip_errors:
                raise outcome
        else:
            results[video] = outcome
            if progress:
                progress(video, outcome)

    if workers == 1:
        _init_worker(*args, None)
        try:
            for v in videos:
                try:
                    outcome = _run_one(v, out_dir, keep_frames, chunk)
                except Exception as e:  # noqa: BLE001 (reported or re-raised by record)
                    outcome = e
                record(v, outcome)
        finally:
            _WORKER.clear()
    else:
        threads = max(1, (os.cpu_count() or 1) // workers)
        ctx = multiprocessing.get_context(mp_context)
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(*args, threads)) as pool:
            futures = {pool.submit(_run_one, v, out_dir, keep_frames, chunk): v for v in videos}
            try:
                for fut in as_completed(futures):
                    try:
                        outcome = fut.result()
                    except Exception as e:  # noqa: BLE001
                        outcome = e
                    record(futures[fut], outcome)
            except BaseException:
                for fut in futures:
                    fut.cancel()
                raise
    write_index(out_dir, scan_shards(out_dir))
    return [results[v] for v in videos if v in results]


# --------------------------------------------------------------------------------------------- CLI
def add_preprocess_command(subparsers) -> None:
    """Add ``letstalk preprocess`` to an ``argparse`` subparsers object."""
    p = subparsers.add_parser("preprocess", help="turn talking-face videos into training shards (DC-AE latents + speech features)")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="video files or folders (mp4, mov, mkv, webm, avi)")
    p.add_argument("--out", required=True, help="output folder for the shards and index.json")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="LetsTalk checkpoint whose config (and bundled DC-AE) to use")
    src.add_argument("--config", help="LetsTalk config JSON (LetsTalkConfig.to_json)")
    p.add_argument("--dcae", help="DC-AE weights (.safetensors), when the checkpoint does not bundle them")
    p.add_argument("--speech-encoder", help="wav2vec2 weights, for wav2vec2 configs without bundled weights")
    p.add_argument("--detector", default="none", help="none (footage already cropped), haar (OpenCV) or onnx:PATH")
    p.add_argument("--workers", type=int, default=1, help="videos processed in parallel (processes)")
    p.add_argument("--keep-frames", action="store_true", help="also store the cropped frames (uint8) in each shard")
    p.add_argument("--chunk", type=int, default=64, help="frames encoded per chunk (memory bound)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.set_defaults(func=run_preprocess_command)


def run_preprocess_command(args) -> int:
    """Run ``letstalk preprocess``: a progress bar over the videos, failures listed, then a summary.
    Returns 0 when every video became a shard, 1 otherwise."""
    from tqdm import tqdm

    from ..validation import require_folder_out

    try:
        make_detector(args.detector)  # a missing optional package: a clean error message, not a traceback
    except ImportError as e:
        raise ValueError(str(e)) from e
    videos = collect_videos(args.inputs)
    failures: list[tuple[Path, BaseException]] = []
    t0 = time.perf_counter()
    with tqdm(total=len(videos), unit="video", desc="preprocess") as bar:
        def progress(video, outcome):
            if isinstance(outcome, BaseException):
                failures.append((video, outcome))
                bar.write(f"FAILED {video.name}: {outcome}")
            bar.update(1)

        infos = preprocess_folder(args.inputs, require_folder_out(args.out, "preprocess's shards"), checkpoint_or_config=args.checkpoint or args.config,
                                  dcae_path=args.dcae, speech_encoder_path=args.speech_encoder,
                                  detector_spec=args.detector, workers=args.workers, keep_frames=args.keep_frames,
                                  chunk=args.chunk, device=args.device, skip_errors=True, progress=progress)
    frames = sum(i.frames for i in infos)
    fps = infos[0].fps if infos else 0
    print(f"{len(infos)} of {len(videos)} videos -> {args.out} ({frames} frames"
          f"{f', {frames / fps / 60:.1f} min' if fps else ''}) in {time.perf_counter() - t0:.0f} s; "
          f"index: {Path(args.out) / INDEX_NAME}")
    if failures:
        print(f"{len(failures)} failed: " + ", ".join(v.name for v, _ in failures))
    return 1 if failures else 0
