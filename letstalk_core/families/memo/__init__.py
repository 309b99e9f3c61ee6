"""MEMO (arXiv 2412.04448), one family of the long-video loop: the Reference Net (SD1.5 UNet2D returning the
features the Diffusion Net attends to), the Diffusion Net (SD1.5 UNet inflated to video with reference
attention, the emotion-aware audio module and the memory-guided temporal module), ImageProj and the
audio-emotion classifier, with configs read from the published ``config.json`` files (:mod:`.loading`);
its conditions, sampling and memory plan; and the generator (:mod:`.generator`, the loop's ``ClipFamily``)."""
from __future__ import annotations

from ...lazy import lazy_exports

#: The family's public names and the module each lives in (imported when first used: no work at import time).
_EXPORTS = {
    "UNetConfig": ".config",
    "parse_unet_config": ".config",
    "DOWNLOAD_HINT": ".loading",
    "MemoFolder": ".loading",
    "MemoModels": ".loading",
    "describe_memo_folder": ".loading",
    "load_memo": ".loading",
    "looks_like_memo_folder": ".loading",
    "open_memo_folder": ".loading",
    "TIERS": ".memory_plan",
    "MemoOptions": ".memory_plan",
    "MemoryPlan": ".memory_plan",
    "choose_options": ".memory_plan",
    "free_memory": ".memory_plan",
    "plan_memo": ".memory_plan",
    "refusal": ".memory_plan",
    "MemoConfig": ".generator",
    "MemoGenerator": ".generator",
    "MemoVideo": ".generator",
    "emotion_source": ".generator",
    "load_memo_generator": ".generator",
    "portrait_face_embedding": ".generator",
}
__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
