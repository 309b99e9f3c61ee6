"""letstalk_core: audio-driven long talking-portrait video, self-contained, for two model families.

Shared parts at the bottom (``layers``, ``autoencoder``, ``audio``, ``diffusion``, ``memory``, ``io``,
``face``), the long-video loop above them (``loop``, ``resume``: it imports no family), the families above
the loop, one package each and never importing each other (``families.letstalk``: LetsTalk, arXiv
2411.16748; ``families.memo``: MEMO, arXiv 2412.04448), ``family`` above both (which family a path holds),
and the tools and the CLI on top (README, "What is implemented"; ``pyproject.toml`` holds the layers).
Importing this package does no work and imports no heavy module; import submodules. This package never
imports ComfyUI.
"""

__version__ = "0.1.0"
