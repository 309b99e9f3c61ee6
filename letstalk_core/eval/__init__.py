"""Video quality metrics for long talking-head videos (numpy only).

:mod:`.metrics` holds the small pure functions and the chunk-wise accumulators (lip sync, sRGB →
CIELAB, ΔE76/CIEDE2000, identity colour drift, clip-boundary jump, flicker); :mod:`.report`
streams a whole mp4 through them (``evaluate_video``), formats results as a markdown table and
adds the ``letstalk eval`` command.
"""
