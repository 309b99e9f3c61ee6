"""Conversation Audio: the speech tracks of a conversation brought to one length, so each face listens while the
others speak, and their mix for the video's sound."""
from __future__ import annotations

from comfy_api.latest import io

from . import common

TRACKS = 4


class LetsTalkConversationAudio(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LetsTalkConversationAudio",
            display_name="LetsTalk Conversation Audio",
            category="LetsTalk",
            description="One speech track per face of a conversation (face 1 = the leftmost, as Face Crop counts). "
                        "Each track is padded with silence at its end to the longest (brought to one sample rate), "
                        "so every face's Memory Bank Loop makes the same number of frames and a face whose track is "
                        "silent listens, mouth closed, while the others speak. A track that starts later starts with "
                        "silence in its file. 'mix' is all tracks summed: the conversation's sound.",
            inputs=[io.Audio.Input("audio_1", tooltip="Face 1's speech."),
                    io.Audio.Input("audio_2", tooltip="Face 2's speech."),
                    io.Audio.Input("audio_3", optional=True, tooltip="Face 3's speech (optional)."),
                    io.Audio.Input("audio_4", optional=True, tooltip="Face 4's speech (optional).")],
            outputs=[*(io.Audio.Output(f"track_{i}", tooltip=f"Face {i}'s speech, padded to the longest track "
                                                             "(silence when its input is not connected).")
                       for i in range(1, TRACKS + 1)),
                     io.Audio.Output("mix", tooltip="All tracks summed (scaled down only where they would clip)."),
                     io.Float.Output("seconds", tooltip="The conversation's length: the longest track.")],
        )

    @classmethod
    def execute(cls, audio_1, audio_2, audio_3=None, audio_4=None) -> io.NodeOutput:
        import torch

        from ..letstalk_core.audio import align_tracks, mix_tracks

        given = [(i, a) for i, a in enumerate((audio_1, audio_2, audio_3, audio_4)) if a is not None]
        waves, rate = align_tracks([common.audio_waveform(a, f"audio_{i + 1}") for i, a in given])
        tracks = [torch.zeros(1, 1).expand_as(waves[0])] * TRACKS  # silence for unconnected inputs: no memory
        for (i, _), wave in zip(given, waves):
            tracks[i] = wave
        mix = mix_tracks(waves)
        as_audio = lambda w: {"waveform": w[None], "sample_rate": rate}  # noqa: E731
        seconds = waves[0].shape[-1] / rate
        return io.NodeOutput(*(as_audio(t) for t in tracks), as_audio(mix), seconds,
                             ui=common.done_ui(f"{len(given)} tracks of {seconds:.2f} s"))


NODES = [LetsTalkConversationAudio]
