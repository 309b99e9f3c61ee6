"""MEMO's memory plan and the options that make a run fit (letstalk_core/families/memo/memory_plan.py).

* the meta-device trace counts live bytes exactly, frees included;
* the plan's memory state equals a real run's, byte for byte, in fp32 and bf16;
* at the published widths, 512², bf16: the state is 6.53 GiB (13.07 in fp32) and each tier fits the memory
  it is named for (CUDA context and allocator slack included);
* every option's deviation from the all-resident fp32-state run, on the golden fixture (the authors'
  outputs): exact where the option only reorders work, measured and bounded where it rounds (bf16 state);
* a run that does not fit is refused before any work, naming the options that make it fit.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from letstalk_core.families.memo.conditions import past_features
from letstalk_core.families.memo.diffusion_net import split_reference_features
from letstalk_core.families.memo.loading import open_memo_folder
from letstalk_core.families.memo.memory_plan import TIERS, ConfigFolder, MemoOptions, choose_options, plan_memo
from letstalk_core.families.memo.sampling import guided_conditions, guided_velocity
from letstalk_core.memory.linear_state import LinearAttentionMemory, fold, fold_past, past_contribution
from letstalk_core.memory_trace import meta_trace

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "memo"
GOLDEN = FIXTURES / "golden"
GiB = 2 ** 30


def test_trace_counts_live_bytes_and_frees():
    with meta_trace() as live:
        x = torch.empty(100, 100, device="meta")  # 40 kB
        live.adopt(x)
        with live.stage("chain"):
            y = x @ x  # +40 kB
            z = y @ y  # +40 kB, peak 120 kB
            del y  # -40 kB
            w = z.t()  # a view: no new bytes
        assert live.live == 80_000 and live.stages["chain"] == 120_000
        del z, w
        assert live.live == 40_000
        q = torch.empty(2, 8, 64, 16, device="meta")
        k = torch.empty(2, 8, 128, 16, device="meta")
        with live.stage("attention"):
            o = torch.nn.functional.scaled_dot_product_attention(q, k, k)
        # a fused kernel: the output (and its row statistic while it runs), never the 64 x 128 score matrix
        assert live.stages["attention"] - live.started["attention"] <= 2 * o.numel() * 4
        assert o.shape == (2, 8, 64, 16)


@pytest.fixture(scope="module")
def golden():
    folder = open_memo_folder(GOLDEN)
    return folder, {name: folder.load(name) for name in folder.parts}, load_file(GOLDEN / "io.safetensors")


def _update(nets, io, clip, memory):
    face = nets["image_proj"](io["image_proj.in"])
    uncond = nets["image_proj"](torch.zeros_like(io["image_proj.in"]))
    feats = nets["reference_net"](io[f"clip{clip}.ref_latents"].repeat(2, 1, 1, 1), torch.cat([uncond, face]), 0)
    ref_tokens, past, p = split_reference_features(feats, 2)
    nets["diffusion_net"].update_memory(memory, past, p, new_video=clip == 0)
    return face, uncond, ref_tokens, p


@torch.no_grad()
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_plan_state_equals_a_real_runs_state(golden, dtype):
    folder, nets, io = golden
    memory = LinearAttentionMemory(dtype=dtype)
    *_, p = _update(nets, io, 0, memory)
    size = io["clip0.ref_latents"].shape[-1] * 8
    plan = plan_memo(folder, size=size, dtype=dtype, device="cpu", past=p, frames=4)
    planned = next(v for k, v in plan.resident.items() if k.startswith("memory state"))
    assert planned == memory.nbytes() > 0


def test_published_model_at_512_fits_each_tier():
    """The published widths (config.json files only), MEMO's recipe: 512², 16 frames, 16 past frames, bf16."""
    folder = ConfigFolder.read(FIXTURES / "configs")
    fp32_state = plan_memo(folder, size=512, options=MemoOptions(state_dtype="fp32"))
    plans = {n: plan_memo(folder, size=512, options=o) for n, o in TIERS.items()}
    state = {n: next(v for k, v in p.resident.items() if k.startswith("memory state")) for n, p in plans.items()}
    full = next(v for k, v in fp32_state.resident.items() if k.startswith("memory state"))
    assert abs(full / GiB - 13.07) < 0.01 and state["24gb"] * 2 == full  # the README's 13.07 GiB, halved
    for name, plan in plans.items():
        print(f"\n{name}: " + "\n  ".join(plan.lines()))
        assert plan.peak <= int(name[:-2]) * GiB, (name, plan.peak / GiB)
    assert plans["24gb"].peak > plans["16gb"].peak > plans["12gb"].peak
    assert fp32_state.peak - plans["24gb"].peak >= 6 * GiB


@torch.no_grad()
def test_fold_in_chunks_of_rows_equals_whole_layers():
    g = torch.Generator().manual_seed(0)
    keys, values = torch.randn(96, 6, 8, generator=g), torch.randn(96, 6, 8, generator=g)
    old = (torch.randn(96, 8, 8, generator=g), torch.randn(96, 1, 8, generator=g))
    for state in (None, old):
        whole = fold(state, past_contribution(keys, values), 6)
        chunked = fold_past(state, keys, values, 6, dtype=torch.float32, chunk_bytes=8 * 8 * 4 * 7)  # 7 rows a chunk
        assert torch.equal(whole[0], chunked[0]) and torch.equal(whole[1], chunked[1])


@torch.no_grad()
def test_each_option_against_the_fp32_state_run_on_the_golden_fixture(golden):
    """Two clips through the memory (the golden fixture's inputs; the authors' sampled latents as the
    anchor): the all-resident fp32-state run, then each option alone. Printed: max |Δ| of the sampled
    latents against the fp32-state run."""
    from letstalk_core.diffusion.samplers import sample_euler
    from letstalk_core.families.memo.sampling import memo_schedule

    _, nets, io = golden
    net, frames = nets["diffusion_net"], 4

    def run(state_dtype=torch.float32, sequential=False, storage=None):
        memory = LinearAttentionMemory(dtype=state_dtype, storage=storage)
        outs = []
        for clip in range(2):
            face, uncond, ref_tokens, _ = _update(nets, io, clip, memory)
            cond = guided_conditions(reference_tokens=ref_tokens, face_tokens=face, uncond_face_tokens=uncond,
                                     audio_tokens=io["audio_proj.out"][:, clip * frames:(clip + 1) * frames],
                                     emotion=int(io["emotions"][clip]))
            x0 = io["noise"][:, :, clip * frames:(clip + 1) * frames].clone()
            outs.append(sample_euler(guided_velocity(net, cond, memory, sequential=sequential), x0, memo_schedule(),
                                     steps=2))
        return torch.cat(outs, dim=2)

    base = run()
    authors = torch.cat([io[f"clip{c}.step1.latents"] for c in range(2)], dim=2)
    deltas = {"fp32 state vs the authors' code": (base - authors).abs().max().item(),
              "state in bf16 (fp32 sums)": (run(torch.bfloat16) - base).abs().max().item(),
              "guidance rows one after the other": (run(sequential=True) - base).abs().max().item(),
              "state kept on the CPU": (run(storage=torch.device("cpu")) - base).abs().max().item()}
    face, uncond, _, p = _update(nets, io, 1, LinearAttentionMemory())
    lat = io["clip1.ref_latents"][1:]
    whole = past_features(nets["reference_net"], lat, face, uncond)
    chunked = past_features(nets["reference_net"], lat, face, uncond, chunk=3)
    deltas["Reference Net 3 images at a time"] = max((whole[k] - chunked[k]).abs().max().item() for k in whole)
    print("\nmax |Δ| on the golden fixture (sampled latents up to "
          f"{base.abs().max().item():.2f}): " + "; ".join(f"{k} {v:.1e}" for k, v in deltas.items()))
    assert deltas["fp32 state vs the authors' code"] < 1e-4
    assert deltas["state kept on the CPU"] == 0.0
    assert deltas["guidance rows one after the other"] < 1e-4  # float rounding of batch-1 kernels
    assert deltas["Reference Net 3 images at a time"] < 1e-4
    assert 0 < deltas["state in bf16 (fp32 sums)"] < 0.05  # rounding of the stored state, not an error


def test_a_run_that_does_not_fit_is_refused_naming_what_fits():
    folder = ConfigFolder.read(FIXTURES / "configs")
    with pytest.raises(ValueError) as e:
        choose_options(folder, tier="24gb", free_bytes=8 * GiB, device="cuda", size=512, dtype=torch.bfloat16)
    msg = str(e.value)
    assert "needs" in msg and "8.0 GiB" in msg and "16gb or 12gb" in msg and "--size 256" in msg
    tier, options, plan = choose_options(folder, free_bytes=12 * GiB, device="cuda", size=512, dtype=torch.bfloat16)
    assert tier == "12gb" and options.state_on_cpu and plan.peak <= 12 * GiB
    tier, _, _ = choose_options(folder, free_bytes=80 * GiB, device="cuda", size=512, dtype=torch.bfloat16)
    assert tier == "24gb"
    with pytest.raises(ValueError, match="all of them|needs"):
        choose_options(folder, free_bytes=2 * GiB, device="cuda", size=512, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="state_dtype"):
        MemoOptions(state_dtype="fp16")
