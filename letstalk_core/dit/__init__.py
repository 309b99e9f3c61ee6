"""The linear diffusion transformer: attention kernels, modules, fusion schemes, blocks, model."""
