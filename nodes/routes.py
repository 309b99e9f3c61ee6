"""HTTP route for the web extension: ``GET /letstalk/plan?audio=<Load Audio value>&ckpt=<checkpoint>&overlap=<m>``
(``audio`` repeated for the tracks of a Conversation Audio node: the plan of the longest)
→ the plan of a Memory Bank Loop run (seconds, fps, frames, clips) before anything runs."""
from __future__ import annotations

import logging

log = logging.getLogger("letstalk")


def read_config(ckpt_path: str):
    """A checkpoint's config from its safetensors header only (no tensor is read)."""
    from safetensors import safe_open

    from ..letstalk_core.families.letstalk import CONFIG_KEY, LetsTalkConfig

    with safe_open(ckpt_path, framework="pt") as f:
        meta = f.metadata() or {}
    if CONFIG_KEY not in meta:
        raise ValueError(f"'{ckpt_path}' is not a LetsTalk checkpoint (no '{CONFIG_KEY}' metadata).")
    return LetsTalkConfig.from_json(meta[CONFIG_KEY])


def plan(audio_paths: list[str], ckpt_path: str | None, overlap: int = 0, memo_fps: float | None = None) -> dict:
    """The clip plan of a loop run: for a LetsTalk checkpoint, or (``memo_fps``) for MEMO at that fps. Several
    ``audio_paths`` are the tracks of a Conversation Audio node, whose loops run for the longest of them."""
    from ..letstalk_core.audio import frame_count, silence_warning
    from ..letstalk_core.io import read_audio
    from ..letstalk_core.loop import max_overlap, plan_clips

    if memo_fps is not None:
        from ..letstalk_core.families.memo import MemoConfig, MemoVideo

        config = MemoConfig(video=MemoVideo(fps=float(memo_fps)))
    else:
        config = read_config(ckpt_path)
    tracks = [read_audio(p) for p in audio_paths]
    audio = max(tracks, key=lambda t: t.waveform.shape[-1] / t.rate)  # the others are padded to it
    wave, rate = audio.waveform, audio.rate
    warnings = [w for w in (audio.shortfall(), silence_warning(wave, "The audio")) if w]
    frames = max(frame_count(int(t.waveform.shape[-1]), t.rate, config.video.fps) for t in tracks)
    clips = plan_clips(frames, config.video.clip_frames, overlap)
    return {"seconds": wave.shape[-1] / rate, "samples": int(wave.shape[-1]), "sample_rate": rate,
            "fps": float(config.video.fps), "frames": frames, "clips": len(clips),
            "clip_frames": config.video.clip_frames, "overlap": overlap, "memory_frames": config.memory.frames,
            "last_clip_frames": clips[-1].frames, "max_overlap": max_overlap(config.video.clip_frames),
            "warnings": warnings}


def memo_memory_text(query: dict) -> str:
    """One line for the plan panel: the tier a MEMO run will use and its planned peak, or why it does not
    fit (never raises: a plan the route cannot make is said in the line)."""
    from . import host
    from .memo import memo_folder_path

    try:
        from ..letstalk_core.families.memo import choose_options, open_memo_folder

        device = host.torch_device()
        dtype = host.weight_dtype(query.get("weight_dtype") or "auto", device)
        folder = open_memo_folder(memo_folder_path(query.get("memo_folder", "")))
        size = int(float(query.get("size") or 512))
        tier, _, p = choose_options(folder, tier=query.get("memory_tier") or "auto",
                                    state_dtype=query.get("state_dtype") or "auto",
                                    free_bytes=host.plannable_memory(device), device=device, size=size, dtype=dtype)
        free = host.plannable_memory(device)
        return (f"tier {tier}, peak {p.peak / 2**30:.1f} of {free / 2**30:.1f} GiB "
                f"({str(dtype).replace('torch.', '')}, largest: {p.largest_stage})")
    except Exception as e:  # a missing folder or a run that does not fit: say it in the panel
        return f"⚠ {e}"


ROUTE = "/letstalk/plan"


def already_registered(server) -> bool:
    """True when some copy of this pack has added the route already (a second folder with the pack in
    ``custom_nodes/`` imports it again under another module name, so a module-level flag cannot tell)."""
    for r in list(getattr(server, "routes", []) or []):
        if getattr(r, "path", None) == ROUTE:
            return True
    try:
        return any(getattr(res, "canonical", None) == ROUTE for res in server.app.router.resources())
    except Exception:  # the app may not exist yet
        return False


def register() -> None:
    """Add the route to ComfyUI's server, once, whatever number of copies of the pack are loaded
    (registration only; called when the pack loads). A failure here is logged and never stops the
    server from starting: the web panel then shows no plan, and everything else works."""
    try:
        from aiohttp import web
        from server import PromptServer
    except ImportError:
        return
    server = getattr(PromptServer, "instance", None)
    if server is None:
        return
    if already_registered(server):
        log.info("letstalk: %s is already registered (another copy of the pack is loaded); keeping the first", ROUTE)
        return
    try:
        _add_route(server, web)
    except Exception:  # never let the pack stop ComfyUI from starting
        log.exception("letstalk: could not register %s; the Memory Bank Loop's plan display is off", ROUTE)


def _add_route(server, web) -> None:
    @server.routes.get(ROUTE)
    async def letstalk_plan(request):
        import asyncio

        import folder_paths

        from . import host

        audios = request.query.getall("audio", [])  # several: a Conversation Audio node's tracks
        ckpt = request.query.get("ckpt", "") or host.DEMO_MODEL
        try:
            try:
                overlap = int(request.query.get("overlap", "0") or 0)
            except ValueError:
                raise ValueError(f"overlap must be a whole number of frames, got {request.query.get('overlap')!r}") from None
            missing = [name for name in audios if not folder_paths.exists_annotated_filepath(name)]
            if not audios or missing:
                return web.json_response({"error": f"audio file '{(missing or [''])[0]}' not found in the input folder"},
                                         status=404)
            audio_paths = [folder_paths.get_annotated_filepath(name) for name in audios]
            memo_fps = request.query.get("memo_fps", "")
            if memo_fps:
                try:
                    fps = float(memo_fps)
                except ValueError:
                    raise ValueError(f"memo_fps must be a number, got {memo_fps!r}") from None
                if not fps > 0:
                    raise ValueError(f"memo_fps must be > 0, got {fps}")
                result = await asyncio.get_running_loop().run_in_executor(None, plan, audio_paths, None, overlap, fps)
                if request.query.get("memo_folder"):
                    result["memory_plan"] = await asyncio.get_running_loop().run_in_executor(
                        None, memo_memory_text, dict(request.query))
                return web.json_response(result)
            ckpt_path = host.model_path(host.MODEL_FOLDER, ckpt, "LetsTalk checkpoint")
            result = await asyncio.get_running_loop().run_in_executor(None, plan, audio_paths, ckpt_path, overlap)
            return web.json_response(result)
        except (ValueError, FileNotFoundError) as e:
            return web.json_response({"error": str(e)}, status=400)
        except Exception as e:  # never let a bad file take the route (or the server) down
            log.exception("letstalk plan failed")
            return web.json_response({"error": f"{type(e).__name__}: {e}"}, status=500)
