"""LetsTalk (arXiv 2411.16748), one family of the long-video loop: the linear diffusion transformer with its
three fusion schemes (:mod:`.transformer`, :mod:`.block`, :mod:`.fusion`, :mod:`.modules`, :mod:`.embeddings`),
its config and presets (:mod:`.config`), the checkpoint format (:mod:`.checkpoint`), loading (:mod:`.loading`),
the guided denoiser (:mod:`.guidance`) and the generator (:mod:`.generator`, the loop's ``ClipFamily``).
The DC-AE, the memory bank and the speech front end are shared parts below it (``autoencoder``, ``memory``,
``audio``)."""
from __future__ import annotations

from ...lazy import lazy_exports

#: The family's public names and the module each lives in (imported when first used: no work at import time).
_EXPORTS = {
    "LetsTalkConfig": ".config",
    "MemoryConfig": ".config",
    "get_preset": ".config",
    "LetsTalkTransformer": ".transformer",
    "count_parameters": ".transformer",
    "CONFIG_KEY": ".checkpoint",
    "INFERENCE_KEY": ".checkpoint",
    "InferenceRecipe": ".checkpoint",
    "inference_recipe": ".checkpoint",
    "load_transformer": ".checkpoint",
    "read_checkpoint": ".checkpoint",
    "recipe_metadata": ".checkpoint",
    "save_checkpoint": ".checkpoint",
    "bundled_dcae": ".loading",
    "bundled_wav2vec2": ".loading",
    "load_generator": ".loading",
    "load_parts": ".loading",
    "guided_model_fn": ".guidance",
    "RECOMMENDED_MEMORY_ANCHOR": ".generator",
    "LetsTalkGenerator": ".generator",
    "PreparedInputs": ".generator",
    "encode_speech_track": ".generator",
    "write_video": ".generator",
}
__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
