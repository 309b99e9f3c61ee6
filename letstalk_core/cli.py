"""The letstalk command: long talking-portrait videos from a portrait and a speech track.

    letstalk demo                                                 (the shipped demo model, demo person and speech)
    letstalk generate --checkpoint model.safetensors --image face.png --audio speech.wav --out video.mp4
    letstalk info model.safetensors                               (add --json for every detail)
    letstalk init --preset tiny --out random-tiny.safetensors     (an UNTRAINED model, for trying the pipeline)
    letstalk params                                               (parameter counts of the presets)

'--checkpoint demo' names the shipped demo model. 'letstalk COMMAND --help' lists each command's options.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .runtime import CoreShare, add_compile_option, add_threads_option, apply_threads, prepare_threads, run_threads

DEMO_NAME = "demo"  # --checkpoint demo: the shipped demo model


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written; every option's help ends with its default (unless it has none)."""

    def _get_help_string(self, action) -> str:
        text = action.help or ""
        if "%(default)" in text or not action.option_strings or any(action.default is v for v in (None, False, argparse.SUPPRESS)):
            return text
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    def __init__(self, *args, formatter_class=HelpFormatter, **kwargs) -> None:
        super().__init__(*args, formatter_class=formatter_class, **kwargs)


def checkpoint_path(value: str) -> Path:
    """``demo`` → the shipped demo model; anything else is a path."""
    if value == DEMO_NAME:
        from .demo import demo_model_path

        return demo_model_path()
    return Path(value)


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="make a talking video from a portrait and a speech track",
                       description="Make a talking video from a portrait and a speech track of any length.")
    p.add_argument("--checkpoint", required=True,
                   help="LetsTalk checkpoint (.safetensors), 'demo' for the shipped demo model, or a MEMO model folder "
                        "(memoavatar/memo: reference_net/, diffusion_net/, image_proj/, audio_proj/, misc/)")
    p.add_argument("--image", required=True, help="portrait image (png, jpg, webp, ...), or with --face a photo of "
                                                  "any size with one or more people")
    p.add_argument("--audio", required=True, action="append",
                   help="speech audio, or a video with sound (wav, mp3, flac, m4a, mp4, ...). For a conversation (several "
                        "people in --image), give it once per face, in the order of --face: each face speaks its own "
                        "track and listens while the others speak (shorter tracks are padded with silence)")
    p.add_argument("--face", default=None,
                   help="for a photo with several people (or one face in a larger photo): the face boxes, "
                        "'x0,y0,x1,y1; x0,y0,x1,y1' in photo pixels (square, one per --audio, same order), or a "
                        "detector whose faces are taken left to right: haar (needs opencv-python-headless) or scrfd "
                        "(a MEMO folder's). Default with several --audio: scrfd for MEMO, else haar. Each face is "
                        "cropped at the model's size and pasted back into the photo; the sound is the tracks' mix")
    p.add_argument("--face-scale", type=float, default=1.6,
                   help="with a detector: enlarge each found face box this much (hair, chin, motion room)")
    p.add_argument("--feather", type=float, default=0.12,
                   help="with --face: the soft edge of each pasted face, as a fraction of its box side")
    p.add_argument("--out", required=True, help="output .mp4")
    p.add_argument("--dcae", help="DC-AE weights, when the checkpoint does not bundle them")
    p.add_argument("--vae", help="MEMO: the Stable Diffusion VAE (sd-vae-ft-mse folder or file)")
    p.add_argument("--speech-encoder", help="wav2vec2 weights, when the model uses wav2vec2 and does not bundle them "
                                            "(MEMO: wav2vec2-base-960h, folder or file)")
    p.add_argument("--emotion", default="auto",
                   help="MEMO: 'auto' (from the speech, needs --emotion-encoder) or one emotion for the whole video: "
                        "angry, disgusted, fearful, happy, neutral, other, sad, surprised, unknown")
    p.add_argument("--emotion-encoder", help="MEMO: emotion2vec_plus_large model.pt (for --emotion auto)")
    p.add_argument("--allow-no-face", action="store_true",
                   help="MEMO: where no face is found, use MEMO's zero face embedding instead of stopping")
    p.add_argument("--fps", type=float, default=None, help="MEMO: frame rate of the video (default: MEMO's 30)")
    p.add_argument("--size", type=int, default=512, help="MEMO: frame side in pixels (MEMO was trained at 512)")
    p.add_argument("--memory-tier", default="auto", choices=["auto", "24gb", "16gb", "12gb"],
                   help="MEMO: how the run trades speed for memory (24gb: everything on the device; 16gb: Reference "
                        "Net and VAE offloaded while sampling, guidance rows one after the other, smaller chunks; "
                        "12gb: also the memory state on the CPU). auto: the fastest whose memory plan fits")
    p.add_argument("--state-dtype", default="auto", choices=["auto", "fp32"],
                   help="MEMO: the memory state's dtype (auto: the model's, with fp32 sums, as MEMO's authors; "
                        "fp32: twice the memory)")
    p.add_argument("--cfg-scale", type=float, default=None,
                   help="MEMO: its one guidance scale over all conditions (default: MEMO's 3.5)")
    p.add_argument("--sampler", default=None,
                   help="ddim, ddpm or euler (flow models); default: the checkpoint's recorded recipe, else ddim for "
                        "DDPM models and euler for flow models")
    p.add_argument("--steps", type=int, default=None,
                   help="sampling steps per clip; default: the checkpoint's recorded recipe (10 for the demo model), "
                        "else 10 for flow and 25 for DDPM models")
    p.add_argument("--seed", type=int, default=0, help="noise seed: the same seed and inputs give the same video")
    p.add_argument("--audio-scale", type=float, default=1.0, help="audio guidance scale (1 = off)")
    p.add_argument("--portrait-scale", type=float, default=1.0, help="portrait guidance scale (1 = off)")
    p.add_argument("--memory-scale", type=float, default=1.0,
                   help="experimental memory guidance scale (1 = off); >1 extrapolates from the no-history branch "
                        "toward the memory bank (one extra batched branch). It diverged at 2 on the demo model.")
    p.add_argument("--no-memory", action="store_true", help="generate every clip from the portrait only (ablation)")
    p.add_argument("--overlap", type=int, default=None,
                   help="frames consecutive clips share and crossfade (0 = the paper's side-by-side clips; "
                        "default: a quarter of a clip, 4 of 16, which hides the seams)")
    p.add_argument("--memory-anchor", type=float, default=None,
                   help="share of the portrait mixed into each clip's memory, 0..1 (0 = the paper's memory; "
                        "default 0.2, which keeps long runs from drifting)")
    p.add_argument("--size-mode", default="model", choices=["model", "keep"],
                   help="model: crop+resize the portrait to the model's size; keep: use the image's size")
    p.add_argument("--resume-dir", help="keep finished clips here while the video is made; running the same command "
                                        "again after an interruption resumes with an identical result. Removed when "
                                        "the video is complete, unless --keep-resume-dir")
    p.add_argument("--keep-resume-dir", action="store_true", help="keep the --resume-dir clips after a complete run")
    p.add_argument("--keep-partial", action="store_true",
                   help="when a run stops (disk full, interrupted), keep the video made so far, playable, as "
                        "<name>.partial.mp4 (default: remove it; the finished clips stay in --resume-dir)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--dtype", default="auto", help="auto (bf16 where the device runs it in hardware: CUDA compute "
                   "capability 8.0+, CPUs with AMX or AVX512-BF16; fp32 elsewhere), fp32, bf16, fp16")
    p.add_argument("--crf", type=int, default=18, help="video quality (lower = better)")
    add_threads_option(p)
    add_compile_option(p)


def cmd_generate(a) -> int:
    from .diffusion.guidance import GuidanceScales
    from .families.letstalk import RECOMMENDED_MEMORY_ANCHOR
    from .family import MEMO, family_of, load_generator
    from .io.image import load_image
    from .loop import GenerationSettings, recommended_overlap
    from .resume import ClipStore
    from .validation import require_file, require_video_out

    checkpoint = checkpoint_path(a.checkpoint)
    if not checkpoint.is_dir():
        require_file(checkpoint, "checkpoint")
    memo = family_of(checkpoint) == MEMO
    out = require_video_out(a.out)
    store = ClipStore(a.resume_dir) if a.resume_dir else None  # checks that the folder is writable
    image = load_image(a.image)
    conversation = len(a.audio) > 1 or a.face is not None
    boxes = _faces_for(a, image, checkpoint) if conversation else None  # refused here, before a model is loaded
    tracks = [_read_track(path) for path in a.audio]
    if memo:
        from .devices import pick_device, pick_dtype
        from .families.memo import choose_options, emotion_source, open_memo_folder

        device, dtype = pick_device(a.device), None
        dtype = pick_dtype(a.dtype, device)
        tier, options, plan = choose_options(open_memo_folder(checkpoint), tier=a.memory_tier,
                                             state_dtype=a.state_dtype, device=device, size=a.size, dtype=dtype)
        print(f"letstalk: memory tier {tier}; " + "\n  ".join(plan.lines()), file=sys.stderr)
        gen = load_generator(checkpoint, vae=a.vae, speech_encoder=a.speech_encoder, device=device, dtype=dtype,
                             fps=a.fps, size=a.size, options=options)
        if a.sampler not in (None, "euler"):
            raise ValueError(f"MEMO samples with Euler steps of rectified flow; --sampler {a.sampler} does not apply.")
        emotions = emotion_source(a.emotion, a.emotion_encoder, gen)
    else:
        gen = load_generator(checkpoint, dcae_path=a.dcae, speech_encoder_path=a.speech_encoder, device=a.device,
                             dtype=a.dtype)
        emotions = None
    if a.compile:
        from .runtime import compile_forward

        compile_forward(gen.model if not memo else gen.models.diffusion_net,
                        warn=lambda m: print(f"letstalk: warning: {m}", file=sys.stderr))
    recipe = gen.recipe
    steps = recipe.steps if a.steps is None else a.steps
    sampler = recipe.sampler if a.sampler is None else a.sampler
    default_overlap = 0 if memo else recommended_overlap(gen.config.video.clip_frames)  # MEMO: its own plan
    settings = GenerationSettings(sampler=sampler, steps=steps, seed=a.seed,
                                  guidance=GuidanceScales(portrait=a.portrait_scale, audio=a.audio_scale, memory=a.memory_scale),
                                  use_memory=not a.no_memory,
                                  overlap=default_overlap if a.overlap is None else a.overlap,
                                  memory_anchor=RECOMMENDED_MEMORY_ANCHOR if a.memory_anchor is None else a.memory_anchor,
                                  cfg_scale=a.cfg_scale)
    note = "" if a.steps is not None and a.sampler is not None else f" ({recipe.source})"
    comment = f"LetsTalk {checkpoint.name} seed={a.seed}"

    def conditions(portrait) -> dict:
        if not memo:
            return {}
        from .families.memo import portrait_face_embedding

        return {"face_embedding": portrait_face_embedding(portrait, checkpoint, allow_missing=a.allow_no_face),
                "emotions": emotions}

    if not conversation:
        waveform, rate = tracks[0]
        _render(a, gen, settings, image, waveform, rate, out, store, conditions(image), note, comment)
        print(out.resolve())
        return 0
    side = a.size if memo else gen.config.video.height  # the model's square crop
    return _conversation(a, gen, settings, image, boxes, tracks, out, store, conditions, note, comment, side)


def _read_track(path):
    from .audio.waveform import silence_warning
    from .io.audio_file import read_audio

    audio = read_audio(path)
    for warning in (audio.shortfall(), silence_warning(audio.waveform, f"The audio '{audio.path.name}'")):
        if warning:
            print(f"letstalk: warning: {warning}", file=sys.stderr)
    return audio.waveform, audio.rate


def _faces_for(a, image, checkpoint):
    """The face boxes of a conversation, one per ``--audio``: given by hand (``--face "x0,y0,x1,y1; ..."``) in the
    order given, or found by a detector (``--face haar|scrfd``, default: SCRFD for a MEMO folder, else Haar) and
    taken left to right. Overlapping boxes are refused."""
    from .compose import boxes_text, find_faces, parse_boxes, require_apart

    h, w = image.shape[-2:]
    spec = (a.face or ("scrfd" if checkpoint.is_dir() else "haar")).strip()
    if spec in ("haar", "scrfd"):
        boxes = find_faces(_detector(spec, checkpoint), image, scale=a.face_scale)
        print(f"letstalk: {len(boxes)} faces found, left to right: {boxes_text(boxes)}", file=sys.stderr)
        if len(boxes) < len(a.audio):
            raise ValueError(f"{len(a.audio)} speech tracks but {len(boxes)} faces found ({boxes_text(boxes)}); "
                             "give the boxes by hand with --face \"x0,y0,x1,y1; ...\".")
        if len(boxes) > len(a.audio):
            raise ValueError(f"{len(boxes)} faces found ({boxes_text(boxes)}) but {len(a.audio)} speech tracks: give one "
                             "--audio per face (a silent track for a face that only listens), or pick the faces "
                             "with --face \"x0,y0,x1,y1; ...\".")
    else:
        boxes = parse_boxes(spec, w, h)
        if len(boxes) != len(a.audio):
            raise ValueError(f"--face gives {len(boxes)} boxes but there are {len(a.audio)} --audio tracks: give one "
                             "box per track, in the same order.")
    require_apart(boxes)
    return boxes


def _detector(spec: str, checkpoint: Path):
    """``--face haar`` (OpenCV's) or ``--face scrfd`` (the MEMO folder's)."""
    if spec == "haar":
        from .face import haar_detector

        return haar_detector("or give the boxes: --face \"x0,y0,x1,y1; x0,y0,x1,y1\" (photo pixels).")
    from .face import ScrfdDetector

    if not checkpoint.is_dir():
        raise ValueError("--face scrfd uses the SCRFD detector of a MEMO folder; give --checkpoint <MEMO folder>, "
                         "--face haar, or the boxes by hand.")
    return ScrfdDetector.from_folder(checkpoint)


def _conversation(a, gen, settings, image, boxes, tracks, out: Path, store, conditions, note: str,
                  comment: str, side: int) -> int:
    """Several faces in one photo, one speech track each: the tracks are aligned (one rate, padded at the end
    with silence to the longest, so a face listens while the others speak); each face is cropped at the model's
    size and made into its own video beside ``out`` (a resume folder each, under ``--resume-dir``); then all faces
    are streamed into the photo in one pass with the tracks' mix as the sound (:func:`compose.compose_video`),
    and the face videos are removed."""
    from .audio.tracks import align_tracks, mix_tracks
    from .audio.waveform import frame_count
    from .compose import compose_video, crop_face
    from .io.space import estimate_video_bytes, require_space
    from .resume import ClipStore

    waves, rate = align_tracks(tracks)
    mix = mix_tracks(waves)
    seconds = mix.shape[-1] / rate
    photo = image[None] if image.ndim == 3 else image
    h, w = photo.shape[-2:]
    frames = frame_count(mix.shape[-1], rate, gen.config.video.fps)
    need = (estimate_video_bytes(frames, w, h, audio_seconds=seconds, audio_channels=mix.shape[0], crf=a.crf)
            + len(boxes) * estimate_video_bytes(frames, side, side, audio_seconds=seconds, crf=a.crf))
    require_space(out.parent, need, "conversation (each face's video, then the composed one)",
                  "Free some space or choose another --out.")
    print(f"letstalk: a conversation of {len(boxes)} faces, {seconds:.2f} s (the longest track; the others "
          "are padded with silence, so those faces listen)", file=sys.stderr)
    layers, stores = [], []
    try:
        for i, (box, wave) in enumerate(zip(boxes, waves)):
            portrait = crop_face(photo, box, side)[0]
            face_out = out.with_name(f".{out.stem}.face{i + 1}.mp4")
            face_store = ClipStore(store.folder / f"face_{i + 1}") if store else None
            _render(a, gen, settings, portrait, wave, rate, face_out, face_store, conditions(portrait), note,
                    f"{comment} face={i + 1}", label=f"face {i + 1} of {len(boxes)} at {box}: ", keep_store=True)
            if face_store:
                stores.append(face_store)
            layers.append((face_out, box))
        t0 = time.perf_counter()
        n = compose_video(layers, photo, out, feather=a.feather, audio=(mix, rate), metadata={"comment": comment})
        print(f"letstalk: wrote {out} ({n} frames, {len(boxes)} faces pasted into the {w}×{h} photo) in "
              f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)
    finally:
        for face_out, _ in layers:
            face_out.unlink(missing_ok=True)
    if store:
        _finish_store(store, a.keep_resume_dir, stores)
    print(out.resolve())
    return 0


def _render(a, gen, settings, image, waveform, rate, out: Path, store, conditions: dict, recipe_note: str,
            comment: str, label: str = "", keep_store: bool = False) -> int:
    """One face's run: ``image`` (the portrait) and ``waveform`` into the video ``out``, streamed clip by clip, with
    the space checks, the resume folder ``store`` and the messages of a stopped run. Returns the frame count."""
    import torch
    from tqdm import tqdm

    from .io.space import abandon_video, estimate_video_bytes, require_space, same_disk, write_failed
    from .loop import open_video, resume_bytes_per_clip

    t0 = time.perf_counter()
    prepared = gen.prepare(image, waveform, rate, size_mode=a.size_mode, **conditions)
    fp = gen.fingerprint(prepared, settings)
    state = store.load_state(fp) if store else None
    for warning in store.warnings if store else []:
        print(f"letstalk: warning: {warning}", file=sys.stderr)
    done = state.next_clip if state else 0
    n_clips = len(gen.plan(prepared, settings))
    h, w = gen.frame_size(prepared)
    channels = int(waveform.shape[0]) if waveform.ndim > 1 else 1
    need_video = estimate_video_bytes(prepared.num_frames, w, h, audio_seconds=prepared.audio_seconds,
                                      audio_channels=channels, crf=a.crf)
    per_clip = resume_bytes_per_clip(gen, prepared, settings) if store else 0
    need_store = per_clip * (n_clips - done)
    one_disk = store is not None and same_disk(out.parent, store.folder)
    require_space(out.parent, need_video + (need_store if one_disk else 0),
                  "video" + (" and its resume clips" if one_disk else ""),
                  "Free some space or choose another --out" + (" / --resume-dir." if store else "."))
    if store and not one_disk:
        require_space(store.folder, need_store, "resume clips", "Free some space or choose another --resume-dir.")
    kept = (f"The {done} clips finished before are kept in '{store.folder}'; the run continues from there."
            if store else "Use --resume-dir to keep finished clips when a run stops.")
    print(f"letstalk: {label}{prepared.audio_seconds:.2f} s of audio -> {prepared.num_frames} frames at {gen.config.video.fps:g} fps, "
          f"{n_clips} clips of {gen.config.video.clip_frames} sharing {settings.overlap}, {settings.steps} {settings.sampler} steps{recipe_note}, "
          f"device {gen.device}, {torch.get_num_threads()} threads"
          + (f"; resuming after clip {done}" if done else ""), file=sys.stderr)
    steps = settings.steps
    bar = tqdm(total=n_clips * steps, initial=done * steps, unit="step", desc="clips", dynamic_ncols=True)
    share = CoreShare() if a.share_cores else None  # by default the pool is fixed: the result is exact
    current = {"clip": -1}

    def on_step(info) -> None:
        if share and info.clip != current["clip"]:
            current["clip"] = info.clip
            share.update()
        bar.set_description(f"clip {info.clip + 1}/{info.clips} (memory {info.memory_frames} frames)")
        bar.update(1)

    writer, written = None, 0
    try:
        with run_threads(state.threads if state else None):
            writer = open_video(out, gen.config.video.fps, waveform, rate, settings.overlap, crf=a.crf,
                                metadata={"comment": comment})
            if store:
                for frames in store.stored_clips(done):
                    written += _write(writer, frames, out)
            clips = gen.iter_clips(prepared, settings, state=state, on_step=on_step,
                                   replay=store.replay(state) if store else None)
            for clip, latents, new_state in clips:
                frames = torch.cat(list(gen.decode_clip(latents, clip, settings.decode_chunk)))
                written += _write(writer, frames, out, clip.start + clip.emitted, prepared.num_frames, need_video)
                if store:
                    try:
                        store.save(clip.index, frames, new_state, latents)  # written in the background
                    except OSError as e:  # the previous clip's write failed
                        raise write_failed(e, store.folder, remaining=per_clip * (n_clips - clip.index),
                                           kept=f"Clips finished before are kept in '{store.folder}'.") from e
                    kept = (f"The {clip.index + 1} finished clips are kept in '{store.folder}'; the run continues "
                            "from there.")
            if store:
                store.flush()
            writer.close()
    except BaseException as e:
        bar.close()
        try:
            if store:
                store.close()  # an interrupted run keeps every clip it finished
        except OSError as store_error:
            print(f"letstalk: warning: the last clip could not be kept: {store_error}", file=sys.stderr)
        size = _size(out)
        partial = abandon_video(writer, out, keep_partial=a.keep_partial) if writer is not None else None
        note = f" The part made so far is kept, playable, as '{partial}'." if partial else ""
        if isinstance(e, OSError) and not isinstance(e, KeyboardInterrupt):
            where = getattr(e, "path", None) or getattr(e, "filename", None) or out
            rest = max(need_video - size, size / written * (prepared.num_frames - written) if written else 0)
            if one_disk:  # the clips still to keep go there too
                rest += per_clip * (n_clips - store_done(store, n_clips))
            raise write_failed(e, where, remaining=int(rest), kept=kept + note) from e
        if note:
            print(f"letstalk:{note}", file=sys.stderr)
        raise
    bar.close()
    if store:
        store.close()
    dt = time.perf_counter() - t0
    print(f"letstalk: wrote {out} ({prepared.num_frames} frames, {prepared.audio_seconds:.2f} s with sound) "
          f"in {dt:.1f} s ({dt / prepared.num_frames:.3f} s/frame)", file=sys.stderr)
    if store and not keep_store:  # a conversation keeps each face's clips until the composed video is written
        _finish_store(store, a.keep_resume_dir)
    return prepared.num_frames


def _finish_store(store, keep: bool, faces=()) -> None:
    """The video is complete: remove the resume clips (and those of its faces' folders), or keep them
    (``--keep-resume-dir``)."""
    if keep:
        store.close()
        print(f"letstalk: the resume clips in {store.folder} are kept (--keep-resume-dir); they can be deleted",
              file=sys.stderr)
        return
    freed = sum(face.remove() for face in faces) + store.remove()
    print(f"letstalk: the video is complete; removed the resume clips from {store.folder} "
          f"({freed / 2**20:.1f} MB freed)", file=sys.stderr)


def store_done(store, total: int) -> int:
    """Clips the resume folder holds (its consecutive clip files from 0)."""
    n = 0
    while n < total and store.clip_path(n).exists():
        n += 1
    return n


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _write(writer, frames, out: Path, done: int | None = None, total: int | None = None, estimate: int = 0) -> int:
    """Write one clip's frames (a failed write is reported by the caller, which knows what is kept); then stop now
    if the rest of the video will not fit (:func:`~letstalk_core.io.space.require_room_for_the_rest`)."""
    from .io.space import require_room_for_the_rest

    writer.write(frames)
    require_room_for_the_rest(out, done or 0, total or 0, estimate)
    return int(frames.shape[0])


def cmd_info(a) -> int:
    import json

    from .families.letstalk import INFERENCE_KEY, count_parameters, inference_recipe, load_transformer, read_checkpoint
    from .family import MEMO, family_of

    path = checkpoint_path(a.checkpoint)
    if family_of(path) == MEMO:
        return memo_info(path, a.json, a.size)
    config, groups, meta = read_checkpoint(path)
    model = load_transformer(config, groups["dit"])
    recipe = inference_recipe(config, meta)
    if a.json:
        def parse(v):
            try:
                return json.loads(v)
            except ValueError:
                return v

        print(json.dumps({"checkpoint": str(path), "parameters": count_parameters(model),
                          "bundled": {"dcae": bool(groups["dcae"]), "speech_encoder": bool(groups["speech"])},
                          "inference": {"sampler": recipe.sampler, "steps": recipe.steps, "source": recipe.source},
                          "metadata": {k: parse(v) for k, v in meta.items()}, "machine": machine_summary()},
                         indent=2))
        return 0
    print(f"checkpoint: {path}")
    print(f"transformer: depth {config.dit.depth}, width {config.dit.hidden_size}, portrait fusion {config.dit.portrait_fusion}, "
          f"audio fusion {config.dit.audio_fusion}; {count_parameters(model) / 1e6:.2f} M parameters")
    print(f"video: {config.video.width}x{config.video.height} at {config.video.fps:g} fps, clips of {config.video.clip_frames}, "
          f"memory {config.memory.frames} frames; diffusion {config.diffusion.objective}; speech encoder {config.speech_encoder.kind}")
    print(f"bundled: DC-AE {'yes' if groups['dcae'] else 'no'}, speech encoder {'yes' if groups['speech'] else 'no'}")
    print(f"sampling: {recipe.steps} {recipe.sampler} steps ({recipe.source})")
    for line in training_summary(meta):
        print(line)
    for k, v in meta.items():
        if k not in ("letstalk_config", "letstalk_training", "letstalk_format", INFERENCE_KEY):
            print(f"{k}: {v if len(v) <= 200 else v[:197] + '...'}")
    print(machine_line(machine_summary()))
    print("(letstalk info --json prints the full config and training recipe)")
    return 0


def machine_summary() -> dict:
    """What ``--device auto`` and ``--dtype auto`` pick on this machine, and why."""
    from .devices import native_bf16, pick_device

    device = pick_device("auto")
    bf16, why = native_bf16(device)  # what pick_dtype("auto", device) decides by
    return {"device": str(device), "dtype": "bf16" if bf16 else "fp32", "why": why}


def machine_line(m: dict) -> str:
    return f"this machine: --device auto → {m['device']}, --dtype auto → {m['dtype']} ({m['why']})"


def memo_info(path: Path, as_json: bool, size: int = 512) -> int:
    """``letstalk info <MEMO folder>``: the folder checked (configs and headers), what it holds, the recipe,
    and the memory plan of each tier at ``size``² (CUDA, bf16; and this machine's CPU)."""
    import json

    import torch

    from .devices import pick_dtype
    from .families.memo import TIERS, MemoConfig, describe_memo_folder, free_memory, open_memo_folder, plan_memo

    folder = open_memo_folder(path)
    info = describe_memo_folder(folder)
    cpu_dtype = pick_dtype("auto", torch.device("cpu"))
    info["memory_plans"] = {
        "cuda_bf16": {n: plan_memo(folder, size=size, dtype=torch.bfloat16, device="cuda", options=o).as_dict()
                      for n, o in TIERS.items()},
        "cpu": {"dtype": str(cpu_dtype).replace("torch.", ""), "available_bytes": free_memory(torch.device("cpu")),
                **{n: plan_memo(folder, size=size, dtype=cpu_dtype, device="cpu", options=o).as_dict()
                   for n, o in TIERS.items()}}}
    recipe = MemoConfig()
    info["recipe"] = {"size": recipe.video.width, "fps": recipe.video.fps, "clip_frames": recipe.video.clip_frames,
                      "past_frames": recipe.memory.frames, "steps": recipe.steps, "cfg_scale": recipe.cfg_scale,
                      "sampler": "euler (rectified flow)"}
    info["machine"] = machine_summary()
    if as_json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"MEMO folder: {path} (every part's config and tensors checked)")
    total = 0
    for name, p in info["parts"].items():
        total += p["parameters"]
        print(f"  {name:26} {p['parameters'] / 1e6:10.2f} M parameters, {'/'.join(p['dtypes'])}, "
              f"{p['file_bytes'] / 2**20:9.1f} MiB")
    print(f"  {'total':26} {total / 1e9:10.3f} B parameters")
    faces = info["face_models"]
    print("face analysis (misc/face_analysis/models): " + ", ".join(
        f"{m} {'present' if ok else 'MISSING'}" for m, ok in faces.items()))
    r = info["recipe"]
    print(f"recipe: {r['size']}² at {r['fps']:g} fps, clips of {r['clip_frames']}, memory of {r['past_frames']} past "
          f"frames, {r['steps']} {r['sampler']} steps, CFG {r['cfg_scale']}")
    print("runs with: --vae (sd-vae-ft-mse), --speech-encoder (wav2vec2-base-960h), and for --emotion auto "
          "--emotion-encoder (emotion2vec_plus_large); see the README's MEMO section")
    print(f"memory plans at {size}² (peak device memory; `--memory-tier` chooses, auto takes the fastest that fits):")
    for n, p in info["memory_plans"]["cuda_bf16"].items():
        print(f"  CUDA, bf16, tier {n:5} {p['peak'] / 2**30:6.2f} GiB  (largest: {p['largest_stage']}; "
              f"{TIERS[n].describe()})")
    cpu = info["memory_plans"]["cpu"]
    for n in TIERS:
        p = cpu[n]
        print(f"  this CPU, {cpu['dtype']}, tier {n:5} {p['peak'] / 2**30:6.2f} GiB  (largest: {p['largest_stage']})")
    print(f"  this CPU has {cpu['available_bytes'] / 2**30:.1f} GiB available")
    print(machine_line(info["machine"]))
    return 0


def training_summary(meta: dict[str, str]) -> list[str]:
    """A few lines on how the model was trained, from its ``letstalk_training`` metadata."""
    import json

    raw = meta.get("letstalk_training")
    if not raw:
        return []
    try:
        rec = json.loads(raw)
    except ValueError:
        return ["training: (unreadable letstalk_training metadata)"]
    cfg = rec.get("train_config", {})
    lines = [f"training: step {rec.get('step', '?')} of {cfg.get('steps', '?')}, batch {cfg.get('batch_size', '?')}, "
             f"lr {cfg.get('lr', '?')}, EMA {cfg.get('ema_decay', '?')}, precision {cfg.get('precision', '?')}, "
             f"seed {cfg.get('seed', '?')}"]
    prov = rec.get("provenance") or {}
    data = prov.get("train_data")
    if data:
        lines.append(f"training data: {data.get('count', '?')} procedural samples x {data.get('seconds', '?')} s "
                     f"(seed {data.get('seed', '?')}); recipe in {prov.get('script', '?')}, "
                     f"{len(prov.get('commands', []))} commands")
    return lines


def cmd_init(a) -> int:
    import torch

    from .autoencoder.dc_ae import DCAE
    from .families.letstalk import LetsTalkTransformer, get_preset, save_checkpoint

    config = get_preset(a.preset)
    torch.manual_seed(a.seed)
    model = LetsTalkTransformer(config)
    if a.perturb:
        with torch.no_grad():  # zero-initialised layers would make an untrained model output constant noise
            for p in model.parameters():
                p.add_(torch.randn_like(p) * a.perturb)
    dcae = DCAE(config.dcae) if a.preset == "tiny" else None
    save_checkpoint(a.out, config, model, dcae=dcae, extra_metadata={"note": "UNTRAINED random weights", "seed": str(a.seed)})
    print(Path(a.out).resolve())
    return 0


def cmd_params(a) -> int:
    import torch

    from .families.letstalk import LetsTalkTransformer, count_parameters, get_preset
    from .families.letstalk.config import DIT_PRESETS, PAPER_PARAMETERS

    print(f"{'preset':<12} {'backbone':>10} {'+audio proj':>12} {'paper':>8}")
    for name in DIT_PRESETS:
        with torch.device("meta"):
            model = LetsTalkTransformer(get_preset(name))
        total = count_parameters(model)
        proj = count_parameters(model.audio_projector)
        print(f"{name:<12} {(total - proj) / 1e6:>9.1f}M {total / 1e6:>11.1f}M {PAPER_PARAMETERS.get(name, '-'):>8}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="letstalk", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_generate(sub)
    p = sub.add_parser("info", help="describe a checkpoint or a MEMO folder")
    p.add_argument("checkpoint", help="a LetsTalk checkpoint (.safetensors), 'demo', or a MEMO model folder")
    p.add_argument("--json", action="store_true", help="print everything, with the full config and training recipe, as JSON")
    p.add_argument("--size", type=int, default=512, help="MEMO: the frame side the memory plans are made for")
    p = sub.add_parser("init", help="write an UNTRAINED model of a preset (to try the pipeline)")
    p.add_argument("--preset", default="tiny", help="preset name (letstalk params lists them)")
    p.add_argument("--out", required=True, help="output .safetensors")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    p.add_argument("--perturb", type=float, default=0.02, help="std of noise added to all weights (0 = DiT init)")
    sub.add_parser("params", help="parameter counts of the presets")
    _add_train(sub)
    _add_train_dcae(sub)
    from .data.preprocess import add_preprocess_command
    from .data.procedural import add_synth_command
    from .eval.report import add_eval_command

    add_synth_command(sub)
    add_preprocess_command(sub)
    add_eval_command(sub)
    from .demo import add_demo_command

    add_demo_command(sub)
    return parser


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a LetsTalk model on preprocessed shards (also under torchrun)")
    p.add_argument("config", help="training config (.json, or .yaml with PyYAML); see letstalk_core/train/config.py")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value (JSON-parsed when possible), e.g. --set steps=200")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (the loss log is still written)")
    p.set_defaults(func=cmd_train)


def cmd_train(a) -> int:
    from .train.config import load_train_config
    from .train.loop import EXPORT_NAME, LOG_NAME, train

    cfg = load_train_config(a.config, a.set)
    record = train(cfg, progress=not a.no_progress)
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_rank() == 0:
        out = Path(cfg.out)
        print(f"trained to step {record.get('step', cfg.steps)}: loss {record.get('loss', float('nan')):.4f}")
        print(f"model (EMA weights, DC-AE bundled): {out / EXPORT_NAME}\nloss log: {out / LOG_NAME}")
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


def _add_train_dcae(sub) -> None:
    p = sub.add_parser("train-dcae", help="train the small demo DC-AE on video frames")
    p.add_argument("videos", nargs="+", help="video files or folders")
    p.add_argument("--out", required=True, help="output .safetensors")
    p.add_argument("--preset", default="demo", help="LetsTalk preset whose DC-AE and frame size are trained")
    p.add_argument("--steps", type=int, default=2000, help="optimisation steps")
    p.add_argument("--batch-size", type=int, default=32, help="frames per step")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate")
    p.add_argument("--frame-stride", type=int, default=3, help="keep every n-th frame of each video")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and the frame sampling")
    add_threads_option(p)
    p.set_defaults(func=cmd_train_dcae)


def cmd_train_dcae(a) -> int:
    from .train.autoencoder import AutoencoderTrainConfig, train_autoencoder

    cfg = AutoencoderTrainConfig(videos=tuple(a.videos), out=a.out, preset=a.preset, steps=a.steps,
                                 batch_size=a.batch_size, lr=a.lr, frame_stride=a.frame_stride, seed=a.seed,
                                 threads=a.threads)
    summary = train_autoencoder(cfg)
    print(f"DC-AE: {a.out}  (PSNR {summary['psnr_db']:.2f} dB on {summary['frames_in_pool']} training frames, "
          f"scaling factor {1 / summary['latent_std']:.4f}, {summary['seconds']:.0f} s)")
    print(f"model config with this DC-AE: {Path(a.out).with_suffix('.model_config.json')}")
    return 0


COMMANDS = {"generate": cmd_generate, "info": cmd_info, "init": cmd_init, "params": cmd_params}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    prepare_threads(getattr(args, "threads", 0))  # before torch starts its thread pool
    try:
        apply_threads(getattr(args, "threads", 0))
        func = COMMANDS.get(args.command) or args.func
        return func(args)
    except (ValueError, TypeError, OSError) as e:  # OSError: a disk, permission or FFmpeg I/O failure
        print(f"letstalk {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("letstalk: interrupted" + (" (finished clips are kept in --resume-dir)" if getattr(args, "resume_dir", None) else ""),
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
