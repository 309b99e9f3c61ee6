"""Speech input: waveform preparation, speech encoders (wav2vec2, log-mel), per-frame windows and the
audio projector. See ``reference/letstalk_memo.md`` §1.3 and ``reference/components.md`` §3."""
from .emotion import EMOTION_CLASSES, emotion_choice, emotion_labels
from .features import (
    MelConfig,
    SpeechEncoder,
    SpeechEncoderConfig,
    encode_speech_mel,
    encode_speech_wav2vec2,
    log_mel,
    mel_filterbank,
)
from .projector import AudioProjector, AudioProjectorConfig
from .tracks import align_tracks, mix_tracks
from .wav2vec2 import (
    WAV2VEC2_PRESETS,
    Wav2Vec2Config,
    Wav2Vec2Encoder,
    fold_weight_norm,
    infer_wav2vec2_config,
    load_wav2vec2,
    wav2vec2_state_dict,
)
from .waveform import (
    MIN_AUDIO_SECONDS,
    TARGET_SAMPLE_RATE,
    as_fraction,
    cover_frames,
    frame_count,
    normalize_waveform,
    prepare_waveform,
    resample,
    silence_warning,
)
from .windows import frame_windows, frame_windows_range

__all__ = [
    "align_tracks",
    "mix_tracks",
    "as_fraction",
    "AudioProjector",
    "AudioProjectorConfig",
    "cover_frames",
    "emotion_choice",
    "EMOTION_CLASSES",
    "emotion_labels",
    "encode_speech_mel",
    "encode_speech_wav2vec2",
    "fold_weight_norm",
    "frame_count",
    "frame_windows",
    "frame_windows_range",
    "infer_wav2vec2_config",
    "load_wav2vec2",
    "log_mel",
    "mel_filterbank",
    "MelConfig",
    "MIN_AUDIO_SECONDS",
    "normalize_waveform",
    "prepare_waveform",
    "resample",
    "silence_warning",
    "SpeechEncoder",
    "SpeechEncoderConfig",
    "TARGET_SAMPLE_RATE",
    "WAV2VEC2_PRESETS",
    "wav2vec2_state_dict",
    "Wav2Vec2Config",
    "Wav2Vec2Encoder",
]
