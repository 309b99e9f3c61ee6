"""letstalk_core: a self-contained implementation of LetsTalk (arXiv 2411.16748).

Deep compression autoencoder (``autoencoder``), speech features and projector (``audio``), the linear
diffusion transformer with its three multimodal fusion schemes (``dit``), diffusion processes and
samplers (``diffusion``), the noise-regularised memory bank (``memory``) and the long-video pipeline
(``pipeline``). Importing this package does no work and imports no heavy module; import submodules.
This package never imports ComfyUI.
"""

__version__ = "0.1.0"
