"""Training and benchmark data.

* :mod:`.speech_synth`: numpy source-filter babble with per-frame mouth tracks.
* :mod:`.procedural`: face identities, frame rendering, sample/dataset writers and ground-truth loading.
* :mod:`.faces`: pluggable face detectors (none, OpenCV Haar, ONNX) and the per-video crop box.
* :mod:`.shards`: the training shard format (latents, audio features, optional frames) and its index.
* :mod:`.preprocess`: any talking-face footage → shards (``letstalk preprocess``).
"""
