"""The clip memory: LetsTalk's FIFO of clean latents and its noise regularisation (``bank``, ``noise``), and
MEMO's decayed linear-attention state (``linear_state``, imported from there)."""
from .bank import anchor_memory, initial_memory, update_memory
from .noise import add_latent_noise, add_pixel_noise, regularise_memory, spatial_mask

__all__ = ["anchor_memory", "initial_memory", "update_memory", "add_pixel_noise", "add_latent_noise", "spatial_mask", "regularise_memory"]
