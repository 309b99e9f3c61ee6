#!/usr/bin/env python3
"""Write the inputs the example workflows load (deterministic, procedural, no download):

* ``assets/letstalk_demo_portrait.png`` — the demo person (64×64, as `letstalk demo`, seed 777001);
* ``assets/letstalk_demo_speech.flac`` — 60 s of the demo's synthetic speech (16 kHz mono);
* ``assets/letstalk_demo_photo.png`` — a 384×224 landscape "photo" with the same person off-centre
  (face centre at 30 % / 45 %), for the face-crop-and-paste-back workflow.

Copy them into ComfyUI/input (the host tests upload them) to run the workflows as shipped.
usage: python scripts/make_workflow_assets.py [--out assets] [--seconds 60]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SEED = 777001  # the `letstalk demo` person and speech


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
    for p in sorted(out.iterdir()):
        print(p)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
