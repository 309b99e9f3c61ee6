#!/usr/bin/env python3
"""Write the inputs the example workflows load (deterministic, procedural, no download):

* ``assets/letstalk_demo_portrait.png`` — the demo person (64×64, as `letstalk demo`, seed 777001);
* ``assets/letstalk_demo_speech.flac`` — 60 s of the demo's synthetic speech (16 kHz mono);
* ``assets/letstalk_demo_photo.png`` — a 384×224 landscape "photo" with the same person off-centre
  (face centre at 30 % / 45 %), for the face-crop-and-paste-back workflow;
* ``assets/letstalk_conversation_photo.png`` — a 448×224 "photo" of two other procedural people side by side
  (seeds 777101 and 777202, never used in training), faces at the boxes :data:`CONVERSATION_BOXES`;
* ``assets/letstalk_conversation_a.flac`` / ``_b.flac`` — their speech, taking turns: A speaks 0–6 s, B 5–11 s
  (B's file starts with 5 s of silence), for the conversation workflow.

Copy them into ComfyUI/input (the host tests upload them) to run the workflows as shipped.
usage: python scripts/make_workflow_assets.py [--out assets] [--seconds 60]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SEED = 777001  # the `letstalk demo` person and speech
CONVERSATION_SEEDS = (777101, 777202)  # the two people of the conversation photo, and their voices
CONVERSATION_BOXES = "57,39,185,167; 263,39,391,167"  # their faces in the photo (x0,y0,x1,y1, pixels)
CONVERSATION_TURNS = ((0.0, 6.0), (5.0, 11.0))  # when each speaks, in seconds


def write_flac(path: Path, wave, rate: int) -> None:
    import av
    import numpy as np

    pcm = (np.clip(wave, -1, 1) * 32767).round().astype(np.int16)[None]
    with av.open(str(path), "w", format="flac") as out:
        stream = out.add_stream("flac", rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def photo(identity, width: int = 384, height: int = 224, face: int = 128, cx: float = 0.3, cy: float = 0.45):
    """The person rendered at ``face`` px, placed on a wide, softly lit backdrop."""
    import numpy as np

    from letstalk_core.data.procedural import render_portrait

    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    sky = np.stack([0.55 + 0.25 * x / width, 0.62 + 0.1 * y / height, 0.75 - 0.2 * y / height], -1)
    img = (sky * 255).astype(np.uint8)
    img[int(0.8 * height):] = (96, 84, 70)  # a desk
    tile = render_portrait(identity, face)
    x0, y0 = round(cx * width - face / 2), round(cy * height - face / 2)
    img[y0:y0 + face, x0:x0 + face] = tile
    return img


def conversation_photo(identities, width: int = 448, height: int = 224, face: int = 128):
    """Two people side by side on the backdrop, each rendered at ``face`` px at a box of CONVERSATION_BOXES."""
    from letstalk_core.data.procedural import render_portrait

    img = photo(identities[0], width, height, face, cx=0.27, cy=0.46)
    x0, y0 = round(0.73 * width - face / 2), round(0.46 * height - face / 2)
    img[y0:y0 + face, x0:x0 + face] = render_portrait(identities[1], face)
    return img


def conversation_tracks(rate: int = 16000):
    """The two voices taking turns: track i is silence until its turn starts, then its speech."""
    import numpy as np

    from letstalk_core.data.procedural import sample_seeds
    from letstalk_core.data.speech_synth import synthesize_speech

    tracks = []
    for seed, (start, stop) in zip(CONVERSATION_SEEDS, CONVERSATION_TURNS):
        speech = synthesize_speech(stop - start, seed=sample_seeds(seed)["speech"], sample_rate=rate).waveform
        tracks.append(np.concatenate([np.zeros(round(start * rate), np.float32), speech]))
    return tracks


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "assets"))
    ap.add_argument("--seconds", type=float, default=60.0)
    a = ap.parse_args()
    from PIL import Image

    from letstalk_core.data.procedural import render_portrait, sample_identity, sample_seeds
    from letstalk_core.data.speech_synth import synthesize_speech

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = sample_seeds(SEED)
    ident = sample_identity(seeds["identity"])
    Image.fromarray(render_portrait(ident, 64)).save(out / "letstalk_demo_portrait.png")
    speech = synthesize_speech(a.seconds, seed=seeds["speech"], sample_rate=16000)
    write_flac(out / "letstalk_demo_speech.flac", speech.waveform, 16000)
    Image.fromarray(photo(ident)).save(out / "letstalk_demo_photo.png")
    people = [sample_identity(sample_seeds(seed)["identity"]) for seed in CONVERSATION_SEEDS]
    Image.fromarray(conversation_photo(people)).save(out / "letstalk_conversation_photo.png")
    for name, wave in zip("ab", conversation_tracks()):
        write_flac(out / f"letstalk_conversation_{name}.flac", wave, 16000)
    for p in sorted(out.iterdir()):
        print(p)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
