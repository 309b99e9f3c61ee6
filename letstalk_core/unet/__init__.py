"""MEMO's networks (arXiv 2412.04448), natively: the Reference Net (SD1.5 UNet2D returning the features
the Diffusion Net attends to), the Diffusion Net (SD1.5 UNet inflated to video with reference
attention, the emotion-aware audio module and the memory-guided temporal module), ImageProj and the
audio-emotion classifier, with configs read from the published ``config.json`` files. Import the
submodules; importing this package does no work."""
