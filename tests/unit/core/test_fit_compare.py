"""`orchestrate plan --model-config config.json --compare`: the ways of using all of an inventory's
GPUs side by side (one engine TP x PP, R replicas x TP, DP x TP for MoE models), checked by the fit
model of orchestrate/core/fit.py.

Configs (tests/fixtures/model-configs/): Qwen2.5-32B-Instruct-GPTQ-Int4 as test_fit.py reads it;
Mixtral-8x7B-v0.1.json is the config.json of mistralai/Mixtral-8x7B-v0.1, taken verbatim from the
GitHub mirror of that Hugging Face repository (yangulei/Mixtral-8x7B, config.json at commit
2e54f233da37e9911a9b5a45f83df0b734337bb4). The reference inventory (inventory/l20.yaml) is 2 hosts
x 4 L20 at 45 GiB, TP 4 x PP 2, max_model_len 4096, gpu_memory_utilization 0.90.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from click.testing import CliRunner

from orchestrate import cli as cli_mod
from orchestrate.cli.options import load_plan
from orchestrate.core.fit import (
    BLOCK_SIZE,
    GIB,
    OVERHEAD_GIB,
    LayoutFit,
    ModelShape,
    compare,
    fit,
    stage_bytes,
)
from orchestrate.ops import preflight
from tests import FIXTURES, ROOT

CONFIGS = FIXTURES / "model-configs"
L20 = str(ROOT / "inventory" / "l20.yaml")
Q32 = "Qwen2.5-32B-Instruct-GPTQ-Int4"
MIXTRAL = "Mixtral-8x7B-v0.1"


def config(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((CONFIGS / f"{name}.json").read_text())
    return data


def shape(name: str) -> ModelShape:
    return ModelShape.from_config(config(name), name=name)


def l20_rows(name: str = Q32) -> tuple[LayoutFit, ...]:
    """compare() on the l20 hosts with what the inventory says (45 GiB, 0.90, 4096, TP 4 x PP 2)."""
    return compare(
        shape(name),
        n_hosts=2,
        gpus_per_host=4,
        gpu_memory_gib=45,
        gpu_memory_utilization=0.9,
        max_model_len=4096,
        current=(4, 2),
        interconnect="ethernet",
    )


def row(rows: tuple[LayoutFit, ...], label: str) -> LayoutFit:
    return next(r for r in rows if r.label == label)


def invoke(*args: str) -> Any:
    res = CliRunner().invoke(cli_mod.cli, list(args))
    assert res.exit_code == 0, (res.output, res.exception)
    return res


# ---------------------------------------------------------------- the TP x PP row is today's fit report


def test_tp_pp_row_is_the_fit_report_plan_model_config_prints() -> None:
    plan = load_plan(L20)
    assert plan.gpu_memory_gib == 45 and (plan.tensor_parallel, plan.pipeline_parallel) == (4, 2)
    today = preflight.fit_report(plan, config(Q32), plan.gpu_memory_gib)  # behind plan --model-config
    first = l20_rows()[0]
    assert first.label == "TP 4 x PP 2" and first.current and first.kind == "tp_pp" and first.replicas == 1
    # the same report shape for shape (same name too: the inventory's served name is the model's)
    assert first.report == today
    assert first.weights_bytes_per_gpu == today.weights_bytes_per_gpu
    assert first.kv_tokens_per_replica == first.kv_tokens_total == today.kv_tokens
    assert first.max_concurrency_per_replica == first.max_concurrency_total == today.max_concurrency
    # by hand (test_fit.py has the per-layer arithmetic): 2,416,601,088 B of weights on the last stage;
    # 45 GiB x 0.9 - weights - 2 GiB overhead, in 16-token blocks of 32 KiB per token
    free = int(45 * 0.9 * GIB) - 2_416_601_088 - int(OVERHEAD_GIB * GIB)
    assert today.kv_tokens == free // (32_768 * BLOCK_SIZE) * BLOCK_SIZE == 1_187_808

    # and what both commands print: the numbers of `plan --model-config` are the row's
    fit_text = invoke("plan", L20, "--model-config", str(CONFIGS / f"{Q32}.json")).output
    text = invoke("plan", L20, "--model-config", str(CONFIGS / f"{Q32}.json"), "--compare").output
    line = next(ln for ln in text.splitlines() if ln.startswith("TP 4 x PP 2 *"))
    for figure in ("2.25 GiB", f"{today.kv_tokens:,}", f"{today.max_concurrency:.2f}"):
        assert figure in fit_text and figure in line, figure
    data = json.loads(
        invoke("--output", "json", "plan", L20, "--model-config", str(CONFIGS / f"{Q32}.json")).output
    )
    compared = json.loads(
        invoke(
            "--output", "json", "plan", L20, "--model-config", str(CONFIGS / f"{Q32}.json"), "--compare"
        ).output
    )
    current = compared["layouts"][0]
    assert current["current"] and (current["tp"], current["pp"]) == (data["fit"]["tp"], data["fit"]["pp"])
    assert current["weights_bytes_per_gpu"] == data["fit"]["weights_bytes_per_gpu"]
    assert current["kv_tokens_total"] == current["kv_tokens_per_replica"] == data["fit"]["kv_tokens"]
    assert current["max_concurrency_total"] == data["fit"]["max_concurrency"]


def test_dense_numbers_of_the_fit_report_did_not_move() -> None:
    """MoE support left the dense arithmetic alone: the 32B on one 46 GiB L20, as test_fit has it."""
    r = fit(shape(Q32), tp=1, pp=1, gpus_per_host=4, gpu_memory_gib=46, max_model_len=4096)
    assert r.weights_bytes_per_gpu == 19_328_804_864 and r.kv_tokens == 87_648 and r.dp == 1
    assert not shape(Q32).is_moe and shape(Q32).active_params == shape(Q32).params


# ---------------------------------------------------------------- replicas


def test_two_replicas_of_tp4_against_one_engine_of_tp4_x_pp2() -> None:
    rows = l20_rows()
    pp2, two = row(rows, "TP 4 x PP 2"), row(rows, "2 x TP 4")
    alone = fit(shape(Q32), tp=4, pp=1, gpus_per_host=4, gpu_memory_gib=45, max_model_len=4096)
    assert two.kind == "replicas" and two.replicas == 2 and two.gpus == pp2.gpus == 8
    assert two.gpus_per_replica == pp2.gpus_per_replica // 2 == 4
    assert two.report == alone  # each replica is TP 4 on its own host
    assert two.weights_bytes_per_gpu == alone.weights_bytes_per_gpu
    assert two.kv_tokens_per_replica == alone.kv_tokens
    assert two.kv_tokens_total == 2 * alone.kv_tokens
    assert two.max_concurrency_total == 2 * two.max_concurrency_per_replica == two.kv_tokens_total / 4096

    # What the model implies: a replica's GPU holds all 64 layers (twice the weights of a PP stage's
    # 32, less one copy of the embeddings) and their KV cache, twice the bytes per token. Eight GPUs
    # either way, so the total KV cache differs by the extra weights, at the PP stage's bytes per token.
    kv_pp = pp2.report.kv_bytes_per_token
    assert two.report.kv_bytes_per_token == 2 * kv_pp
    extra = two.weights_bytes_per_gpu - pp2.weights_bytes_per_gpu
    assert extra > 0
    free_pp, free_two = pp2.report.limiting_stage.kv_cache_bytes, two.report.limiting_stage.kv_cache_bytes
    assert free_pp - free_two == extra
    assert pp2.kv_tokens_total == free_pp // (kv_pp * BLOCK_SIZE) * BLOCK_SIZE
    assert two.kv_tokens_total == 2 * (free_two // (2 * kv_pp * BLOCK_SIZE) * BLOCK_SIZE)
    # up to the rounding to whole blocks (< 1 block for the PP engine, < 2 for the two replicas)
    assert abs((pp2.kv_tokens_total - two.kv_tokens_total) - extra / kv_pp) < 3 * BLOCK_SIZE
    assert two.max_concurrency_total < pp2.max_concurrency_total
    assert "no inter-host traffic" in two.note and "PP across ethernet" in pp2.note


def test_every_row_uses_all_gpus_and_replicas_stay_inside_a_host() -> None:
    rows = l20_rows()
    assert [r.label for r in rows] == ["TP 4 x PP 2", "TP 8 x PP 1", "2 x TP 4", "4 x TP 2", "8 x TP 1"]
    assert all(r.gpus == 8 for r in rows) and sum(r.current for r in rows) == 1
    for r in rows:
        if r.kind == "replicas":
            assert r.report.hosts == 1 and r.report.gpus == r.gpus_per_replica
    # fewer GPUs per replica: more weights per GPU, so less KV cache in all
    totals = [row(rows, f"{n} x TP {8 // n}").kv_tokens_total for n in (2, 4, 8)]
    assert totals == sorted(totals, reverse=True)
    assert "TP across ethernet" in row(rows, "TP 8 x PP 1").note


def test_replicas_of_whole_hosts_on_four_hosts() -> None:
    rows = compare(
        shape(Q32), n_hosts=4, gpus_per_host=4, gpu_memory_gib=45, max_model_len=4096, current=(4, 4)
    )
    assert [r.label for r in rows][:2] == ["TP 4 x PP 4", "TP 16 x PP 1"]
    two = row(rows, "2 x TP 4 x PP 2")
    assert two.gpus == 16 and two.gpus_per_replica == 8 and two.report.hosts == 2
    one = fit(shape(Q32), tp=4, pp=2, gpus_per_host=4, gpu_memory_gib=45, max_model_len=4096)
    assert two.report == one and two.kv_tokens_total == 2 * one.kv_tokens
    assert "replicas of PP 2" in two.note


def test_one_host_lists_each_layout_once() -> None:
    rows = compare(shape(Q32), n_hosts=1, gpus_per_host=4, gpu_memory_gib=45, max_model_len=4096)
    assert [r.label for r in rows] == ["TP 4 x PP 1", "2 x TP 2", "4 x TP 1"]
    assert rows[0].note == "one engine, TP inside the host" and not any(r.current for r in rows)


# ---------------------------------------------------------------- what does not fit


def test_a_layout_that_does_not_fit_says_so() -> None:
    rows = l20_rows(MIXTRAL)
    tp2 = row(rows, "4 x TP 2")
    # Mixtral in bf16 is 86.99 GiB: half of it per GPU is more than 45 GiB x 0.9 - 2 GiB
    assert tp2.weights_bytes_per_gpu > int(45 * 0.9 * GIB) - int(OVERHEAD_GIB * GIB)
    assert not tp2.fits and tp2.kv_tokens_total == 0 and tp2.max_concurrency_total == 0
    assert tp2.note.startswith("does not fit: ") and "leave no room for the KV cache" in tp2.note
    assert not row(rows, "8 x TP 1").fits and row(rows, "2 x TP 4").fits

    res = invoke("plan", L20, "--model-config", str(CONFIGS / f"{MIXTRAL}.json"), "--compare")
    line = next(ln for ln in res.output.splitlines() if ln.startswith("4 x TP 2 "))
    assert " no " in line and "does not fit: " in line
    data = json.loads(
        invoke(
            "--output", "json", "plan", L20, "--model-config", str(CONFIGS / f"{MIXTRAL}.json"), "--compare"
        ).output
    )
    bad = next(lay for lay in data["layouts"] if lay["layout"] == "4 x TP 2")
    assert bad["fits"] is False and bad["problems"] and bad["kv_tokens_total"] == 0


def test_a_layout_vllm_refuses_is_a_problem_too() -> None:
    # 40 attention heads: TP 8 divides them, TP 3 would not; 3 GPUs per host leave TP 3 only
    rows = compare(shape(Q32), n_hosts=2, gpus_per_host=3, gpu_memory_gib=45, max_model_len=4096)
    bad = [r for r in rows if not r.fits]
    assert bad and all("does not divide the 40 attention heads" in r.note for r in bad)
    assert row(rows, "6 x TP 1").fits


# ---------------------------------------------------------------- MoE and data parallel


def test_reads_the_mixtral_config() -> None:
    s = shape(MIXTRAL)
    assert s.is_moe and (s.experts, s.experts_per_token, s.expert_intermediate_size) == (8, 2, 14336)
    assert (s.layers, s.hidden_size, s.heads, s.kv_heads, s.head_dim) == (32, 4096, 32, 8, 128)
    # Mistral's release post: 46.7B parameters in all, 12.9B used per token
    assert round(s.params / 1e9, 1) == 46.7 and round(s.active_params / 1e9, 1) == 12.9
    # per layer: attention 4096 * (4096 + 2 * 1024) + 4096 * 4096, 8 experts of 3 * 4096 * 14336,
    # two norms and the router 4096 * 8
    per_layer = 4096 * 6144 + 4096 * 4096 + 8 * 3 * 4096 * 14336 + 2 * 4096 + 4096 * 8
    assert s.params == 32 * per_layer + 2 * 32000 * 4096 + 4096


def test_dp_appears_only_for_moe_models() -> None:
    assert not any(r.kind == "dp" for r in l20_rows(Q32))
    dense = compare(
        shape("Llama-3.1-70B-Instruct"), n_hosts=2, gpus_per_host=4, gpu_memory_gib=45, max_model_len=4096
    )
    assert not any(r.kind == "dp" for r in dense)
    moe = [r for r in l20_rows(MIXTRAL) if r.kind == "dp"]
    assert [r.label for r in moe] == ["DP 2 x TP 4", "DP 4 x TP 2", "DP 8 x TP 1"]
    assert all(r.report.dp == r.replicas and r.gpus == 8 for r in moe)
    text = invoke("plan", L20, "--model-config", str(CONFIGS / f"{Q32}.json"), "--compare").output
    assert not any(ln.startswith("DP ") for ln in text.splitlines()) and "DP rank" not in text
    text = invoke("plan", L20, "--model-config", str(CONFIGS / f"{MIXTRAL}.json"), "--compare").output
    assert "DP 2 x TP 4" in text and "--data-parallel-size" in text


def test_dp_splits_the_experts_over_all_gpus() -> None:
    rows = l20_rows(MIXTRAL)
    s = shape(MIXTRAL)
    dp2, two = row(rows, "DP 2 x TP 4"), row(rows, "2 x TP 4")
    # attention and embeddings TP 4 inside each rank, experts split over DP x TP = 8 GPUs
    assert dp2.report.expert_tp == 8 and two.report.expert_tp == 4
    assert dp2.weights_bytes_per_gpu == stage_bytes(s, 4, 32, first=True, last=True, expert_tp=8)
    assert two.weights_bytes_per_gpu == stage_bytes(s, 4, 32, first=True, last=True)
    # the same attention, so the same KV bytes per token; the freed weight memory is KV cache
    assert dp2.report.kv_bytes_per_token == two.report.kv_bytes_per_token
    saved = two.weights_bytes_per_gpu - dp2.weights_bytes_per_gpu
    assert saved > 0
    assert dp2.report.limiting_stage.kv_cache_bytes - two.report.limiting_stage.kv_cache_bytes == saved
    assert dp2.kv_tokens_total > two.kv_tokens_total
    # 4 x TP 2 does not fit, DP 4 x TP 2 does: the experts are no longer on 2 GPUs but on 8
    assert not row(rows, "4 x TP 2").fits and row(rows, "DP 4 x TP 2").fits
    assert "experts split over all 8 GPUs" in dp2.note and "across ethernet" in dp2.note


def test_moe_tp_pp_uses_the_same_model() -> None:
    r = row(l20_rows(MIXTRAL), "TP 4 x PP 2").report
    assert r == fit(shape(MIXTRAL), tp=4, pp=2, gpus_per_host=4, gpu_memory_gib=45, max_model_len=4096)
    assert r.dp == 1 and r.expert_tp == 4 and r.stage_layers == (16, 16)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"num_experts_per_tok": None}, "'num_experts_per_tok' is missing"),
        ({"shared_expert_intermediate_size": 5632}, "'shared_expert_intermediate_size'"),
        ({"num_experts_per_tok": 9}, "more than the 8 experts"),
        ({"decoder_sparse_step": 2}, "'decoder_sparse_step'"),
    ],
)
def test_moe_configs_it_cannot_read_name_the_key(change: dict[str, Any], message: str) -> None:
    data = {k: v for k, v in {**config(MIXTRAL), **change}.items() if v is not None}
    with pytest.raises(ValueError, match="mixture-of-experts") as err:
        ModelShape.from_config(data)
    assert message in str(err.value)


# ---------------------------------------------------------------- the command


def test_compare_text_table() -> None:
    text = invoke("plan", L20, "--model-config", str(CONFIGS / f"{Q32}.json"), "--compare").output
    lines = text.splitlines()
    assert lines[0].startswith(f"{Q32}: 32.76B parameters")
    assert "2 hosts x 4 GPUs of 45 GiB" in lines[1] and "max_model_len 4,096" in lines[1]
    header = next(ln for ln in lines if ln.startswith("layout"))
    for column in (
        "GPUs",
        "weights/GPU",
        "KV tokens/replica",
        "KV tokens total",
        "conc/replica",
        "conc total",
    ):
        assert column in header
    assert any(ln.startswith("2 x TP 4 ") for ln in lines)
    assert "* the inventory's layout" in text and "fewest GPUs that fit: TP 1 x PP 1" in text


def test_compare_json() -> None:
    out = invoke("--output", "json", "plan", L20, "--model-config", str(CONFIGS / f"{Q32}.json"), "--compare")
    data = json.loads(out.output)
    assert (data["hosts"], data["gpus_per_host"], data["max_model_len"]) == (2, 4, 4096)
    layouts = {lay["layout"]: lay for lay in data["layouts"]}
    assert list(layouts) == ["TP 4 x PP 2", "TP 8 x PP 1", "2 x TP 4", "4 x TP 2", "8 x TP 1"]
    two = layouts["2 x TP 4"]
    assert (two["kind"], two["replicas"], two["gpus"], two["gpus_per_replica"]) == ("replicas", 2, 8, 4)
    assert two["kv_tokens_total"] == 2 * two["kv_tokens_per_replica"]
    assert two["weights_gib_per_gpu"] == round(two["weights_bytes_per_gpu"] / GIB, 2)
    assert data["suggested"] == {"tp": 1, "pp": 1}


def test_compare_without_a_model_config_is_a_usage_error() -> None:
    from orchestrate.errors import UsageError

    res = CliRunner().invoke(cli_mod.cli, ["plan", L20, "--compare"])
    assert isinstance(res.exception, UsageError) and "--model-config" in str(res.exception)
