"""Fit planning checked by hand against real config.json files (tests/fixtures/model-configs/).

Every expected number is written as the arithmetic that produces it. Units: B = byte, KiB = 1024 B,
GiB = 1024**3 B; a GB is 10**9 B. The reference deployment (inventory/l20.yaml) is 2 hosts x 4
NVIDIA L20 at 46 GiB, Qwen2.5-32B-Instruct-GPTQ-Int4, TP 4 x PP 2, max_model_len 4096, utilization 0.9.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrate.core.fit import (
    GIB,
    OVERHEAD_GIB,
    FitReport,
    ModelShape,
    Quantization,
    fit,
    model_bytes,
    stage_layers,
    suggest,
)
from tests import FIXTURES

CONFIGS = FIXTURES / "model-configs"
Q32 = "Qwen2.5-32B-Instruct-GPTQ-Int4"
Q7 = "Qwen2.5-7B-Instruct"
L70 = "Llama-3.1-70B-Instruct"


def config(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((CONFIGS / f"{name}.json").read_text())
    return data


def shape(name: str) -> ModelShape:
    return ModelShape.from_config(config(name), name=name)


def l20(model: str = Q32, *, tp: int = 4, pp: int = 2, max_model_len: int = 4096) -> FitReport:
    return fit(shape(model), tp=tp, pp=pp, gpus_per_host=4, gpu_memory_gib=46, max_model_len=max_model_len)


# 46 GiB x 0.9 = 44,452,911,513.6 B, rounded down; the 2 GiB overhead allowance is 2,147,483,648 B.
BUDGET_46 = 46 * GIB * 9 // 10
OVERHEAD = int(OVERHEAD_GIB * GIB)


# ---------------------------------------------------------------- reading config.json


def test_reads_the_32b_gptq_config() -> None:
    s = shape(Q32)
    assert (s.layers, s.hidden_size, s.heads, s.kv_heads) == (64, 5120, 40, 8)
    assert s.head_dim == 5120 // 40 == 128  # no head_dim key: hidden / heads
    assert (s.intermediate_size, s.vocab_size, s.max_position_embeddings) == (27648, 152064, 32768)
    assert not s.tie_word_embeddings and s.torch_dtype == "float16" and s.qkv_bias
    assert s.quantization == Quantization(method="gptq", bits=4, group_size=128, desc_act=False, sym=True)


def test_reads_the_7b_config() -> None:
    s = shape(Q7)
    assert (s.layers, s.hidden_size, s.heads, s.kv_heads, s.head_dim) == (28, 3584, 28, 4, 3584 // 28)
    assert s.quantization.method == "none" and s.torch_dtype == "bfloat16"


def test_parameter_counts_match_the_published_ones() -> None:
    # 32B, per layer: q 5120*5120 + k, v 5120*(8*128) each + o 5120*5120 = 62,914,560
    #   MLP gate/up/down 3*5120*27648 = 424,673,280; two norms 2*5120; q/k/v biases 5120+1024+1024
    per_layer_32 = 62_914_560 + 424_673_280 + 10_240 + 7_168  # = 487,605,248
    # 64 layers + embeddings and lm_head 2*152064*5120 + final norm 5120
    assert shape(Q32).params == 64 * per_layer_32 + 2 * 152_064 * 5120 + 5120 == 32_763_876_352
    # Qwen's model card: 32.5B (31.0B without embeddings); ours 32.76B (31.21B), within 1%
    assert abs(32_763_876_352 / 32.5e9 - 1) < 0.01
    # 7B: 3584*(3584 + 2*512) + 3584*3584 + 3*3584*18944 + 2*3584 + (3584 + 2*512)
    per_layer_7 = 16_515_072 + 12_845_056 + 203_685_888 + 7_168 + 4_608  # = 233,057,792
    assert shape(Q7).params == 28 * per_layer_7 + 2 * 152_064 * 3584 + 3584 == 7_615_616_512
    # model card: 7.61B (6.53B without embeddings); ours 7.616B (6.526B), within 0.1%
    assert abs(7_615_616_512 / 7.61e9 - 1) < 0.001
    # Llama-3.1-70B (no biases, same formula): Meta publishes 70.6B
    assert abs(shape(L70).params / 70.6e9 - 1) < 0.001


def test_kv_bytes_per_token_for_the_whole_model() -> None:
    assert shape(Q32).kv_bytes_per_token() == 2 * 64 * 8 * 128 * 2 == 262_144  # 256 KiB
    assert shape(Q7).kv_bytes_per_token() == 2 * 28 * 4 * 128 * 2 == 57_344  # 56 KiB
    assert shape(Q32).kv_bytes_per_token(dtype_bytes=1) == 131_072  # fp8 KV cache halves it


def test_whole_model_weights() -> None:
    # 32B GPTQ-Int4: 487,587,840 linear weights per layer at 4 bits = 243,793,920 B, plus per group
    # of 128 inputs a 2-byte scale and a 4-bit zero: 487,587,840 / 128 * 2.5 = 9,523,200 B;
    # norms and biases 17,408 values * 2 B = 34,816 B: 253,351,936 B per layer
    layer = 243_793_920 + 9_523_200 + 34_816
    embeddings = 2 * 152_064 * 5120 * 2  # embed_tokens and lm_head stay fp16: 3,114,270,720 B
    assert model_bytes(shape(Q32)) == 64 * layer + embeddings + 5120 * 2 == 19_328_804_864  # 18.00 GiB
    # Qwen measured 18.94 GB at input length 1 with Transformers (weights + a little working memory);
    # our weights alone are 19.33 GB = 18.00 GiB, within 5% of that figure in either unit.
    assert abs(19_328_804_864 / 1e9 / 18.94 - 1) < 0.05 and abs(19_328_804_864 / GIB / 18.94 - 1) < 0.05
    # 7B in bfloat16: two bytes per parameter
    assert model_bytes(shape(Q7)) == 2 * 7_615_616_512 == 15_231_233_024  # 14.19 GiB


# ---------------------------------------------------------------- the L20 plan: TP 4 x PP 2


def test_the_l20_plan_tp4_pp2() -> None:
    r = l20()
    assert r.fits and r.stage_layers == (32, 32) and r.largest_stage == 32 and r.hosts == 2
    # per GPU and layer, TP 4: 487,587,840 / 4 = 121,896,960 weights -> 60,948,480 B packed
    #   + 121,896,960 / 128 * 2.5 = 2,380,800 B scales and zeros
    #   + (2*5120 norms + (1280 + 256 + 256) biases) * 2 B = 24,064 B   -> 63,353,344 B per layer
    # last stage: 32 layers + lm_head 152064/4 * 5120 * 2 B = 389,283,840 + final norm 10,240
    assert r.weights_bytes_per_gpu == 32 * 63_353_344 + 389_283_840 + 10_240 == 2_416_601_088  # 2.25 GiB
    assert r.stages[0].weights_bytes == 32 * 63_353_344 + 389_283_840  # embeddings on the first stage
    # KV per token per GPU: 2 (K, V) * 32 layers * (8 KV heads / 4) * 128 * 2 B = 32 KiB
    assert r.kv_heads_per_gpu == 2 and r.kv_bytes_per_token == 2 * 32 * 2 * 128 * 2 == 32_768
    # free: 44,452,911,513 - 2,416,601,088 - 2,147,483,648 = 39,888,826,777 B (37.15 GiB)
    free = BUDGET_46 - 2_416_601_088 - OVERHEAD
    assert r.limiting_stage.kv_cache_bytes == free == 39_888_826_777
    # whole 16-token blocks: 39,888,826,777 // (32,768 * 16) = 76,081 blocks = 1,217,296 tokens
    assert r.kv_tokens == free // (32_768 * 16) * 16 == 1_217_296
    assert round(r.max_concurrency, 2) == round(1_217_296 / 4096, 2) == 297.19
    assert any("would fit on 1 GPU (TP 1 x PP 1" in w and "this plan uses 8" in w for w in r.warnings)


def test_32b_gptq_on_one_l20() -> None:
    r = l20(tp=1, pp=1)
    assert r.fits and not r.warnings and r.weights_bytes_per_gpu == 19_328_804_864
    # 44,452,911,513 - 19,328,804,864 - 2,147,483,648 = 22,976,623,001 B (21.40 GiB) of KV cache;
    # // (262,144 B * 16) = 5,478 blocks = 87,648 tokens = 21.4 sequences of 4,096
    assert r.kv_tokens == (BUDGET_46 - 19_328_804_864 - OVERHEAD) // (262_144 * 16) * 16 == 87_648
    assert round(r.max_concurrency, 2) == 21.40
    # Qwen measured 31.84 GB at 30,720 tokens with Transformers; vLLM, paging the KV cache, still
    # has room for 2.67 full 32,768-token sequences on the one GPU
    full = l20(tp=1, pp=1, max_model_len=32768)
    assert full.fits and round(full.max_concurrency, 2) == round(87_648 / 32_768, 2) == 2.67


def test_lines_for_people() -> None:
    text = "\n".join(l20().lines())
    for part in (
        "TP 4 x PP 2 = 8 GPUs on 2 hosts",
        "layers per stage 32, 32",
        "2.25 GiB",
        "37.15 GiB",
        "32 KiB per token",
        "1,217,296 tokens",
        "297.19",
        "would fit on 1 GPU",
    ):
        assert part in text, part
    assert text.endswith("fits")
    data = json.loads(json.dumps(l20().as_dict()))
    assert data["kv_tokens"] == 1_217_296 and data["weights_bytes_per_gpu"] == 2_416_601_088
    assert data["stage_layers"] == [32, 32] and data["fits"] is True


# ---------------------------------------------------------------- divisibility


def test_tp3_is_rejected_for_40_heads() -> None:
    r = l20(tp=3, pp=1)
    assert not r.fits
    assert any("TP 3 does not divide the 40 attention heads" in p for p in r.problems)
    assert any("8 KV heads" in p for p in r.problems)
    assert "TP sizes this model allows: 1, 2, 4, 8" in " ".join(r.problems)


def test_tp16_replicates_8_kv_heads() -> None:
    # 40 heads: TP 16 is out for the 32B; Llama-3.1-70B has 64 heads and 8 KV heads
    assert any("40 attention heads" in p for p in l20(tp=16, pp=1).problems)
    kw: dict[str, Any] = {"pp": 1, "gpus_per_host": 8, "gpu_memory_gib": 80, "max_model_len": 4096}
    r16, r8 = fit(shape(L70), tp=16, **kw), fit(shape(L70), tp=8, **kw)
    assert r16.fits and r16.kv_heads_per_gpu == 1
    assert any("replicates each KV head on 2 GPUs" in n for n in r16.notes)
    assert any("spans hosts" in n for n in r16.notes)
    # 2 * 80 layers * 1 KV head * 128 * 2 B = 40 KiB per token, the same as at TP 8
    assert r16.kv_bytes_per_token == r8.kv_bytes_per_token == 2 * 80 * 1 * 128 * 2 == 40_960


def test_pp_larger_than_layers_is_rejected() -> None:
    r = fit(shape(Q32), tp=1, pp=65, gpus_per_host=1, gpu_memory_gib=46, max_model_len=4096)
    assert not r.fits and any("PP 65 is more than the 64 layers" in p for p in r.problems)


def test_layers_split_like_vllm() -> None:
    assert stage_layers(64, 2) == (32, 32)
    assert stage_layers(64, 3) == (21, 22, 21)  # 64 = 3*21 + 1; the extra layer goes to stage -2
    assert stage_layers(61, 4) == (15, 15, 16, 15)  # vLLM's documented example
    r = fit(shape(Q32), tp=1, pp=3, gpus_per_host=4, gpu_memory_gib=46, max_model_len=4096)
    # on 46 GiB the 22-layer middle stage, not a 21-layer one carrying embeddings, holds the fewest
    # tokens: (budget - 22 layers' weights - overhead) / (2 * 22 * 8 * 128 * 2 B) is the smallest
    assert r.largest_stage == 22 and r.limiting_stage.index == 1
    assert r.kv_bytes_per_token == 2 * 22 * 8 * 128 * 2 == 90_112
    assert r.kv_tokens == (BUDGET_46 - 22 * 253_351_936 - OVERHEAD) // (90_112 * 16) * 16


def test_layouts_must_fill_hosts() -> None:
    r = fit(shape(Q7), tp=2, pp=3, gpus_per_host=4, gpu_memory_gib=46, max_model_len=4096)
    assert any("6 GPUs do not fill whole hosts of 4" in p for p in r.problems)


def test_gptq_groups_must_not_straddle_gpus() -> None:
    # Qwen2.5-7B quantized with group 128: down_proj's 18944 inputs / 4 = 4736 = 37 groups; / 8 is not
    qc = {"quant_method": "gptq", "bits": 4, "group_size": 128}
    s = ModelShape.from_config({**config(Q7), "num_attention_heads": 32, "quantization_config": qc})
    assert not fit(s, tp=4, pp=1, gpus_per_host=8, gpu_memory_gib=24, max_model_len=4096).problems
    r = fit(s, tp=8, pp=1, gpus_per_host=8, gpu_memory_gib=24, max_model_len=4096)
    assert any("2368 inputs of down_proj" in p for p in r.problems)


def test_max_model_len_beyond_the_model() -> None:
    assert not l20(Q7, tp=1, pp=1, max_model_len=32768).problems
    r = l20(Q7, tp=1, pp=1, max_model_len=65536)
    assert any("longer than the 32,768 positions" in p for p in r.problems)
    yarn = {
        **config(Q7),
        "rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768},
    }
    assert ModelShape.from_config(yarn).max_context == 131_072  # Qwen's documented YaRN setting


def test_out_of_memory_is_a_problem() -> None:
    r = fit(shape(Q32), tp=1, pp=1, gpus_per_host=1, gpu_memory_gib=16, max_model_len=4096)
    assert not r.fits and r.kv_tokens == 0 and "leave no room for the KV cache" in r.problems[0]
    # 46 GiB holds 87,648 tokens: one 100,000-token sequence does not fit (ignoring the context limit)
    long = ModelShape.from_config({**config(Q32), "max_position_embeddings": 131072})
    r = fit(long, tp=1, pp=1, gpus_per_host=1, gpu_memory_gib=46, max_model_len=100_000)
    assert any("holds 87,648 tokens, less than one sequence" in p for p in r.problems)


# ---------------------------------------------------------------- suggest


def test_suggest_32b_on_the_l20_hosts_is_one_gpu() -> None:
    r = suggest(shape(Q32), 4, 46, 2, 4096)
    assert (r.tp, r.pp) == (1, 1) and r.fits


def test_suggest_prefers_tp_inside_a_host() -> None:
    # 7B bf16 (14.19 GiB) does not fit a 16 GiB GPU (14.4 GiB budget); TP 2 does
    assert (suggest(shape(Q7), 4, 16, 2, 32768).tp, suggest(shape(Q7), 4, 16, 2, 32768).pp) == (2, 1)
    # 32B GPTQ on 10 GiB GPUs: TP 2 is short; TP 4 on one host, not TP 1 x PP 3 on 3 of its GPUs
    r = suggest(shape(Q32), 4, 10, 1, 4096)
    assert (r.tp, r.pp) == (4, 1) and r.fits


def test_suggest_puts_pp_across_hosts() -> None:
    # Llama-3.1-70B bf16 (131.4 GiB) on hosts of 4 x 24 GiB: one host is too small; TP 4 x PP 2
    # (TP inside each host, PP across the two) before TP 8 across them
    r = suggest(shape(L70), 4, 24, 2, 8192)
    assert (r.tp, r.pp) == (4, 2) and r.fits


def test_suggest_when_nothing_fits() -> None:
    r = suggest(shape(Q32), 4, 4, 2, 4096)
    assert not r.fits and (r.tp, r.pp) == (4, 2)
    assert "leave no room for the KV cache" in r.problems[0]


# ---------------------------------------------------------------- configs it cannot read


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"num_attention_heads": None}, "missing key 'num_attention_heads'"),
        ({"intermediate_size": "27648"}, "'intermediate_size' must be a positive integer"),
        ({"num_local_experts": 8}, "mixture-of-experts"),
        ({"quantization_config": {"quant_method": "bitsandbytes"}}, "'bitsandbytes' is not supported"),
        ({"quantization_config": {"quant_method": "gptq", "group_size": 128}}, "quantization_config.bits"),
        ({"torch_dtype": "int8"}, "'torch_dtype'"),
    ],
)
def test_unreadable_configs_name_the_key(change: dict[str, Any], message: str) -> None:
    data = {k: v for k, v in {**config(Q32), **change}.items() if v is not None}
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        ModelShape.from_config(data)


def test_explicit_head_dim_and_nested_text_config() -> None:
    s = ModelShape.from_config({**config(Q7), "head_dim": 64})
    assert s.head_dim == 64 and s.kv_bytes_per_token() == 2 * 28 * 4 * 64 * 2
    nested = ModelShape.from_config({"architectures": ["X"], "text_config": config(Q7)})
    assert nested.params == shape(Q7).params


# ---------------------------------------------------------------- property


@st.composite
def valid_shapes(draw: st.DrawFn) -> ModelShape:
    """Shapes for which TP 1..8 are all valid: heads a multiple of 8, KV heads 1..8 dividing them,
    intermediate and per-GPU attention widths whole groups at TP 8."""
    heads = 8 * draw(st.integers(1, 8))
    head_dim = draw(st.sampled_from([64, 128]))
    quant = draw(
        st.sampled_from(
            [
                Quantization(),
                Quantization("fp8", 8),
                Quantization("gptq", 4, 64),
                Quantization("awq", 4, 32),
                Quantization("gptq", 8, None),
                Quantization("gptq", 3, 64),
            ]
        )
    )
    return ModelShape(
        name="gen",
        model_type="llama",
        layers=draw(st.integers(1, 96)),
        hidden_size=heads * head_dim,
        heads=heads,
        kv_heads=draw(st.sampled_from([k for k in (1, 2, 4, 8) if heads % k == 0])),
        head_dim=head_dim,
        intermediate_size=512 * draw(st.integers(1, 64)),
        vocab_size=draw(st.integers(1000, 260_000)),
        tie_word_embeddings=draw(st.booleans()),
        max_position_embeddings=None,
        torch_dtype="bfloat16",
        quantization=quant,
        qkv_bias=draw(st.booleans()),
    )


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_shapes(), st.sampled_from([1, 2, 4]), st.sampled_from([1, 2, 4, 8]))
def test_weights_per_gpu_never_grow_when_tp_or_pp_doubles(s: ModelShape, tp: int, pp: int) -> None:
    pp = min(pp, max(1, s.layers // 2))

    def weights(t: int, p: int) -> int:
        r = fit(s, tp=t, pp=p, gpus_per_host=t * p, gpu_memory_gib=10_000, max_model_len=16)
        assert r.fits, r.problems
        return r.weights_bytes_per_gpu

    base = weights(tp, pp)
    assert weights(2 * tp, pp) <= base
    if 2 * pp <= s.layers:
        assert weights(tp, 2 * pp) <= base
