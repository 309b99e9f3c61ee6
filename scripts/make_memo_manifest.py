"""Write the structure manifest of the MEMO authors' models (github.com/memoavatar/memo) at full size.

What it writes (under ``--out``, by default ``tests/fixtures/memo``):

* ``configs/<part>/config.json`` for the parts ``reference_net``, ``diffusion_net``, ``image_proj``,
  ``audio_proj`` and ``audio_emotion_classifier`` (Hugging Face path ``misc/audio_emotion_classifier``):
  the file diffusers 0.31.0 writes for the reference class loaded from the published config, i.e.
  ``cls.from_config(published).save_config(dir)`` — the same ``config.json`` that
  ``ModelMixin.save_pretrained`` writes (it calls ``save_config``), and the same path ``from_pretrained``
  takes to build the model from ``memoavatar/memo``.
* ``manifest.json``: ``{"source": ..., "sources": {part: {field: [value, where]}}, "parts": {part:
  {"class", "parameters", "state_dict_numel", "fp32_bytes", "buffers", "non_persistent_buffers",
  "tensors": {name: shape}}}}`` with every ``state_dict`` entry (parameters and persistent buffers) sorted by
  name, one per line.

Every model is built on the ``meta`` device: nothing is allocated, so the 1.7 B-parameter Diffusion Net costs
seconds and no memory. Nothing here runs in CI; ``tests/`` only reads the files it writes.

Set-up (a virtual environment with what the reference pins, and a checkout of the reference)::

    python3 -m venv <reference venv> && <reference venv>/bin/pip install torch==2.13.0 diffusers==0.31.0 \\
        transformers==4.46.3 einops==0.8.0 safetensors numpy==1.26.4 accelerate==1.1.1 huggingface-hub==0.26.2
    git clone https://github.com/memoavatar/memo <memo checkout>      # tested at a5aee30

    <reference venv>/bin/python scripts/make_memo_manifest.py --memo <memo checkout> --out tests/fixtures/memo

(``torch`` may be the CPU wheel: ``--index-url https://download.pytorch.org/whl/cpu``.) The reference
imports ``xformers`` at module level; ``scripts/memo_reference.py`` puts a stand-in in its place.

Where the config values come from (also written to ``manifest.json["sources"]``, field by field)
------------------------------------------------------------------------------------------------
The weights repository is https://huggingface.co/memoavatar/memo (revision 9df2487e; the configs were last
changed in ecc7271 "Update configs"). No network is needed to run this script: the values are written below.

* ``image_proj/config.json`` (72 B), ``audio_proj/config.json`` (72 B) and
  ``misc/audio_emotion_classifier/config.json`` (85 B) are published verbatim as
  ``{"_class_name": "<Class>", "_diffusers_version": "0.31.0"}`` (e.g.
  https://huggingface.co/memoavatar/memo/blob/9df2487ec3e7aa75d1cf3e9780940ae280fb020f/misc/audio_emotion_classifier/config.json ,
  https://huggingface.co/memoavatar/memo/blob/23dd8acafc991443e288db025dc0fd4709ac44b9/audio_proj/config.json ,
  https://huggingface.co/memoavatar/memo/blame/main/image_proj/config.json). These classes are ``ConfigMixin``
  but their ``__init__`` is not decorated with ``register_to_config``, so ``save_pretrained`` writes only
  those two keys (checked: ``save_pretrained`` of a CPU instance writes byte-identical files) and
  ``from_pretrained`` builds them with the ``__init__`` defaults:
  ImageProjModel(cross_attention_dim=768, clip_embeddings_dim=512, clip_extra_context_tokens=4),
  AudioProjModel(seq_len=5, blocks=12, channels=768, intermediate_dim=512, output_dim=768, context_tokens=32),
  AudioEmotionClassifierModel(num_classifier_layers=5, num_classifier_channels=2048) with 9 classes.
* ``diffusion_net/config.json`` (2.25 kB): every key from ``_center_input_sample`` through
  ``resnet_time_scale_shift`` is copied verbatim from
  https://huggingface.co/memoavatar/memo/raw/9df2487ec3e7aa75d1cf3e9780940ae280fb020f/diffusion_net/config.json
  (same text at https://huggingface.co/camenduru/memo/blob/main/diffusion_net/config.json). The stored copy
  of that page ends there; the remaining keys are inferred:
  - ``reverse_transformer_layers_per_block`` … ``use_linear_projection`` (except the three below) are the
    values of the Reference Net config, which the Diffusion Net config inherits: its published head carries
    the Reference Net's own keys (``_center_input_sample``, ``_out_channels``, ``addition_embed_type``,
    ``dropout``, ``attention_type``, ``center_input_sample``, ``out_channels`` …), the fingerprint of Hallo's
    ``UNet3DConditionModel.from_pretrained_2d`` (load the 2D config, swap the block types, then
    ``from_config(config, **unet_additional_kwargs)``, which registers the unknown 2D keys as hidden keys).
  - ``use_inflated_groupnorm: true``, ``unet_use_cross_frame_attention: false``,
    ``unet_use_temporal_attention: false`` come from Hallo's ``unet_additional_kwargs``
    (github.com/fudan-generative-vision/hallo ``configs/unet/unet.yaml`` and
    ``configs/inference/default.yaml``). The published ``motion_module_resolutions``,
    ``motion_module_kwargs`` and ``audio_attention_dim`` are a verbatim subset of that same block, and its
    other keys (``use_motion_module``, ``motion_module_mid_block``, ``motion_module_type`` …) are absent from
    the published config exactly as ``from_config(**kwargs)`` drops kwargs outside MEMO's ``__init__``.
    Not seen verbatim: the file size cannot tell (every true/false/null combination of the three gives
    2246–2249 B, all "2.25 kB"). ``use_inflated_groupnorm`` changes no tensor (``InflatedGroupNorm`` is an
    ``nn.GroupNorm``) but changes the numbers: false normalises over (C/G, frames, H, W) at once, true per
    frame. ``unet_use_temporal_attention`` true would add ``attn_temp``/``norm_temp`` tensors; false and
    null give the same structure, and the parameter count fits the published 6.71 GB only without them.
* ``reference_net/config.json`` (1.71 kB): not seen verbatim. Reconstructed as MEMO's
  ``UNet2DConditionModel.from_config(<SD 1.5 unet/config.json>)`` saved by diffusers 0.31.0 — the SD 1.5
  values (runwayml/stable-diffusion-v1-5 ``unet/config.json``: block_out_channels [320, 640, 1280, 1280],
  cross_attention_dim 768, attention_head_dim 8, layers_per_block 2, sample_size 64, in/out channels 4,
  center_input_sample false, …) plus the class defaults. Its key set and values are exactly the 2D keys seen
  in the published Diffusion Net head, and it serialises to 1711 B = the published "1.71 kB".
"""
from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memo_reference import import_reference  # noqa: E402

HF = "https://huggingface.co/memoavatar/memo"
HF_DIFFUSION_RAW = f"{HF}/raw/9df2487ec3e7aa75d1cf3e9780940ae280fb020f/diffusion_net/config.json"
SD15 = "runwayml/stable-diffusion-v1-5 unet/config.json"
HALLO = "github.com/fudan-generative-vision/hallo configs/unet/unet.yaml (unet_additional_kwargs)"
REF_DEFAULT = "reference default (memo UNet2DConditionModel.__init__)"
INHERITED = "inferred: inherited from the Reference Net config (Hallo from_pretrained_2d pattern)"

# Published sizes (Hugging Face file listing, 3 significant digits; GB/MB/kB are powers of 1000).
PUBLISHED_SIZES = {
    "reference_net": {"config.json": "1.71 kB", "diffusion_pytorch_model.safetensors": "3.43 GB"},
    "diffusion_net": {"config.json": "2.25 kB", "diffusion_pytorch_model.safetensors": "6.71 GB"},
    "image_proj": {"config.json": "72 Bytes", "diffusion_pytorch_model.safetensors": "6.31 MB"},
    "audio_proj": {"config.json": "72 Bytes", "diffusion_pytorch_model.safetensors": None},
    "audio_emotion_classifier": {"config.json": "85 Bytes", "diffusion_pytorch_model.safetensors": "58.8 MB"},
}
HF_PATH = {"reference_net": "reference_net", "diffusion_net": "diffusion_net", "image_proj": "image_proj",
           "audio_proj": "audio_proj", "audio_emotion_classifier": "misc/audio_emotion_classifier"}

CROSS_DOWN_2D = ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]
CROSS_UP_2D = ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]
CROSS_DOWN_3D = ["CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"]
CROSS_UP_3D = ["UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"]

# field -> (value, source). "_class_name"/"_diffusers_version" are what diffusers writes itself.
REFERENCE_NET = {
    "_center_input_sample": (False, REF_DEFAULT + " (private arg, always the default)"),
    "_out_channels": (4, REF_DEFAULT + " (private arg, always the default)"),
    "act_fn": ("silu", SD15),
    "addition_embed_type": (None, REF_DEFAULT),
    "addition_embed_type_num_heads": (64, REF_DEFAULT),
    "addition_time_embed_dim": (None, REF_DEFAULT),
    "attention_head_dim": (8, SD15),
    "attention_type": ("default", REF_DEFAULT),
    "block_out_channels": ([320, 640, 1280, 1280], SD15),
    "center_input_sample": (False, SD15 + " (not an __init__ arg of memo's class: kept as a hidden key)"),
    "class_embed_type": (None, REF_DEFAULT),
    "class_embeddings_concat": (False, REF_DEFAULT),
    "conv_in_kernel": (3, REF_DEFAULT),
    "cross_attention_dim": (768, SD15),
    "down_block_types": (CROSS_DOWN_2D, SD15),
    "downsample_padding": (1, SD15),
    "dropout": (0.0, REF_DEFAULT),
    "dual_cross_attention": (False, REF_DEFAULT),
    "encoder_hid_dim": (None, REF_DEFAULT),
    "encoder_hid_dim_type": (None, REF_DEFAULT),
    "flip_sin_to_cos": (True, SD15),
    "freq_shift": (0, SD15),
    "in_channels": (4, SD15),
    "layers_per_block": (2, SD15),
    "mid_block_only_cross_attention": (None, REF_DEFAULT),
    "mid_block_scale_factor": (1, SD15),
    "mid_block_type": ("UNetMidBlock2DCrossAttn", REF_DEFAULT),
    "norm_eps": (1e-05, SD15),
    "norm_num_groups": (32, SD15),
    "num_attention_heads": (None, REF_DEFAULT),
    "num_class_embeds": (None, REF_DEFAULT),
    "only_cross_attention": (False, REF_DEFAULT),
    "out_channels": (4, SD15 + " (not an __init__ arg of memo's class: kept as a hidden key)"),
    "projection_class_embeddings_input_dim": (None, REF_DEFAULT),
    "resnet_time_scale_shift": ("default", REF_DEFAULT),
    "reverse_transformer_layers_per_block": (None, REF_DEFAULT),
    "sample_size": (64, SD15),
    "time_cond_proj_dim": (None, REF_DEFAULT),
    "time_embedding_act_fn": (None, REF_DEFAULT),
    "time_embedding_dim": (None, REF_DEFAULT),
    "time_embedding_type": ("positional", REF_DEFAULT),
    "timestep_post_act": (None, REF_DEFAULT),
    "transformer_layers_per_block": (1, REF_DEFAULT),
    "up_block_types": (CROSS_UP_2D, SD15),
    "upcast_attention": (False, REF_DEFAULT),
    "use_linear_projection": (False, REF_DEFAULT),
}

MOTION_MODULE_KWARGS = {
    "attention_block_types": ["Temporal_Self", "Temporal_Self"],
    "num_attention_heads": 8,
    "num_transformer_block": 1,
    "temporal_attention_dim_div": 1,
    "temporal_position_encoding": True,
    "temporal_position_encoding_max_len": 32,
}
_PUBLISHED_HEAD = [  # keys shown verbatim at HF_DIFFUSION_RAW, in file order (sorted)
    "_center_input_sample", "_out_channels", "act_fn", "addition_embed_type", "addition_embed_type_num_heads",
    "addition_time_embed_dim", "attention_head_dim", "attention_type", "audio_attention_dim",
    "block_out_channels", "center_input_sample", "class_embed_type", "class_embeddings_concat",
    "conv_in_kernel", "cross_attention_dim", "down_block_types", "downsample_padding", "dropout",
    "dual_cross_attention", "emo_drop_rate", "encoder_hid_dim", "encoder_hid_dim_type", "flip_sin_to_cos",
    "freq_shift", "in_channels", "layers_per_block", "mid_block_only_cross_attention", "mid_block_scale_factor",
    "mid_block_type", "motion_module_kwargs", "motion_module_resolutions", "norm_eps", "norm_num_groups",
    "num_attention_heads", "num_class_embeds", "only_cross_attention", "out_channels",
    "projection_class_embeddings_input_dim", "resnet_time_scale_shift",
]
DIFFUSION_NET = {k: (v, INHERITED) for k, (v, _) in REFERENCE_NET.items()}
DIFFUSION_NET.update({
    "down_block_types": (CROSS_DOWN_3D, None),
    "mid_block_type": ("UNetMidBlock3DCrossAttn", None),
    "up_block_types": (CROSS_UP_3D, "inferred: Hallo from_pretrained_2d swaps in the 3D block types"),
    "audio_attention_dim": (768, None),
    "emo_drop_rate": (0.05, None),
    "motion_module_kwargs": (MOTION_MODULE_KWARGS, None),
    "motion_module_resolutions": ([1, 2, 4, 8], None),
    "use_inflated_groupnorm": (True, "inferred: " + HALLO + "; not seen verbatim"),
    "unet_use_cross_frame_attention": (False, "inferred: " + HALLO + "; null (the code default) is equivalent"),
    "unet_use_temporal_attention": (False, "inferred: " + HALLO + "; null (the code default) is equivalent"),
})
for _k in _PUBLISHED_HEAD:
    DIFFUSION_NET[_k] = (DIFFUSION_NET[_k][0], "published: " + HF_DIFFUSION_RAW)
assert all(src for _, src in DIFFUSION_NET.values()), "every Diffusion Net field needs a source"

SMALL_PARTS = {  # published config.json = {"_class_name", "_diffusers_version"}; __init__ defaults apply
    "image_proj": ("ImageProjModel", {"cross_attention_dim": 768, "clip_embeddings_dim": 512,
                                      "clip_extra_context_tokens": 4}),
    "audio_proj": ("AudioProjModel", {"seq_len": 5, "blocks": 12, "channels": 768, "intermediate_dim": 512,
                                      "output_dim": 768, "context_tokens": 32}),
    "audio_emotion_classifier": ("AudioEmotionClassifierModel", {"num_classifier_layers": 5,
                                                                  "num_classifier_channels": 2048}),
}


def _published_config(class_name: str, fields: dict) -> dict:
    cfg = {"_class_name": class_name, "_diffusers_version": "0.31.0"}
    cfg.update({k: copy.deepcopy(v) for k, (v, _) in fields.items()})
    return cfg


def _dump(obj, indent: int = 0) -> str:
    """JSON with nested structure indented but lists of numbers (shapes) on one line."""
    pad, inner = " " * indent, " " * (indent + 1)
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = [f"{inner}{json.dumps(k)}: {_dump(v, indent + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, list) and obj and not all(isinstance(x, (int, float, str, bool)) or x is None for x in obj):
        return "[\n" + ",\n".join(inner + _dump(v, indent + 1) for v in obj) + "\n" + pad + "]"
    return json.dumps(obj)


def _structure(model: torch.nn.Module) -> dict:
    sd = model.state_dict()
    buffers = dict(model.named_buffers())
    params = dict(model.named_parameters())
    persistent = sorted(n for n in buffers if n in sd)
    non_persistent = sorted(n for n in buffers if n not in sd)
    unknown = set(sd) - set(params) - set(buffers)
    if unknown:
        raise SystemExit(f"state_dict entries that are neither parameters nor buffers: {sorted(unknown)[:5]}")
    numel = sum(t.numel() for t in sd.values())
    return {
        "class": type(model).__name__,
        "parameters": sum(p.numel() for p in params.values()),
        "state_dict_numel": numel,
        "fp32_bytes": numel * 4,
        "buffers": persistent,
        "non_persistent_buffers": non_persistent,
        "tensors": {n: list(sd[n].shape) for n in sorted(sd)},
    }


def _save_config(model, part_dir: Path) -> str:
    part_dir.mkdir(parents=True, exist_ok=True)
    model.save_config(part_dir)  # what ModelMixin.save_pretrained writes as config.json
    return (part_dir / "config.json").read_text()


def _git(memo: Path, *args: str) -> str:
    try:
        return subprocess.run(["git", "-C", str(memo), *args], check=True, capture_output=True,
                              text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--memo", required=True, help="checkout of github.com/memoavatar/memo")
    ap.add_argument("--out", default="tests/fixtures/memo")
    args = ap.parse_args()
    memo, out = Path(args.memo).resolve(), Path(args.out)

    import diffusers
    ref = import_reference(memo)
    classes = {
        "reference_net": ref.unet_2d_condition.UNet2DConditionModel,
        "diffusion_net": ref.unet_3d.UNet3DConditionModel,
        "image_proj": ref.image_proj.ImageProjModel,
        "audio_proj": ref.audio_proj.AudioProjModel,
        "audio_emotion_classifier": ref.emotion_classifier.AudioEmotionClassifierModel,
    }
    published = {
        "reference_net": _published_config("UNet2DConditionModel", REFERENCE_NET),
        "diffusion_net": _published_config("UNet3DConditionModel", DIFFUSION_NET),
        **{p: {"_class_name": c, "_diffusers_version": "0.31.0"} for p, (c, _) in SMALL_PARTS.items()},
    }
    sources = {
        "reference_net": {k: [v, "reconstructed: " + s] for k, (v, s) in REFERENCE_NET.items()},
        "diffusion_net": {k: [v, s] for k, (v, s) in DIFFUSION_NET.items()},
        **{p: {k: [v, f"reference default ({c}.__init__; published config.json has no init keys: "
                      f"{HF}/blob/main/{HF_PATH[p]}/config.json)"] for k, v in d.items()}
           for p, (c, d) in SMALL_PARTS.items()},
    }

    parts, report = {}, []
    for part, cls in classes.items():
        with torch.device("meta"):
            model = cls.from_config(copy.deepcopy(published[part]))  # the from_pretrained path
        text = _save_config(model, out / "configs" / part)
        written = json.loads(text)
        expected = dict(published[part], _diffusers_version=diffusers.__version__)
        if written != expected:
            diff = {k for k in set(written) | set(expected) if written.get(k, "∅") != expected.get(k, "∅")}
            raise SystemExit(f"{part}: config.json differs from the published values in {sorted(diff)}")
        if part in SMALL_PARTS:  # the values really come from the __init__ defaults
            for k, v in SMALL_PARTS[part][1].items():
                if hasattr(model, k) and getattr(model, k) != v:
                    raise SystemExit(f"{part}: {k} = {getattr(model, k)}, expected the default {v}")
        parts[part] = _structure(model)
        report.append((part, len(text.encode()), parts[part]))

    manifest = {
        "source": {
            "reference": "https://github.com/memoavatar/memo",
            "memo_commit": _git(memo, "rev-parse", "HEAD"),
            "memo_worktree_clean": _git(memo, "status", "--porcelain") == "",
            "diffusers_version": diffusers.__version__,
            "torch_version": torch.__version__,
            "weights": HF,
            "published_sizes": {p: dict(PUBLISHED_SIZES[p], path=HF_PATH[p]) for p in classes},
            "generated_by": "scripts/make_memo_manifest.py: cls.from_config(published config) on the meta "
                            "device; configs/<part>/config.json = model.save_config(); tensors = "
                            "model.state_dict() names and shapes (parameters and persistent buffers), sorted",
        },
        "sources": sources,
        "parts": parts,
    }
    (out / "manifest.json").write_text(_dump(manifest) + "\n")

    print(f"{'part':26s} {'config B':>8s} {'parameters':>14s} {'state_dict':>14s} {'fp32 GB':>9s} {'tensors':>8s}"
          f"  published")
    for part, nbytes, s in report:
        print(f"{part:26s} {nbytes:8d} {s['parameters']:14,d} {s['state_dict_numel']:14,d} "
              f"{s['fp32_bytes'] / 1e9:9.4f} {len(s['tensors']):8d}  {PUBLISHED_SIZES[part]}")
    print(f"wrote {out / 'manifest.json'} and {out / 'configs'}/<part>/config.json")


if __name__ == "__main__":
    main()
