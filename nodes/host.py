"""The ComfyUI side of the pack in one place: model folders, devices and offload through
``comfy.model_management``, progress with previews, interruption, and the websocket events the web
extension listens to. Every ComfyUI import happens inside a function, so importing this module (and
the pack) does nothing but define names.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PACK_DIR = Path(__file__).resolve().parent.parent
DEMO_MODELS_DIR = PACK_DIR / "letstalk_core" / "models"  # package data: the wheel ships it too
DEMO_MODEL = "letstalk-demo.safetensors"
MODEL_FOLDER = "letstalk"  # ComfyUI/models/letstalk
MEMO_FOLDER = "memo"  # ComfyUI/models/memo/<MEMO folder>
EVENT = "letstalk.progress"  # websocket event for web/letstalk.js


def register_folders() -> None:
    """Register ``models/letstalk`` (plus the pack's own ``models/`` so the demo model is always
    listed) with ComfyUI's folder_paths. Registration only: nothing is created or written."""
    import folder_paths

    if MODEL_FOLDER not in folder_paths.folder_names_and_paths:
        folder_paths.folder_names_and_paths[MODEL_FOLDER] = (
            [os.path.join(folder_paths.models_dir, MODEL_FOLDER)], {".safetensors", ".sft"})
    paths = folder_paths.folder_names_and_paths[MODEL_FOLDER][0]
    if str(DEMO_MODELS_DIR) not in paths:
        paths.append(str(DEMO_MODELS_DIR))
    default = os.path.join(folder_paths.models_dir, MEMO_FOLDER)  # folders of folders: listed by nodes/memo.py
    if MEMO_FOLDER not in folder_paths.folder_names_and_paths:
        folder_paths.folder_names_and_paths[MEMO_FOLDER] = ([default], set())
    elif default not in folder_paths.folder_names_and_paths[MEMO_FOLDER][0]:
        folder_paths.folder_names_and_paths[MEMO_FOLDER][0].append(default)


def folder_paths_for(folder: str) -> list[str]:
    """The paths registered for a model folder (empty when ComfyUI does not know it)."""
    import folder_paths

    entry = folder_paths.folder_names_and_paths.get(folder)
    return list(entry[0]) if entry else []


def model_files(folder: str, *, extensions: tuple[str, ...] = (".safetensors", ".sft")) -> list[str]:
    import folder_paths

    try:
        names = folder_paths.get_filename_list(folder)
    except KeyError:
        return []
    return sorted(n for n in names if n.lower().endswith(extensions))


def model_path(folder: str, name: str, what: str) -> str:
    """The full path of ``name`` in a model folder, or a ``FileNotFoundError`` that says where to put it."""
    import folder_paths

    path = folder_paths.get_full_path(folder, name) if name else None
    if path is None or not os.path.isfile(path):
        where = ", ".join(folder_paths.get_folder_paths(folder)) if folder in folder_paths.folder_names_and_paths else folder
        raise FileNotFoundError(f"{what} '{name}' was not found in {where}. Put the file there and refresh the page "
                                f"(press R), or pick another one from the list.")
    return path


def torch_device():
    import comfy.model_management as mm

    return mm.get_torch_device()


def weight_dtype(name: str, device):
    """``auto`` → bf16 where the device runs it in hardware, else fp32: on a CPU the core's probe (AMX or
    AVX512-BF16, ``letstalk_core.devices.native_bf16``), on a GPU what ComfyUI's model management says
    (which honours its command-line flags)."""
    import comfy.model_management as mm
    import torch

    from ..letstalk_core.devices import pick_dtype

    if name != "auto" or mm.is_device_cpu(device):
        return pick_dtype(name, torch.device("cpu"))
    return torch.bfloat16 if mm.should_use_bf16(device) else torch.float32


def patcher_for(module, *, vae: bool = False):
    """Wrap a module in ComfyUI's ModelPatcher, so model management loads and offloads it."""
    import comfy.model_management as mm
    import comfy.model_patcher

    load = mm.vae_device() if vae else mm.get_torch_device()
    offload = mm.vae_offload_device() if vae else mm.unet_offload_device()
    return comfy.model_patcher.ModelPatcher(module, load_device=load, offload_device=offload)


def load_to_device(*patchers, memory_required: int = 0) -> None:
    """Ask model management to put these models on their device, freeing others as needed, and to keep
    ``memory_required`` bytes free beside them (a run's memory plan: its state and activations)."""
    import comfy.model_management as mm

    mm.load_models_gpu([p for p in patchers if p is not None], memory_required=int(memory_required))


def offload(patcher) -> None:
    """Move one model off its device through model management (it stays listed, reloaded on demand)."""
    import comfy.model_management as mm

    for loaded in list(mm.current_loaded_models):
        if loaded.model is patcher:
            loaded.model_unload()
            mm.current_loaded_models.remove(loaded)
            return
    patcher.detach()


def plannable_memory(device) -> int:
    """What a run may plan for on ``device``: ComfyUI can free every other model, so the device's total
    memory less ComfyUI's reserve (CUDA), or the RAM available now (CPU)."""
    import comfy.model_management as mm

    from ..letstalk_core.families.memo import free_memory

    if mm.is_device_cpu(device):
        return free_memory(device)
    return int(mm.get_total_memory(device)) - int(mm.extra_reserved_memory())


def check_interrupt() -> None:
    """Raise ComfyUI's interrupt exception when the user pressed Cancel."""
    import comfy.model_management as mm

    mm.throw_exception_if_processing_interrupted()


def output_dir() -> Path:
    import folder_paths

    return Path(folder_paths.get_output_directory()).resolve()


def temp_dir() -> Path:
    import folder_paths

    return Path(folder_paths.get_temp_directory()).resolve()


def temp_file(prefix: str, suffix: str) -> Path:
    """A new file name in ``temp/letstalk/`` (ComfyUI empties its temp folder when it starts)."""
    import uuid

    folder = temp_dir() / "letstalk"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{prefix}_{uuid.uuid4().hex[:12]}{suffix}"


def inside_output(subfolder: str) -> Path:
    """``subfolder`` under ComfyUI's output folder; refuses absolute paths and ``..`` escapes."""
    root = output_dir()
    if not subfolder.strip():
        raise ValueError("the resume folder is empty; give a name such as 'letstalk/run1'.")
    p = (root / subfolder.strip()).resolve()
    if p != root and root not in p.parents:
        raise ValueError(f"the resume folder '{subfolder}' lies outside ComfyUI's output folder ({root}); give a "
                         "relative name such as 'letstalk/run1'.")
    return p


def send_event(data: dict) -> None:
    """Send a ``letstalk.progress`` websocket event to the client that queued the prompt."""
    try:
        from server import PromptServer
    except ImportError:  # not running inside the server
        return
    server = getattr(PromptServer, "instance", None)
    if server is not None:
        server.send_sync(EVENT, data, server.client_id)


def previews_enabled() -> bool:
    """False when ComfyUI runs with ``--preview-method none`` (then no preview is decoded at all)."""
    try:
        from comfy.cli_args import LatentPreviewMethod, args
    except ImportError:
        return True
    return args.preview_method != LatentPreviewMethod.NoPreviews


@dataclass
class Progress:
    """ComfyUI's progress bar over clips × steps, a decoded preview of the current estimate, the
    interrupt check at every step, and the events for the web extension."""

    node_id: str | None
    total_steps: int
    preview_decode: Any = None  # callable(latents [1, C, F, h, w]) -> PIL image, or None
    done: int = 0
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        from comfy.utils import ProgressBar

        self.bar = ProgressBar(self.total_steps, node_id=self.node_id)

    def start_clip(self, clip: int, clips: int, memory: str) -> None:
        check_interrupt()
        self.info = {"node": self.node_id, "clip": clip + 1, "clips": clips, "memory": memory}
        send_event({**self.info, "step": 0, "steps": 0, "state": "running"})

    def step(self, info) -> None:
        """The sampler's per-step callback (a :class:`~letstalk_core.loop.StepInfo`)."""
        self.done += 1
        preview = None
        if self.preview_decode is not None and previews_enabled() and (info.step + 1 == info.steps or info.step % 2 == 0):
            image = self.preview_decode(info.denoised)
            preview = ("JPEG", image, max(image.size))  # its real size: ComfyUI would scale it up to a larger one
        self.bar.update_absolute(self.done, self.total_steps, preview)
        send_event({**self.info, "step": info.step + 1, "steps": info.steps, "state": "running"})
        check_interrupt()  # cancel within one sampling step

    def skip(self, steps: int) -> None:
        self.done += steps
        self.bar.update_absolute(self.done, self.total_steps)

    def finish(self) -> None:
        send_event({"node": self.node_id, "state": "done"})
