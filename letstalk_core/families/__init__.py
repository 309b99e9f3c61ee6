"""The model families, one package each: :mod:`.letstalk` (the paper's DC-AE + linear DiT + memory bank,
our demo model) and :mod:`.memo` (MEMO's published UNets). Each holds its networks, config, loading and
generator (the loop's :class:`~letstalk_core.loop.ClipFamily`); neither imports the other, and
:mod:`letstalk_core.family` says which one a path holds. Importing this package does no work."""
