"""Which model family a path holds, and loading either: the one place the CLI and the nodes ask.

LetsTalk (:mod:`letstalk_core.families.letstalk`) is one ``.safetensors`` checkpoint; MEMO
(:mod:`letstalk_core.families.memo`) is the folder its authors publish (:mod:`letstalk_core.formats`).
This module sits above both families, which never import each other; the loop
(:mod:`letstalk_core.loop`) below them knows neither.
"""
from __future__ import annotations

from pathlib import Path

from .formats import looks_like_memo_folder

LETSTALK = "letstalk"
MEMO = "memo"
FAMILIES = (LETSTALK, MEMO)


def family_of(path) -> str:
    """``"memo"`` for a folder (MEMO's loader then says what a folder lacks), ``"letstalk"`` for a file (its
    loader says what a file that is no LetsTalk checkpoint is); a path that does not exist is refused."""
    p = Path(path).expanduser()
    if looks_like_memo_folder(p) or p.is_dir():
        return MEMO
    if not p.exists():
        raise FileNotFoundError(f"model not found: '{p}'. Give a LetsTalk checkpoint (.safetensors), 'demo', or a "
                                "MEMO model folder (reference_net/, diffusion_net/, image_proj/, audio_proj/, misc/).")
    return LETSTALK


def load_generator(path, *, device="auto", dtype="auto", **options):
    """The family's generator for ``path`` (a :class:`~letstalk_core.loop.ClipFamily` with ``iter_clips``).

    LetsTalk takes ``dcae_path`` and ``speech_encoder_path``; MEMO takes ``vae``, ``speech_encoder``, ``fps``,
    ``size`` and ``options`` (see each family's ``load_generator``/``load_memo_generator``). An option of the
    other family is refused by name, so a flag given for the wrong model never passes unnoticed."""
    family = family_of(path)
    if family == MEMO:
        from .families.memo import load_memo_generator as load
    else:
        from .families.letstalk import load_generator as load
    import inspect

    accepted = set(inspect.signature(load).parameters)
    unknown = sorted(k for k in options if k not in accepted)
    if unknown:
        raise ValueError(f"{', '.join(unknown)} do{'es' if len(unknown) == 1 else ''} not apply to a {family} model "
                         f"('{path}'); it takes {', '.join(sorted(accepted - {'checkpoint', 'folder', 'device', 'dtype'}))}.")
    return load(path, device=device, dtype=dtype, **options)
