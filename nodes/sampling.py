"""Linear DiT Sampler (one clip) and Memory Bank Loop (the whole audio as clips with the memory bank)."""
from __future__ import annotations

from comfy_api.latest import io

from . import common, host
from .types import AudioFeatures, socket_types

Model, DCAE, Speech, Features, _ = socket_types()
SAMPLERS = ["auto", "euler", "ddim", "ddpm"]


def _sampling_inputs(default_steps: int) -> list:
    return [
        io.Combo.Input("sampler", options=SAMPLERS, default="auto",
                       tooltip="auto: Euler for rectified-flow models (the demo model), DDIM for DDPM models."),
        io.Int.Input("steps", default=default_steps, min=1, max=1000,
                     tooltip="Denoising steps per clip. The demo model is good at 10; MEMO's recipe is 20."),
        io.Int.Input("seed", default=0, min=0, max=2**63 - 1, control_after_generate=True,
                     tooltip="Noise seed. Each clip draws its own noise from (seed, clip index), so any clip can be "
                             "re-made alone and a resumed run equals an uninterrupted one."),
        io.Float.Input("portrait_guidance", default=1.0, min=0.0, max=30.0, step=0.05,
                       tooltip="Portrait guidance scale s_p (1 = off). Above 1 pushes appearance toward the portrait; "
                               "costs one extra batched branch. LetsTalk models only (MEMO has one scale: "
                               "audio_guidance)."),
        io.Float.Input("audio_guidance", default=1.0, min=0.0, max=30.0, step=0.05,
                       tooltip="Audio guidance scale s_a (1 = off). Above 1 exaggerates lip motion. MEMO: its one "
                               "guidance scale over all conditions (3.5 in its recipe)."),
    ]


def _settings(sampler, steps, seed, portrait_guidance, audio_guidance, **kw):
    from ..letstalk_core.diffusion import GuidanceScales
    from ..letstalk_core.loop import GenerationSettings

    return GenerationSettings(sampler=sampler, steps=int(steps), seed=int(seed),
                              guidance=GuidanceScales(portrait=float(portrait_guidance), audio=float(audio_guidance)), **kw)


def _memory_text(plan, index: int, memory_frames: int, use_memory: bool) -> str:
    if memory_frames == 0:
        return "no memory"
    if index == 0 or not use_memory:
        return f"portrait ×{memory_frames}"
    end = plan[index].start
    return f"frames {max(0, end - memory_frames) + 1}–{end}"


class LetsTalkSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LetsTalkSampler",
            display_name="LetsTalk Linear DiT Sampler",
            category="LetsTalk",
            description="Samples ONE clip of the video (clip_frames frames, e.g. 16) from the portrait latent, the audio "
                        "features of that clip and an optional memory (the previous clip). Chain several with "
                        "'memory' for a manual long video, or use Memory Bank Loop.",
            inputs=[
                Model.Input("model", tooltip="The LetsTalk transformer from LetsTalk Model Loader. How it fuses the "
                                             "portrait and the audio is fixed by its training (`letstalk info` prints it)."),
                io.Latent.Input("portrait", tooltip="The portrait's DC-AE latent (DC-AE Encode at the model's size)."),
                Features.Input("audio_features", tooltip="From LetsTalk Audio Encoder with this model."),
                io.Int.Input("clip_index", default=0, min=0, max=100000,
                             tooltip="Which clip of the audio: clip k covers frames [k·clip_frames, (k+1)·clip_frames)."),
                *_sampling_inputs(10),
                io.Latent.Input("memory", optional=True,
                                tooltip="Optional: the previous clip's latents; its last memory frames condition this clip "
                                        "(LetsTalk memory bank). Empty: the portrait is the memory (clip 0)."),
            ],
            outputs=[io.Latent.Output("clip", tooltip="The clip's clean latents {'samples': [1, C, frames, h, w]}, "
                                                      "padding frames of the last clip removed.")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, portrait, audio_features, clip_index, sampler, steps, seed, portrait_guidance,
                audio_guidance, memory=None) -> io.NodeOutput:
        from ..letstalk_core.families.letstalk import LetsTalkGenerator
        from ..letstalk_core.memory import initial_memory, update_memory

        common.require_letstalk(model, "LetsTalk Linear DiT Sampler (one clip of a LetsTalk model)")
        if not isinstance(audio_features, AudioFeatures):
            raise ValueError("connect LetsTalk Audio Encoder to 'audio_features'.")
        if abs(audio_features.fps - model.config.video.fps) > 1e-6:
            raise ValueError(f"the audio features were made at {audio_features.fps:g} fps but '{model.name}' runs at "
                             f"{model.config.video.fps:g} fps; set the Audio Encoder's fps to 0 (the model's).")
        settings = _settings(sampler, steps, seed, portrait_guidance, audio_guidance)
        host.load_to_device(model.patcher)
        gen = LetsTalkGenerator(model.config, model.transformer, None, None, device=model.patcher.load_device,
                                dtype=model.dtype)
        latent = portrait["samples"].float()
        prepared = gen.assemble(latent[:1], audio_features.features, audio_features.num_frames, audio_features.seconds)
        if clip_index >= len(prepared.plan):
            raise ValueError(f"clip_index {clip_index} is past the end: the audio gives {len(prepared.plan)} clips "
                             f"(0…{len(prepared.plan) - 1}).")
        clip = prepared.plan[clip_index]
        dev = gen.device
        bank = initial_memory(prepared.portrait_latent.to(dev), model.config.memory.frames)
        if memory is not None:
            prev = memory["samples"].float().to(dev)
            if prev.ndim != 5:
                raise ValueError(f"'memory' must be a clip from this sampler ([1, C, F, h, w]); got {tuple(prev.shape)}.")
            bank = update_memory(bank, prev)
        progress = host.Progress(cls.hidden.unique_id, settings.steps)
        progress.start_clip(clip.index, clip.total, "given clip" if memory is not None else
                            _memory_text(prepared.plan, 0, model.config.memory.frames, True))
        prepared.portrait_latent = prepared.portrait_latent.to(dev)
        out = gen.sample_clip(prepared, clip, bank, settings, on_step=progress.step)
        progress.finish()
        return io.NodeOutput({"samples": out[:, :, :clip.frames].float().cpu()},
                             ui=common.done_ui(f"clip {clip.index + 1} of {clip.total}"))


class LetsTalkMemoryBankLoop(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LetsTalkMemoryBankLoop",
            display_name="LetsTalk Memory Bank Loop",
            category="LetsTalk",
            description="The whole speech track as consecutive clips, each conditioned on the last frames of the one "
                        "before (LetsTalk memory bank), decoded in chunks. The video has exactly ceil(seconds × fps) "
                        "frames; wire images, audio and fps into Create Video → Save Video.",
            inputs=[
                Model.Input("model", tooltip="LetsTalk Model Loader (the demo model works with nothing else) or LetsTalk "
                                             "MEMO Loader output."),
                io.Image.Input("portrait", tooltip="The face photo, ideally a square head-and-shoulders crop (LetsTalk "
                                                   "Face Crop makes one from any photo). Centre-cropped to the model's size."),
                io.Audio.Input("audio", tooltip="The speech track, any length."),
                *_sampling_inputs(10),
                io.Boolean.Input("use_memory", default=True,
                                 tooltip="Memory bank on: each clip sees the last frames of the previous one (smooth, "
                                         "consistent). Off: every clip sees only the portrait (the ablation)."),
                io.Int.Input("decode_chunk", default=8, min=1, max=256,
                             tooltip="Frames decoded at a time; memory stays flat whatever the audio's length."),
                io.String.Input("resume_folder", default="",
                                tooltip="Optional: a folder under ComfyUI's output (e.g. letstalk/run1). Each finished clip "
                                        "is written there; running again with the same inputs resumes after the last "
                                        "finished clip. Empty: keep nothing on disk."),
                io.Int.Input("overlap", default=4, min=0, max=15,
                             tooltip="Frames consecutive clips share: each clip starts this many frames before the "
                                     "previous one ends and the shared frames are crossfaded, so a seam becomes a short "
                                     "blend. 4 (a quarter of a 16-frame clip) makes the demo model's seams as smooth as "
                                     "its motion, for a third more sampling. 0: the paper's side-by-side clips (and "
                                     "MEMO's). At most (clip_frames - 1) // 2."),
                io.Float.Input("memory_anchor", default=0.2, min=0.0, max=1.0, step=0.05,
                               tooltip="Share of the portrait mixed into each clip's memory. The model's own small errors "
                                       "otherwise pile up clip after clip (the face slowly decays over a minute); 0.2 keeps "
                                       "a long run as clean as its first seconds. 0: the paper's memory; 1: every clip "
                                       "starts from the portrait. LetsTalk models only (MEMO's memory is its attention "
                                       "state)."),
                DCAE.Input("dcae", optional=True, tooltip="Optional: another DC-AE. Empty: the one bundled with the model."),
                io.MultiType.Input("speech_encoder", types=[Speech, io.AudioEncoder], optional=True,
                                   tooltip="Optional: a wav2vec2 encoder. Empty: the model's own speech front end."),
            ],
            outputs=[
                io.Image.Output("images", tooltip="All frames, ceil(seconds × fps) of them, held in RAM (about 3 MB a "
                                                  "frame at 512²): for short runs and graphs that process frames. "
                                                  "Empty when only 'video' is connected."),
                io.Audio.Output("audio", tooltip="The audio the frames cover (the track padded with silence to "
                                                 "frames / fps seconds)."),
                io.Float.Output("fps", tooltip="The model's frame rate, for Create Video."),
                io.Video.Output("video", tooltip="The frames with the sound as an mp4, written to ComfyUI's temp "
                                                 "folder as they are decoded: memory stays flat however long the "
                                                 "speech. Connect it to Save Video (or Paste Back) for long runs."),
            ],
            hidden=[io.Hidden.unique_id, io.Hidden.prompt],
        )

    @classmethod
    def execute(cls, model, portrait, audio, sampler, steps, seed, portrait_guidance, audio_guidance,
                use_memory=True, decode_chunk=8, resume_folder="", overlap=4, memory_anchor=0.2, dcae=None,
                speech_encoder=None) -> io.NodeOutput:
        import torch

        from ..letstalk_core.io import uint8_to_tensor
        from ..letstalk_core.resume import ClipStore
        from ..letstalk_core.runtime import release_freed_memory, run_threads

        wave, rate = common.audio_waveform(audio)
        silent = common.warn_if_silent(wave)
        image = common.image_to_core(portrait, "portrait")[:1]
        memo = common.is_memo(model)
        if memo and sampler not in ("auto", "euler"):
            raise ValueError(f"MEMO samples with Euler steps of rectified flow; set sampler to auto or euler (got {sampler}).")
        settings = _settings("euler" if memo else sampler, steps, seed, portrait_guidance, audio_guidance,
                             decode_chunk=int(decode_chunk), use_memory=bool(use_memory), overlap=int(overlap),
                             memory_anchor=float(memory_anchor), cfg_scale=float(audio_guidance) if memo else None)
        if memo:
            gen, tier, plan = common.make_memo_generator(model, int(decode_chunk))
            print(f"LetsTalk: MEMO memory tier {tier}: " + "\n  ".join(plan.lines()))
            prepared = gen.prepare(image[0], wave, rate,
                                   **common.memo_conditions(model, gen, image[0]))
        else:
            gen = common.make_generator(model, dcae, speech_encoder)
            prepared = gen.prepare(image[0], wave, rate)
        plan = gen.plan(prepared, settings)  # refuses an overlap too large for the model's clips
        cfg = model.config
        n, h, w = prepared.num_frames, cfg.video.height, cfg.video.width
        fps = float(cfg.video.fps)
        # Make only what the graph takes: the IMAGE batch grows with the audio, the streamed video does not.
        used = common.consumed_outputs(cls.hidden.prompt, cls.hidden.unique_id)
        keep_images = used is None or 0 in used
        stream_video = used is None or 3 in used
        common.check_host_memory(n * h * w * 3 * 4 if keep_images else 0, f"{n} frames of {w}×{h}",
                                 hint="Connect the loop's 'video' output to Save Video instead of 'images': it is "
                                      "written to disk as it is made, in constant memory.")
        store = ClipStore(host.inside_output(resume_folder)) if resume_folder.strip() else None
        state = store.load_state(gen.fingerprint(prepared, settings)) if store else None
        for warning in store.warnings if store else []:
            common.log_warning(warning)
        done = state.next_clip if state else 0
        covered = common.covered_audio(audio, n, fps)

        images = torch.empty((n if keep_images else 0, h, w, 3), dtype=torch.float32)
        sink = _FrameSink(images if keep_images else None, covered, fps, overlap, n)
        if stream_video:
            from ..letstalk_core.io import estimate_video_bytes, require_space

            path = host.temp_file("letstalk_loop", ".mp4")
            sink.need = estimate_video_bytes(n, w, h, audio_seconds=n / fps)
            require_space(path.parent, sink.need, "loop's video (written as it is made)",
                          "Free space on the disk of ComfyUI's temp folder, or start ComfyUI with --temp-directory "
                          "on a larger disk.")
            if store:
                sink.kept = f"Finished clips are kept in '{store.folder}': queue the same prompt again to continue."
            sink.open_video(path)
        progress = host.Progress(cls.hidden.unique_id, len(plan) * settings.steps, common.preview_decoder(gen))
        f = cfg.memory.frames
        current = {"clip": -1}

        def on_step(info) -> None:
            if info.clip != current["clip"]:
                current["clip"] = info.clip
                progress.start_clip(info.clip, info.clips, _memory_text(plan, info.clip, f, settings.use_memory))
            progress.step(info)

        threads = run_threads(state.threads if state else None)  # a resume splits its sums as the first run did
        try:
            threads.__enter__()
            for clip, frames in zip(plan[:done], store.stored_clips(done) if store else []):
                sink.write(clip.start, uint8_to_tensor(frames))
            progress.skip(done * settings.steps)
            clips = gen.iter_clips(prepared, settings, state=state, on_step=on_step,
                                   replay=store.replay(state) if store else None)
            for clip, latents, new_state in clips:
                pos = clip.start
                decoded = []
                for chunk in gen.decode_clip(latents, clip, settings.decode_chunk):
                    sink.write(pos, chunk)
                    pos += chunk.shape[0]
                    if store:
                        decoded.append(chunk)
                sink.clip_done()
                if store:
                    store.save(clip.index, torch.cat(decoded), new_state, latents)  # written in the background
        except BaseException:
            sink.abort()
            raise
        finally:
            threads.__exit__(None, None, None)
            if store:
                store.close()  # a cancelled run keeps every clip it finished
            release_freed_memory()  # a server runs prompt after prompt: hand the run's freed heap back
        video = sink.finish()
        progress.finish()
        summary = f"{n} frames, {len(plan)} clips" + (f"; warning: {silent}" if silent else "")
        return io.NodeOutput(images, covered, fps, video, ui=common.done_ui(summary))


class _FrameSink:
    """Where the loop's decoded frames go: the IMAGE batch (when the graph takes it) and/or an mp4 with
    the covered sound written as the frames come (when it takes the video)."""

    def __init__(self, images, covered: dict, fps: float, overlap: int, frames: int):
        self.images, self.covered, self.fps, self.overlap, self.frames = images, covered, fps, overlap, frames
        self.writer = self.path = None
        self.need, self.kept = None, ""

    def open_video(self, path) -> None:
        from ..letstalk_core.loop import open_video

        self.path = path
        self.writer = open_video(path, self.fps, self.covered["waveform"][0], int(self.covered["sample_rate"]),
                                 self.overlap)

    def write(self, start: int, frames) -> None:
        """Frames ``[k, 3, H, W]`` in [-1, 1] for video positions ``start … start + k - 1`` (in order). A failed
        write (a full temp disk) is reported with the path, the free space and what the rest needs."""
        if self.images is not None:
            self.images[start:start + frames.shape[0]] = common.core_to_image(frames)
        if self.writer is not None:
            try:
                self.writer.write(frames)
            except OSError as e:
                raise self._failed(e) from e

    def clip_done(self) -> None:
        """After each clip: a disk that will not hold the rest of the video stops the run now."""
        if self.writer is not None:
            from ..letstalk_core.io import require_room_for_the_rest

            try:
                require_room_for_the_rest(self.path, self.writer.frames_written, self.frames, self.need or 0)
            except OSError as e:
                raise self._failed(e) from e

    def _failed(self, error: OSError):
        from ..letstalk_core.io import write_failed

        left = self.need * (self.frames - self.writer.frames_written) // self.frames if self.need else None
        return write_failed(error, self.path, remaining=left,
                            kept=self.kept or "Set a resume_folder to keep finished clips when a run stops.")

    def abort(self) -> None:
        """Cancelled or failed: close and remove the unfinished file (a full disk may not even let it close)."""
        if self.writer is not None:
            from ..letstalk_core.io import abandon_video

            abandon_video(self.writer, self.path)

    def finish(self):
        if self.writer is None:
            return None
        try:
            self.writer.close()  # the encoder's last frames and the MP4 index: this write can fail too
        except OSError as e:
            failed = self._failed(e)
            self.abort()
            raise failed from e
        return common.video_output(self.path)


NODES = [LetsTalkSampler, LetsTalkMemoryBankLoop]
