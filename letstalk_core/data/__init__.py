"""Training and benchmark data: procedural talking faces with synthetic speech and ground truth.

* :mod:`.speech_synth`: numpy source-filter babble with per-frame mouth tracks.
* :mod:`.procedural`: face identities, frame rendering, sample/dataset writers and ground-truth loading.
"""
