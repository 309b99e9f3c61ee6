"""The MEMO folder loader on bad input: every fault is refused with a message that names the file.

The folder used is the golden fixture's tiny MEMO model in the published layout (fp16 weights)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from letstalk_core.families.memo.loading import WEIGHTS, load_memo, looks_like_memo_folder, open_memo_folder

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "memo" / "golden"


@pytest.fixture
def folder(tmp_path):
    dst = tmp_path / "memo"
    shutil.copytree(GOLDEN, dst, ignore=shutil.ignore_patterns("io.safetensors"))
    return dst


def _edit_config(path: Path, **changes):
    cfg = json.loads(path.read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k)
        else:
            cfg[k] = v
    path.write_text(json.dumps(cfg))


def test_loads_lazily_and_casts(folder):
    models = load_memo(folder, dtype=torch.bfloat16)
    assert "diffusion_net" not in models.__dict__  # nothing loaded yet
    net = models.diffusion_net
    assert {p.dtype for p in net.parameters()} == {torch.bfloat16}
    assert not any(p.requires_grad for p in net.parameters())
    folder_ = open_memo_folder(folder)
    assert folder_.parts["reference_net"].file_dtype == "F16"
    fp32 = folder_.load("reference_net", dtype=torch.float32)
    kept = folder_.load("reference_net", dtype=None)
    assert fp32.conv_in.weight.dtype == torch.float32 and kept.conv_in.weight.dtype == torch.float16
    assert torch.equal(fp32.conv_in.weight, kept.conv_in.weight.float())  # fp16 -> fp32 is exact
    assert looks_like_memo_folder(folder) and not looks_like_memo_folder(folder / "image_proj")


def test_bf16_file_loads_as_fp32(folder):
    from safetensors.torch import load_file, save_file
    f = folder / "image_proj" / WEIGHTS
    save_file({k: v.to(torch.bfloat16) for k, v in load_file(f).items()}, f)
    proj = open_memo_folder(folder).load("image_proj", dtype=torch.float32)
    assert proj.proj.weight.dtype == torch.float32
    assert torch.equal(proj.proj.weight, load_file(f)["proj.weight"].float())


def test_missing_part(folder):
    shutil.rmtree(folder / "audio_proj")
    with pytest.raises(FileNotFoundError, match=r"no audio_proj/ folder.*huggingface.co/memoavatar/memo"):
        open_memo_folder(folder)


def test_missing_weights_file(folder):
    (folder / "reference_net" / WEIGHTS).rename(folder / "reference_net" / "model.safetensors")
    with pytest.raises(FileNotFoundError, match=r"reference_net/diffusion_pytorch_model.safetensors"):
        open_memo_folder(folder)


def test_truncated_weights(folder):
    f = folder / "diffusion_net" / WEIGHTS
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"diffusion_net/diffusion_pytorch_model.safetensors.*incomplete or corrupt"):
        open_memo_folder(folder)


def test_unknown_and_missing_config_fields(folder):
    cfg = folder / "diffusion_net" / "config.json"
    _edit_config(cfg, motion_module_size=3)
    with pytest.raises(ValueError, match=r"diffusion_net/config.json has fields .*'motion_module_size'"):
        open_memo_folder(folder)
    _edit_config(cfg, motion_module_size=None, audio_attention_dim=None)
    with pytest.raises(ValueError, match=r"diffusion_net/config.json lacks the field\(s\) \['audio_attention_dim'\]"):
        open_memo_folder(folder)


def test_unsupported_config_value(folder):
    _edit_config(folder / "reference_net" / "config.json", class_embed_type="timestep")
    with pytest.raises(ValueError, match=r"reference_net/config.json sets class_embed_type='timestep'"):
        open_memo_folder(folder)


def test_swapped_parts(folder):
    a, b = folder / "reference_net", folder / "diffusion_net"
    a.rename(folder / "tmp")
    b.rename(a)
    (folder / "tmp").rename(b)
    with pytest.raises(ValueError, match=r"reference_net/config.json describes a UNet3DConditionModel — that is the "
                                         r"diffusion_net part; are two folders swapped"):
        open_memo_folder(folder)


def test_mis_shaped_tensor(folder):
    from safetensors.torch import load_file, save_file
    f = folder / "image_proj" / WEIGHTS
    state = load_file(f)
    state["norm.bias"] = torch.zeros(5, dtype=torch.float16)
    save_file(state, f)
    with pytest.raises(ValueError, match=r"image_proj/diffusion_pytorch_model.safetensors does not match.*norm.bias"):
        open_memo_folder(folder)


def test_renamed_tensor(folder):
    from safetensors.torch import load_file, save_file
    f = folder / "diffusion_net" / WEIGHTS
    state = load_file(f)
    state["conv_in.kernel"] = state.pop("conv_in.weight")
    save_file(state, f)
    with pytest.raises(ValueError, match=r"1 missing tensors, e.g. \['conv_in.weight'\]; 1 unexpected tensors"):
        open_memo_folder(folder)


def test_position_tables_may_be_absent(folder):
    from safetensors.torch import load_file, save_file
    f = folder / "diffusion_net" / WEIGHTS
    full = load_file(f)
    save_file({k: v for k, v in full.items() if not k.endswith(".pos_encoder.pe")}, f)
    net = open_memo_folder(folder).load("diffusion_net")
    for k, v in net.state_dict().items():
        if k.endswith(".pos_encoder.pe"):
            assert torch.allclose(v, full[k].float(), atol=1e-6)


def test_letstalk_checkpoint_is_not_a_memo_folder_and_back(folder, tmp_path):
    from letstalk_core.families.letstalk.checkpoint import read_checkpoint
    demo = Path(__file__).resolve().parents[2] / "letstalk_core" / "models" / "letstalk-demo.safetensors"
    with pytest.raises(ValueError, match=r"is a LetsTalk checkpoint .*not a MEMO model folder"):
        open_memo_folder(demo)
    with pytest.raises(ValueError, match=r"is a MEMO model folder, not a LetsTalk checkpoint"):
        read_checkpoint(folder)
    with pytest.raises(ValueError, match=r"one part of a MEMO model folder"):
        read_checkpoint(folder / "diffusion_net" / WEIGHTS)
    with pytest.raises(FileNotFoundError, match=r"MEMO folder not found"):
        open_memo_folder(tmp_path / "nowhere")


def test_no_pickle_is_read(folder):
    """A folder with only a pickled .bin where the safetensors belongs is refused, the .bin is never read."""
    f = folder / "image_proj" / WEIGHTS
    f.rename(folder / "image_proj" / "diffusion_pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match=r"image_proj/diffusion_pytorch_model.safetensors"):
        open_memo_folder(folder)
