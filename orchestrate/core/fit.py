"""Fit planning: does a model fit a TP x PP layout of GPUs, and how much KV cache is left for requests?

Pure arithmetic from a Hugging Face `config.json`, modelled on how vLLM places a decoder-only model:

* tensor parallel (TP) splits every linear layer, the embeddings and lm_head across the GPUs of a
  stage; norms are replicated. KV heads are split too, or replicated once TP exceeds their number;
* pipeline parallel (PP) gives each stage a contiguous run of layers, split as vLLM's
  `get_pp_indices` does; the first stage also holds the embeddings, the last one lm_head;
* each GPU's KV cache is what `gpu_memory_utilization` leaves after weights and `OVERHEAD_GIB`, in
  blocks of `BLOCK_SIZE` tokens; the engine's capacity is the smallest GPU's;
* mixture-of-experts layers (Mixtral, Qwen3-MoE style: routed experts in every layer) hold every
  expert on every GPU, each expert's MLP split like a dense one. Under vLLM's data parallel mode
  (`--data-parallel-size`) attention is TP-split inside each DP rank while the experts are split over
  all DP x TP GPUs (vLLM's default for MoE; expert parallelism moves the same bytes around).

`ModelShape.from_config(config)` reads the config, `fit(shape, tp=..., pp=..., ...)` checks one layout,
`suggest(...)` finds the smallest layout that fits and `compare(...)` puts the ways of using all of an
inventory's GPUs side by side (one engine TP x PP, R replicas x TP, DP x TP for MoE models). Nothing
here touches a GPU, a file or the network.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

GIB = 1024**3
KIB = 1024

# Bytes per value of everything that is not quantized: embeddings, lm_head, norms, biases and (by
# default) the KV cache. vLLM serves float16/bfloat16 checkpoints as they are and, with dtype=auto,
# float32 checkpoints in 16 bits too.
DENSE_BYTES = 2

# Per-GPU memory inside the gpu_memory_utilization budget that is neither weights nor KV cache.
# vLLM sizes the KV cache after a profiling run: one dummy forward pass over max_num_batched_tokens
# tokens. Its peak (activations, logits, sampler buffers) plus memory PyTorch does not allocate (CUDA
# context, NCCL and cuBLAS workspaces) is subtracted from the budget before the KV cache is carved
# out. For 7B-70B decoders at a few thousand batched tokens that is typically a few hundred MiB to
# about 1.5 GiB; 2 GiB covers it without hiding much KV cache. It is an estimate, not a measurement:
# vLLM's startup log ("the rest of the memory reserved for KV Cache") has the real figure. CUDA graphs
# are captured after the KV cache is sized and come out of the 1 - utilization headroom, not from here.
OVERHEAD_GIB = 2.0

# A profiling pass longer than this (chunked prefill off: max_num_batched_tokens = max_model_len) may
# need more activation memory than OVERHEAD_GIB; the report says so.
OVERHEAD_TOKENS = 8192

BLOCK_SIZE = 16  # vLLM's default --block-size: the KV cache is handed out 16 tokens at a time
VOCAB_PADDING = 64  # vLLM pads the vocabulary rows of embeddings and lm_head to a multiple of 64

QuantMethod = Literal["none", "gptq", "awq", "fp8"]

_DTYPES = ("float16", "bfloat16", "float32", "half", "float", "fp16", "bf16")
_MOE_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_intermediate_size")
_EXPERT_COUNT_KEYS = ("num_experts", "num_local_experts", "n_routed_experts")
_SHARED_EXPERT_KEYS = ("shared_expert_intermediate_size", "n_shared_experts", "num_shared_experts")


# ---------------------------------------------------------------- model shape


@dataclass(frozen=True)
class Quantization:
    """How the linear layers (attention q/k/v/o, MLP gate/up/down) are stored."""

    method: QuantMethod = "none"
    bits: int = 16
    group_size: int | None = None  # inputs per scale/zero group; None: one group per output channel
    desc_act: bool = False
    sym: bool = True

    @classmethod
    def from_config(cls, qc: Any) -> Quantization:
        if qc is None:
            return cls()
        if not isinstance(qc, Mapping):
            raise ValueError("config.json: 'quantization_config' must be a mapping")
        method = str(qc.get("quant_method", "")).lower()
        if method == "fp8":
            return cls(method="fp8", bits=8)
        if method not in ("gptq", "awq"):
            raise ValueError(
                f"config.json: quantization_config.quant_method {method or '(missing)'!r} is not "
                "supported by fit planning (it reads gptq, awq and fp8)"
            )
        bits = _int(qc, "w_bit" if "bits" not in qc and "w_bit" in qc else "bits", "quantization_config.")
        if bits not in (2, 3, 4, 8):
            raise ValueError(f"config.json: quantization_config.bits must be 2, 3, 4 or 8, got {bits}")
        group = qc.get("group_size", qc.get("q_group_size", -1))
        if not isinstance(group, int) or isinstance(group, bool) or group == 0 or group < -1:
            raise ValueError("config.json: quantization_config.group_size must be -1 or a positive integer")
        return cls(
            method="gptq" if method == "gptq" else "awq",
            bits=bits,
            group_size=None if group == -1 else group,
            desc_act=bool(qc.get("desc_act", False)),
            sym=bool(qc.get("sym", not qc.get("zero_point", False))),
        )

    def linear_bytes(self, inputs: int, outputs: int) -> int:
        """Bytes of one linear layer with `inputs` x `outputs` weights on one GPU.

        GPTQ/AWQ pack `bits`-bit weights into int32 words and keep, per group of `group_size` inputs
        and per output, one 16-bit scale and one `bits`-bit zero point (stored even when symmetric).
        The GPTQ act-order index (one int32 per input) is left out: vLLM drops it without desc_act,
        and it is under 0.1% of the layer anyway. fp8 is one byte per weight (its scales are tiny).
        """
        weights = inputs * outputs
        if self.method == "none":
            return weights * DENSE_BYTES
        if self.method == "fp8":
            return weights
        groups = math.ceil(inputs / self.group_size) if self.group_size else 1
        packed = math.ceil(weights * self.bits / 8)
        return packed + groups * outputs * DENSE_BYTES + math.ceil(groups * outputs * self.bits / 8)

    def describe(self) -> str:
        if self.method == "none":
            return "not quantized (16-bit weights)"
        if self.method == "fp8":
            return "FP8 weights"
        group = f"group {self.group_size}" if self.group_size else "per-channel"
        return f"{self.method.upper()} {self.bits}-bit ({group}); embeddings and lm_head 16-bit"


@dataclass(frozen=True)
class ModelShape:
    """The parts of a Llama/Qwen2-style decoder's config.json that decide memory."""

    name: str
    model_type: str
    layers: int
    hidden_size: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tie_word_embeddings: bool
    max_position_embeddings: int | None
    torch_dtype: str
    quantization: Quantization = Quantization()
    qkv_bias: bool = False  # Qwen2 has biases on q/k/v; Llama only with attention_bias: true
    max_context: int | None = None  # longest max_model_len vLLM accepts (rope scaling included)
    # mixture of experts (0: a dense model): routed experts per layer, how many each token uses, and
    # each expert's MLP width (Mixtral: intermediate_size; Qwen-MoE: moe_intermediate_size)
    experts: int = 0
    experts_per_token: int = 0
    expert_intermediate_size: int = 0

    @classmethod
    def from_config(cls, config: Mapping[str, Any], name: str | None = None) -> ModelShape:
        """Read a config.json dict; raises ValueError naming the key it cannot use."""
        if not isinstance(config, Mapping):
            raise ValueError("config.json must be a JSON object")
        if "num_hidden_layers" not in config and isinstance(config.get("text_config"), Mapping):
            config = {**config["text_config"], "quantization_config": config.get("quantization_config")}
        experts, per_token, expert_width = _experts(config)
        heads = _int(config, "num_attention_heads")
        hidden = _int(config, "hidden_size")
        head_dim = config.get("head_dim")
        if head_dim is None:
            if hidden % heads:
                raise ValueError(
                    f"config.json: no 'head_dim', and hidden_size {hidden} is not a multiple of "
                    f"num_attention_heads {heads}"
                )
            head_dim = hidden // heads
        kv_heads = config.get("num_key_value_heads")
        max_pos = config.get("max_position_embeddings")
        model_type = str(config.get("model_type") or "unknown")
        return cls(
            name=name or _name(config),
            model_type=model_type,
            layers=_int(config, "num_hidden_layers"),
            hidden_size=hidden,
            heads=heads,
            kv_heads=heads if kv_heads is None else _int(config, "num_key_value_heads"),
            head_dim=_int({"head_dim": head_dim}, "head_dim"),
            intermediate_size=_int(config, "intermediate_size"),
            vocab_size=_int(config, "vocab_size"),
            tie_word_embeddings=_bool(config, "tie_word_embeddings", False),
            max_position_embeddings=None if max_pos is None else _int(config, "max_position_embeddings"),
            torch_dtype=_dtype(config),
            quantization=Quantization.from_config(config.get("quantization_config")),
            qkv_bias=_bool(config, "attention_bias", model_type == "qwen2"),
            max_context=_max_context(config),
            experts=experts,
            experts_per_token=per_token,
            expert_intermediate_size=expert_width,
        )

    @property
    def is_moe(self) -> bool:
        return self.experts > 0

    @property
    def q_size(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def attention_params_per_layer(self) -> int:
        """q, k, v and o projections."""
        h = self.hidden_size
        return h * (self.q_size + 2 * self.kv_size) + self.q_size * h

    @property
    def mlp_params_per_layer(self) -> int:
        """The MLP's gate, up and down projections: every expert's in a mixture-of-experts layer."""
        if self.is_moe:
            return self.experts * 3 * self.hidden_size * self.expert_intermediate_size
        return 3 * self.hidden_size * self.intermediate_size

    @property
    def linear_params_per_layer(self) -> int:
        """q, k, v, o projections plus the MLP's gate, up and down projections."""
        return self.attention_params_per_layer + self.mlp_params_per_layer

    @property
    def small_params_per_layer(self) -> int:
        """Two RMSNorm weights, q/k/v biases where the model has them, and an MoE layer's router
        (hidden x experts, kept in 16 bits and replicated on every GPU)."""
        bias = self.q_size + 2 * self.kv_size if self.qkv_bias else 0
        return 2 * self.hidden_size + bias + self.hidden_size * self.experts

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def params(self) -> int:
        """Embeddings + layers + final norm + lm_head (unless tied to the embeddings)."""
        per_layer = self.linear_params_per_layer + self.small_params_per_layer
        heads = 1 if self.tie_word_embeddings else 2
        return self.layers * per_layer + heads * self.embedding_params + self.hidden_size

    @property
    def active_params(self) -> int:
        """Parameters one token passes through: all of a dense model, the routed-to experts of an MoE."""
        if not self.is_moe:
            return self.params
        idle = self.experts - self.experts_per_token
        return self.params - self.layers * idle * 3 * self.hidden_size * self.expert_intermediate_size

    def kv_bytes_per_token(self, dtype_bytes: int = DENSE_BYTES) -> int:
        """K and V for every layer and KV head of one token, on one GPU holding the whole model."""
        return 2 * self.layers * self.kv_heads * self.head_dim * dtype_bytes


def _experts(config: Mapping[str, Any]) -> tuple[int, int, int]:
    """(experts, experts per token, expert MLP width) of an MoE config; (0, 0, 0) for a dense one.

    Read: routed experts in every decoder layer with standard attention (Mixtral, Qwen3-MoE). Refused
    with the key that says why: shared experts (Qwen2-MoE, DeepSeek), dense layers between the MoE
    ones, DeepSeek's latent attention."""
    moe = [k for k in _MOE_KEYS if config.get(k)]
    if not moe:
        return 0, 0, 0
    what = f"config.json: {moe[0]!r} marks a mixture-of-experts model"
    count = next((k for k in _EXPERT_COUNT_KEYS if config.get(k)), None)
    if count is None:
        raise ValueError(f"{what}, but it has no expert count ({', '.join(_EXPERT_COUNT_KEYS)})")
    if "num_experts_per_tok" not in config or config["num_experts_per_tok"] is None:
        raise ValueError(f"{what}, but 'num_experts_per_tok' is missing (fit planning needs it)")
    unread = [k for k in (*_SHARED_EXPERT_KEYS, "kv_lora_rank", "first_k_dense_replace") if config.get(k)]
    if config.get("mlp_only_layers"):
        unread.append("mlp_only_layers")
    if config.get("decoder_sparse_step", 1) not in (1, None):
        unread.append("decoder_sparse_step")
    if unread:
        raise ValueError(
            f"{what} with {unread[0]!r}; fit planning reads MoE models with routed experts in every "
            "layer and standard attention only (Mixtral, Qwen3-MoE), not shared experts, dense layers "
            "between MoE ones or latent attention"
        )
    experts, per_token = _int(config, count), _int(config, "num_experts_per_tok")
    if per_token > experts:
        raise ValueError(f"{what}: num_experts_per_tok {per_token} is more than the {experts} experts")
    width = "moe_intermediate_size" if config.get("moe_intermediate_size") else "intermediate_size"
    return experts, per_token, _int(config, width)


def _int(config: Mapping[str, Any], key: str, prefix: str = "") -> int:
    if key not in config or config[key] is None:
        raise ValueError(f"config.json: missing key {prefix + key!r} (fit planning needs it)")
    value = config[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"config.json: {prefix + key!r} must be a positive integer, got {value!r}")
    return value


def _bool(config: Mapping[str, Any], key: str, default: bool) -> bool:
    value = config.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ValueError(f"config.json: {key!r} must be true or false, got {value!r}")
    return value


def _dtype(config: Mapping[str, Any]) -> str:
    value = config.get("torch_dtype") or config.get("dtype") or "float32"  # float32: HF's default
    if not isinstance(value, str) or value.removeprefix("torch.") not in _DTYPES:
        raise ValueError(f"config.json: 'torch_dtype' {value!r} is not a 16- or 32-bit float type")
    return value.removeprefix("torch.")


def _name(config: Mapping[str, Any]) -> str:
    path = config.get("_name_or_path")
    if isinstance(path, str) and path.strip("/"):
        return path.rstrip("/").rsplit("/", 1)[-1]
    archs = config.get("architectures")
    if isinstance(archs, list) and archs and isinstance(archs[0], str):
        return archs[0]
    return str(config.get("model_type") or "model")


def _max_context(config: Mapping[str, Any]) -> int | None:
    """vLLM's limit on max_model_len: max_position_embeddings, stretched by linear/dynamic/YaRN rope
    scaling; llama3/longrope scaling is already part of max_position_embeddings."""
    limit = config.get("max_position_embeddings")
    if not isinstance(limit, int) or isinstance(limit, bool):
        return None
    rope = config.get("rope_scaling")
    if not isinstance(rope, Mapping):
        return limit
    kind = rope.get("rope_type", rope.get("type"))
    factor = rope.get("factor")
    if kind not in ("linear", "dynamic", "yarn") or not isinstance(factor, int | float):
        return limit
    if kind == "yarn" and isinstance(rope.get("original_max_position_embeddings"), int):
        limit = rope["original_max_position_embeddings"]
    return int(limit * factor)


# ---------------------------------------------------------------- per-GPU arithmetic


def stage_layers(layers: int, pp: int) -> tuple[int, ...]:
    """Layers per pipeline stage as vLLM's get_pp_indices splits them: evenly, with the remainder
    going one each to the stages before the last (which also runs the norm, lm_head and sampler)."""
    partitions = [layers // pp] * pp
    for i in range(2, layers % pp + 2):
        partitions[-i] += 1
    return tuple(partitions)


def kv_heads_per_gpu(kv_heads: int, tp: int) -> int:
    """KV heads each GPU holds: KV/TP, or 1 once TP reaches KV (vLLM then replicates them)."""
    return 1 if tp >= kv_heads else math.ceil(kv_heads / tp)


def layer_bytes(shape: ModelShape, tp: int, expert_tp: int | None = None) -> int:
    """Bytes of one decoder layer on one GPU of a TP group.

    An MoE layer keeps every expert on every GPU with its MLP split over `expert_tp` GPUs: the TP
    group (the default), or all DP x TP GPUs under vLLM's data parallel mode."""
    h, quant = shape.hidden_size, shape.quantization
    q = math.ceil(shape.heads / tp) * shape.head_dim
    kv = kv_heads_per_gpu(shape.kv_heads, tp) * shape.head_dim
    experts = shape.experts or 1
    width = shape.expert_intermediate_size if shape.is_moe else shape.intermediate_size
    inter = math.ceil(width / ((expert_tp or tp) if shape.is_moe else tp))
    linear = (
        quant.linear_bytes(h, q + 2 * kv)  # qkv_proj: column parallel, split by output
        + quant.linear_bytes(q, h)  # o_proj: row parallel, split by input
        + experts * quant.linear_bytes(h, 2 * inter)  # gate_up_proj (w13): column parallel
        + experts * quant.linear_bytes(inter, h)  # down_proj (w2): row parallel
    )
    # norms (replicated), q/k/v biases and the MoE router (replicated, not quantized)
    small = 2 * h + (q + 2 * kv if shape.qkv_bias else 0) + h * shape.experts
    return linear + small * DENSE_BYTES


def embedding_bytes(shape: ModelShape, tp: int) -> int:
    """One GPU's share of the embeddings (or of lm_head): 16-bit, padded vocabulary split by TP."""
    rows = math.ceil(shape.vocab_size / VOCAB_PADDING) * VOCAB_PADDING
    return math.ceil(rows / tp) * shape.hidden_size * DENSE_BYTES


def stage_bytes(
    shape: ModelShape, tp: int, layers: int, *, first: bool, last: bool, expert_tp: int | None = None
) -> int:
    """Weights on one GPU of a pipeline stage: its layers, plus embeddings on the first stage and
    the final norm and lm_head on the last (one copy when tied and both are the same stage)."""
    total = layers * layer_bytes(shape, tp, expert_tp)
    if first:
        total += embedding_bytes(shape, tp)
    if last:
        total += shape.hidden_size * DENSE_BYTES
        if not (shape.tie_word_embeddings and first):
            total += embedding_bytes(shape, tp)
    return total


def model_bytes(shape: ModelShape) -> int:
    """Weights of the whole model on one GPU."""
    return stage_bytes(shape, 1, shape.layers, first=True, last=True)


# ---------------------------------------------------------------- the report


@dataclass(frozen=True)
class StageFit:
    """One GPU of one pipeline stage (all GPUs of a stage hold the same amount)."""

    index: int
    layers: int
    weights_bytes: int
    kv_bytes_per_token: int
    kv_cache_bytes: int  # what is left for the KV cache; negative when the weights do not fit
    kv_tokens: int  # whole blocks of BLOCK_SIZE tokens


@dataclass(frozen=True)
class FitReport:
    shape: ModelShape
    tp: int
    pp: int
    gpus_per_host: int
    gpu_memory_gib: float
    gpu_memory_utilization: float
    overhead_gib: float
    max_model_len: int
    kv_cache_dtype_bytes: int
    stages: tuple[StageFit, ...]
    problems: tuple[str, ...] = ()  # any problem: vLLM would refuse this layout or run out of memory
    warnings: tuple[str, ...] = ()  # it works, but probably not what you want
    notes: tuple[str, ...] = ()
    # vLLM data-parallel ranks (--data-parallel-size) of TP x PP GPUs each; the numbers per GPU and
    # the KV cache are one rank's. An MoE model's experts are split over all DP x TP GPUs.
    dp: int = 1

    @property
    def fits(self) -> bool:
        return not self.problems

    @property
    def gpus(self) -> int:
        return self.dp * self.tp * self.pp

    @property
    def expert_tp(self) -> int:
        """GPUs each expert's MLP is split over: the TP group, or all DP x TP GPUs of a stage."""
        return self.dp * self.tp

    @property
    def layout(self) -> str:
        """'TP 4 x PP 2'; 'DP 2 x TP 4' (and ' x PP n' past one stage) under data parallel."""
        if self.dp > 1:
            return f"DP {self.dp} x TP {self.tp}" + (f" x PP {self.pp}" if self.pp > 1 else "")
        return f"TP {self.tp} x PP {self.pp}"

    @property
    def hosts(self) -> int:
        return math.ceil(self.gpus / self.gpus_per_host)

    @property
    def stage_layers(self) -> tuple[int, ...]:
        return tuple(s.layers for s in self.stages)

    @property
    def largest_stage(self) -> int:
        return max(self.stage_layers)

    @property
    def kv_heads_per_gpu(self) -> int:
        return kv_heads_per_gpu(self.shape.kv_heads, self.tp)

    @property
    def budget_bytes(self) -> int:
        return int(self.gpu_memory_gib * self.gpu_memory_utilization * GIB)

    @property
    def weights_bytes_per_gpu(self) -> int:
        """The fullest GPU's weights."""
        return max(s.weights_bytes for s in self.stages)

    @property
    def limiting_stage(self) -> StageFit:
        """The stage whose GPUs hold the fewest KV tokens (vLLM sizes every GPU's cache to it)."""
        return min(self.stages, key=lambda s: (not s.layers, s.kv_tokens, s.kv_cache_bytes, s.index))

    @property
    def kv_bytes_per_token(self) -> int:
        """KV bytes per token on one GPU of the limiting stage."""
        return self.limiting_stage.kv_bytes_per_token

    @property
    def kv_tokens(self) -> int:
        """Tokens the engine can keep cached: the smallest GPU's, as vLLM takes the minimum."""
        return self.limiting_stage.kv_tokens if self.limiting_stage.layers else 0

    @property
    def max_concurrency(self) -> float:
        """Full-length sequences (max_model_len tokens each) whose KV cache fits at once."""
        return self.kv_tokens / self.max_model_len

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(
            fits=self.fits,
            gpus=self.gpus,
            hosts=self.hosts,
            params=self.shape.params,
            model_bytes=model_bytes(self.shape),
            stage_layers=list(self.stage_layers),
            largest_stage=self.largest_stage,
            kv_heads_per_gpu=self.kv_heads_per_gpu,
            budget_bytes=self.budget_bytes,
            weights_bytes_per_gpu=self.weights_bytes_per_gpu,
            kv_bytes_per_token=self.kv_bytes_per_token,
            kv_tokens=self.kv_tokens,
            max_concurrency=round(self.max_concurrency, 2),
        )
        return data

    def lines(self) -> list[str]:
        s, tight = self.shape, self.limiting_stage
        where = f" (stage {tight.index}, the tightest)" if self.pp > 1 else ""
        active = (
            f" ({s.active_params / 1e9:.2f}B active: {s.experts_per_token} of {s.experts} experts per token)"
            if s.is_moe
            else ""
        )
        experts = f"; experts split over {self.expert_tp} GPUs" if s.is_moe and self.dp > 1 else ""
        conc = f"{self.max_concurrency:.2f}"
        if self.dp > 1:
            conc += f" per DP rank ({self.dp * self.max_concurrency:.2f} in all)"
        out = [
            f"{s.name}: {s.params / 1e9:.2f}B parameters{active}, {s.quantization.describe()}; "
            f"{_gib(model_bytes(s))} of weights in all",
            f"layout: {self.layout} = {_count(self.gpus, 'GPU')} on "
            f"{_count(self.hosts, 'host')} of {self.gpus_per_host} GPUs; layers per stage "
            f"{', '.join(map(str, self.stage_layers))}{experts}",
            f"weights per GPU: {_gib(self.weights_bytes_per_gpu)} (largest stage)",
            f"KV cache per GPU{where}: {self.gpu_memory_gib:g} GiB x {self.gpu_memory_utilization:.2f} "
            f"= {_gib(self.budget_bytes)} - {_gib(tight.weights_bytes)} weights - "
            f"{self.overhead_gib:.2f} GiB overhead = {_gib(tight.kv_cache_bytes)}; "
            f"{tight.kv_bytes_per_token / KIB:g} KiB per token (K and V x {tight.layers} layers x "
            f"{self.kv_heads_per_gpu} KV heads x {s.head_dim} x {self.kv_cache_dtype_bytes} B) = "
            f"{self.kv_tokens:,} tokens",
            f"max concurrency at {self.max_model_len:,} tokens per sequence: {conc}",
        ]
        out += [f"note: {n}" for n in self.notes]
        out += [f"warning: {w}" for w in self.warnings]
        out += [f"problem: {p}" for p in self.problems]
        out.append("fits" if self.fits else "does not fit")
        return out


def _count(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB"


# ---------------------------------------------------------------- checks


def _layout_problems(shape: ModelShape, tp: int, pp: int, gpus_per_host: int, dp: int = 1) -> list[str]:
    """Layouts vLLM (or the inventory's hosts) cannot run, whatever the memory."""
    problems = _tp_problems(shape, tp, dp * tp)
    if problems:
        problems[-1] += f" (TP sizes this model allows: {_tp_hint(shape)})"
    if pp > shape.layers:
        problems.append(f"PP {pp} is more than the {shape.layers} layers; every stage needs a layer")
    world = dp * tp * pp
    if world > gpus_per_host and world % gpus_per_host:
        what = "DP x TP x PP" if dp > 1 else "TP x PP"
        problems.append(f"{what} = {world} GPUs do not fill whole hosts of {gpus_per_host} GPUs")
    elif world > gpus_per_host and gpus_per_host % tp and tp % gpus_per_host:
        problems.append(
            f"TP {tp} cannot be laid out on hosts with {gpus_per_host} GPUs each; a tensor-parallel "
            "group must fill whole hosts or divide one host"
        )
    return problems


def _tp_problems(shape: ModelShape, tp: int, expert_tp: int | None = None) -> list[str]:
    """What vLLM refuses about splitting this model over a TP group of `tp` GPUs, its experts (MoE)
    over `expert_tp` GPUs (default: the TP group)."""
    problems = []
    if shape.heads % tp:
        problems.append(
            f"TP {tp} does not divide the {shape.heads} attention heads; vLLM needs heads % TP == 0"
        )
    if shape.kv_heads % tp and tp % shape.kv_heads:
        problems.append(
            f"TP {tp} neither divides the {shape.kv_heads} KV heads nor is a multiple of them; vLLM "
            "splits KV heads across TP or replicates them, never both"
        )
    split = expert_tp or tp
    if shape.is_moe and shape.expert_intermediate_size % split:
        over = f"TP {tp}" if split == tp else f"DP x TP = {split}"
        problems.append(
            f"{over} does not divide the experts' intermediate size {shape.expert_intermediate_size}"
        )
    elif not shape.is_moe and shape.intermediate_size % tp:
        problems.append(f"TP {tp} does not divide intermediate_size {shape.intermediate_size}")
    return problems + _group_problems(shape, tp, split)


def _group_problems(shape: ModelShape, tp: int, expert_tp: int | None = None) -> list[str]:
    """GPTQ/AWQ kernels need each GPU's inputs of a row-parallel layer in whole groups."""
    group = shape.quantization.group_size
    split = expert_tp or tp
    if shape.quantization.method not in ("gptq", "awq") or not group or split == 1:
        return []
    over = f"TP {tp}" if split == tp else f"DP x TP = {split}"
    inputs = [("o_proj", f"TP {tp}", shape.q_size / tp)]
    if shape.is_moe:
        inputs.append(("the experts' down_proj", over, shape.expert_intermediate_size / split))
    else:
        inputs.append(("down_proj", f"TP {tp}", shape.intermediate_size / tp))
    return [
        f"{by} gives each GPU {n:g} inputs of {layer}, not a multiple of the "
        f"{shape.quantization.method.upper()} group size {group}; vLLM's kernels refuse that"
        for layer, by, n in inputs
        if n % group
    ]


def _tp_hint(shape: ModelShape) -> str:
    sizes = [t for t in range(1, min(shape.heads, 64) + 1) if not _tp_problems(shape, t)]
    return ", ".join(map(str, sizes)) or "none"


def _memory_problems(report: FitReport) -> list[str]:
    full = [st for st in report.stages if st.layers and st.kv_cache_bytes <= 0]
    if full:
        st = min(full, key=lambda s: s.kv_cache_bytes)
        where = f"stage {st.index} of {report.pp}: " if report.pp > 1 else ""
        return [
            f"{where}{_gib(st.weights_bytes)} of weights + {report.overhead_gib:.2f} GiB overhead "
            f"leave no room for the KV cache in the {_gib(report.budget_bytes)} that "
            f"gpu_memory_utilization {report.gpu_memory_utilization:g} allows on a "
            f"{report.gpu_memory_gib:g} GiB GPU"
        ]
    if report.kv_tokens < report.max_model_len:
        return [
            f"the KV cache holds {report.kv_tokens:,} tokens, less than one sequence of max_model_len "
            f"{report.max_model_len:,}; vLLM refuses to start (lower max_model_len or add GPUs)"
        ]
    return []


def _context_problems(shape: ModelShape, max_model_len: int) -> list[str]:
    limit = shape.max_context or shape.max_position_embeddings
    if limit is None or max_model_len <= limit:
        return []
    return [
        f"max_model_len {max_model_len:,} is longer than the {limit:,} positions the model supports "
        "(max_position_embeddings, with rope scaling); vLLM refuses it"
    ]


def _notes(shape: ModelShape, tp: int, gpus_per_host: int, max_model_len: int) -> list[str]:
    notes = []
    if tp > shape.kv_heads and tp % shape.kv_heads == 0:
        notes.append(
            f"TP {tp} is more than the {shape.kv_heads} KV heads: vLLM replicates each KV head on "
            f"{tp // shape.kv_heads} GPUs, so every GPU keeps 1 KV head and the KV cache per token "
            f"stops shrinking beyond TP {shape.kv_heads}"
        )
    if tp > gpus_per_host:
        notes.append(
            f"TP {tp} spans hosts of {gpus_per_host} GPUs: every layer all-reduces over the network; "
            "vLLM recommends TP within a host and PP across hosts"
        )
    if max_model_len > OVERHEAD_TOKENS:
        notes.append(
            f"the {OVERHEAD_GIB:g} GiB overhead assumes a profiling pass of a few thousand tokens; "
            f"without chunked prefill vLLM profiles {max_model_len:,} tokens at once and may need more"
        )
    return notes


# ---------------------------------------------------------------- fit and suggest


def fit(
    shape: ModelShape,
    *,
    tp: int,
    pp: int,
    gpus_per_host: int,
    gpu_memory_gib: float,
    gpu_memory_utilization: float = 0.9,
    max_model_len: int,
    kv_cache_dtype_bytes: int | None = None,
    overhead_gib: float = OVERHEAD_GIB,
    dp: int = 1,
) -> FitReport:
    """Check one TP x PP layout (`dp` > 1: that many vLLM data-parallel ranks of it, an MoE model's
    experts split over all of them); when it fits, also warn if fewer GPUs would do."""
    report = _assess(
        shape,
        tp,
        pp,
        gpus_per_host,
        gpu_memory_gib,
        gpu_memory_utilization,
        max_model_len,
        kv_cache_dtype_bytes,
        overhead_gib,
        dp,
    )
    if not report.fits or report.gpus == 1:
        return report
    hosts = math.ceil(report.gpus / gpus_per_host)
    smaller = next(
        (r for r in _fitting(report, hosts) if r.gpus < report.gpus),
        None,
    )
    if smaller is None:
        return report
    return replace(report, warnings=(*report.warnings, _fewer_gpus(report, smaller)))


def suggest(
    shape: ModelShape,
    gpus_per_host: int,
    gpu_memory_gib: float,
    n_hosts: int,
    max_model_len: int,
    *,
    gpu_memory_utilization: float = 0.9,
    kv_cache_dtype_bytes: int | None = None,
    overhead_gib: float = OVERHEAD_GIB,
) -> FitReport:
    """The smallest layout on up to `n_hosts` hosts that fits with room for one max_model_len sequence.

    vLLM's guidance orders the search: one host with the smallest TP that fits; PP inside a host only
    when no TP size fits there (the heads do not divide, say); then TP across the GPUs of each host and
    PP across hosts, before TP spans hosts. When nothing fits, returns the most preferred of the largest
    layouts tried, whose `problems` say why.
    """
    if n_hosts < 1:
        raise ValueError("n_hosts must be at least 1")
    probe = _assess(
        shape,
        1,
        1,
        gpus_per_host,
        gpu_memory_gib,
        gpu_memory_utilization,
        max_model_len,
        kv_cache_dtype_bytes,
        overhead_gib,
    )
    largest = probe
    for report in _reports(probe, n_hosts):
        if report.fits:
            return report
        if report.gpus > largest.gpus:
            largest = report
    return largest


def _assess(
    shape: ModelShape,
    tp: int,
    pp: int,
    gpus_per_host: int,
    gpu_memory_gib: float,
    gpu_memory_utilization: float,
    max_model_len: int,
    kv_cache_dtype_bytes: int | None,
    overhead_gib: float,
    dp: int = 1,
) -> FitReport:
    _check_args(tp, pp, gpus_per_host, gpu_memory_gib, gpu_memory_utilization, max_model_len)
    if dp < 1:
        raise ValueError("dp must be at least 1")
    kv_bytes = DENSE_BYTES if kv_cache_dtype_bytes is None else kv_cache_dtype_bytes
    if kv_bytes < 1 or overhead_gib < 0:
        raise ValueError("kv_cache_dtype_bytes must be at least 1 and overhead_gib not negative")
    report = FitReport(
        shape=shape,
        tp=tp,
        pp=pp,
        gpus_per_host=gpus_per_host,
        gpu_memory_gib=gpu_memory_gib,
        gpu_memory_utilization=gpu_memory_utilization,
        overhead_gib=overhead_gib,
        max_model_len=max_model_len,
        kv_cache_dtype_bytes=kv_bytes,
        stages=(),
        dp=dp,
    )
    report = replace(report, stages=tuple(_stages(report)))
    problems = _layout_problems(shape, tp, pp, gpus_per_host, dp) + _context_problems(shape, max_model_len)
    return replace(
        report,
        problems=(*problems, *_memory_problems(report)),
        notes=tuple(_notes(shape, tp, gpus_per_host, max_model_len)),
    )


def _check_args(tp: int, pp: int, per_host: int, mem: float, util: float, max_len: int) -> None:
    if min(tp, pp, per_host, max_len) < 1:
        raise ValueError("tp, pp, gpus_per_host and max_model_len must be at least 1")
    if mem <= 0 or not 0 < util <= 1:
        raise ValueError("gpu_memory_gib must be positive and gpu_memory_utilization in (0, 1]")


def _stages(report: FitReport) -> Iterator[StageFit]:
    shape, tp = report.shape, report.tp
    kv_heads = kv_heads_per_gpu(shape.kv_heads, tp)
    overhead = int(report.overhead_gib * GIB)
    for i, layers in enumerate(stage_layers(shape.layers, report.pp)):
        weights = stage_bytes(
            shape, tp, layers, first=i == 0, last=i == report.pp - 1, expert_tp=report.expert_tp
        )
        per_token = 2 * layers * kv_heads * shape.head_dim * report.kv_cache_dtype_bytes
        free = report.budget_bytes - weights - overhead
        blocks = free // (per_token * BLOCK_SIZE) if per_token and free > 0 else 0
        yield StageFit(i, layers, weights, per_token, free, blocks * BLOCK_SIZE)


def _candidates(layers: int, gpus_per_host: int, n_hosts: int) -> list[tuple[int, int]]:
    """(TP, PP) layouts on one host or on whole hosts, in order of preference: fewest hosts; then
    no more pipeline stages than hosts (PP across hosts, not inside one); fewest GPUs; TP inside a
    host; fewest stages."""
    out = []
    for world in range(1, gpus_per_host * n_hosts + 1):
        if world > gpus_per_host and world % gpus_per_host:
            continue
        out += [(tp, world // tp) for tp in range(1, world + 1) if world % tp == 0 and world // tp <= layers]

    def preference(layout: tuple[int, int]) -> tuple[int, bool, int, bool, int]:
        tp, pp = layout
        hosts = math.ceil(tp * pp / gpus_per_host)
        return hosts, pp > hosts, tp * pp, tp > gpus_per_host, pp

    return sorted(out, key=preference)


def _reports(probe: FitReport, n_hosts: int) -> Iterator[FitReport]:
    """Reports for every candidate layout that vLLM could run, most preferred first."""
    for tp, pp in _candidates(probe.shape.layers, probe.gpus_per_host, n_hosts):
        if _layout_problems(probe.shape, tp, pp, probe.gpus_per_host):
            continue
        yield _assess(
            probe.shape,
            tp,
            pp,
            probe.gpus_per_host,
            probe.gpu_memory_gib,
            probe.gpu_memory_utilization,
            probe.max_model_len,
            probe.kv_cache_dtype_bytes,
            probe.overhead_gib,
        )


def _fitting(report: FitReport, n_hosts: int) -> Iterator[FitReport]:
    return (r for r in _reports(report, n_hosts) if r.fits)


def _fewer_gpus(report: FitReport, smaller: FitReport) -> str:
    n = smaller.gpus
    return (
        f"{report.shape.name} would fit on {n} GPU{'' if n == 1 else 's'} (TP {smaller.tp} x PP "
        f"{smaller.pp}: {_gib(smaller.weights_bytes_per_gpu)} of weights per GPU, "
        f"{smaller.kv_tokens:,} KV tokens = {smaller.max_concurrency:.1f} sequences of "
        f"{smaller.max_model_len:,}); this plan uses {report.gpus}. More GPUs buy KV cache and "
        "speed, not the ability to load the model"
    )


# ---------------------------------------------------------------- compare: the ways of using all GPUs


LayoutKind = Literal["tp_pp", "replicas", "dp"]


@dataclass(frozen=True)
class LayoutFit:
    """One way of using an inventory's GPUs: `replicas` engines of `report`'s TP x PP GPUs each.

    kind "tp_pp": one engine spanning the GPUs (replicas 1); "replicas": independent vLLM engines side
    by side, a router in front; "dp": vLLM data parallel, `replicas` DP ranks of one engine whose MoE
    experts are split over all of them (report.dp == replicas). `report` is one replica or DP rank."""

    kind: LayoutKind
    replicas: int
    report: FitReport
    note: str
    current: bool = False  # the inventory's own layout: what `orchestrate up` builds

    @property
    def label(self) -> str:
        r = self.report
        if self.kind == "replicas":
            return f"{self.replicas} x TP {r.tp}" + (f" x PP {r.pp}" if r.pp > 1 else "")
        return r.layout

    @property
    def gpus_per_replica(self) -> int:
        return self.report.tp * self.report.pp

    @property
    def gpus(self) -> int:
        return self.replicas * self.gpus_per_replica

    @property
    def fits(self) -> bool:
        return self.report.fits

    @property
    def weights_bytes_per_gpu(self) -> int:
        return self.report.weights_bytes_per_gpu

    @property
    def kv_tokens_per_replica(self) -> int:
        return self.report.kv_tokens

    @property
    def kv_tokens_total(self) -> int:
        return self.replicas * self.report.kv_tokens

    @property
    def max_concurrency_per_replica(self) -> float:
        return self.report.max_concurrency

    @property
    def max_concurrency_total(self) -> float:
        return self.replicas * self.report.max_concurrency

    def as_dict(self) -> dict[str, Any]:
        r = self.report
        return {
            "layout": self.label,
            "kind": self.kind,
            "current": self.current,
            "replicas": self.replicas,
            "tp": r.tp,
            "pp": r.pp,
            "dp": r.dp,
            "gpus": self.gpus,
            "gpus_per_replica": self.gpus_per_replica,
            "hosts_per_replica": math.ceil(self.gpus_per_replica / r.gpus_per_host),
            "stage_layers": list(r.stage_layers),
            "weights_bytes_per_gpu": self.weights_bytes_per_gpu,
            "weights_gib_per_gpu": round(self.weights_bytes_per_gpu / GIB, 2),
            "kv_bytes_per_token": r.kv_bytes_per_token,
            "kv_tokens_per_replica": self.kv_tokens_per_replica,
            "kv_tokens_total": self.kv_tokens_total,
            "max_concurrency_per_replica": round(self.max_concurrency_per_replica, 2),
            "max_concurrency_total": round(self.max_concurrency_total, 2),
            "fits": self.fits,
            "note": self.note,
            "problems": list(r.problems),
            "notes": list(r.notes),
        }


def compare(
    shape: ModelShape,
    *,
    n_hosts: int,
    gpus_per_host: int,
    gpu_memory_gib: float,
    gpu_memory_utilization: float = 0.9,
    max_model_len: int,
    current: tuple[int, int] | None = None,
    interconnect: str = "the network",
    kv_cache_dtype_bytes: int | None = None,
    overhead_gib: float = OVERHEAD_GIB,
) -> tuple[LayoutFit, ...]:
    """Every way of using all `n_hosts` x `gpus_per_host` GPUs, each checked with `fit`:

    * one engine, TP x PP: `current` (the inventory's, first), TP within a host x PP across hosts,
      and TP across all of them;
    * R replicas x TP: independent engines of TP t for every t dividing a host's GPUs, and engines
      of whole hosts (TP per host x PP h) for every h dividing the hosts;
    * for an MoE model, DP x TP: vLLM data parallel for every TP t dividing a host's GPUs.

    `interconnect` names the hosts' network in the notes ("ethernet"). The rows' numbers are `fit`'s
    for one replica (or DP rank), so the TP x PP rows equal `fit` for the same layout exactly.
    """
    if n_hosts < 1 or gpus_per_host < 1:
        raise ValueError("n_hosts and gpus_per_host must be at least 1")
    total = n_hosts * gpus_per_host

    def check(tp: int, pp: int, dp: int = 1) -> FitReport:
        return fit(
            shape,
            tp=tp,
            pp=pp,
            gpus_per_host=gpus_per_host,
            gpu_memory_gib=gpu_memory_gib,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            kv_cache_dtype_bytes=kv_cache_dtype_bytes,
            overhead_gib=overhead_gib,
            dp=dp,
        )

    singles = [current] if current else []
    for layout in ((gpus_per_host, n_hosts), (total, 1)):  # the same layout on one host
        if layout not in singles:
            singles.append(layout)
    rows = [
        _row("tp_pp", 1, check(tp, pp), gpus_per_host, interconnect, current=(tp, pp) == current)
        for tp, pp in singles
    ]
    tps = [t for t in range(gpus_per_host, 0, -1) if gpus_per_host % t == 0]
    rows += [_row("replicas", total // t, check(t, 1), gpus_per_host, interconnect) for t in tps if t < total]
    rows += [
        _row("replicas", n_hosts // h, check(gpus_per_host, h), gpus_per_host, interconnect)
        for h in range(n_hosts - 1, 1, -1)
        if n_hosts % h == 0
    ]
    if shape.is_moe:
        rows += [
            _row("dp", total // t, check(t, 1, total // t), gpus_per_host, interconnect)
            for t in tps
            if t < total
        ]
    return tuple(rows)


def _row(
    kind: LayoutKind,
    replicas: int,
    report: FitReport,
    gpus_per_host: int,
    interconnect: str,
    *,
    current: bool = False,
) -> LayoutFit:
    if report.problems:
        note = f"does not fit: {report.problems[0]}"
    else:
        note = _topology_note(kind, replicas, report, gpus_per_host, interconnect)
    return LayoutFit(kind, replicas, report, note, current)


def _topology_note(kind: LayoutKind, replicas: int, r: FitReport, gpus_per_host: int, net: str) -> str:
    """What crosses between GPUs and hosts in this layout, in a few words."""
    if kind == "dp":
        where = f"across {net}" if r.gpus > gpus_per_host else "inside the host"
        return (
            f"DP: attention per rank, experts split over all {r.gpus} GPUs: every MoE layer "
            f"all-reduces {where}, ranks step together"
        )
    if kind == "replicas":
        if r.pp > 1:
            return f"replicas of PP {r.pp}: activations cross hosts inside each; no traffic between replicas"
        return f"replicas: no inter-host traffic; a router spreads requests over {replicas} engines"
    if r.tp > gpus_per_host:
        return f"TP across {net}: every layer all-reduces between hosts"
    if r.pp > 1 and r.hosts > 1:
        return f"PP across {net}: activations cross hosts every token"
    if r.pp > 1:
        return "PP inside one host: a pipeline where TP alone would do"
    return "one engine, TP inside the host"


def comparison_lines(rows: tuple[LayoutFit, ...] | list[LayoutFit]) -> list[str]:
    """The side-by-side table `orchestrate plan --compare` prints, with a header and footnotes."""
    if not rows:
        return []
    r0 = rows[0].report
    s = r0.shape
    hosts = math.ceil(max(row.gpus for row in rows) / r0.gpus_per_host)
    moe = f"; MoE, {s.experts_per_token} of {s.experts} experts per token" if s.is_moe else ""
    head = [
        f"{s.name}: {s.params / 1e9:.2f}B parameters, {s.quantization.describe()}{moe}",
        f"on {_count(hosts, 'host')} x {r0.gpus_per_host} GPUs of {r0.gpu_memory_gib:g} GiB; max_model_len "
        f"{r0.max_model_len:,}, gpu_memory_utilization {r0.gpu_memory_utilization:.2f}",
        "",
    ]
    header = (
        "layout",
        "GPUs",
        "GPUs/replica",
        "weights/GPU",
        "KV tokens/replica",
        "KV tokens total",
        "conc/replica",
        "conc total",
        "fits",
        "note",
    )
    table = [header] + [
        (
            row.label + (" *" if row.current else ""),
            str(row.gpus),
            str(row.gpus_per_replica),
            _gib(row.weights_bytes_per_gpu),
            f"{row.kv_tokens_per_replica:,}",
            f"{row.kv_tokens_total:,}",
            f"{row.max_concurrency_per_replica:.2f}",
            f"{row.max_concurrency_total:.2f}",
            "yes" if row.fits else "no",
            row.note,
        )
        for row in rows
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    left = {0, len(header) - 2, len(header) - 1}
    cells = [
        [c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True))]
        for line in table
    ]
    body = ["  ".join(line).rstrip() for line in cells]
    dp = any(row.kind == "dp" for row in rows)
    foot = [
        "",
        f"conc: sequences of {r0.max_model_len:,} tokens whose KV cache fits at once (KV tokens / "
        "max_model_len); a replica is one vLLM engine" + (", or one DP rank" if dp else ""),
    ]
    if any(row.current for row in rows):
        foot.append("* the inventory's layout: what `orchestrate up` builds")
    fitting = [row for row in rows if row.fits]
    if fitting:
        most = max(fitting, key=lambda row: row.kv_tokens_total)
        foot.append(
            f"most KV cache in all: {most.label} ({most.kv_tokens_total:,} tokens); that is capacity, "
            "not speed: a benchmark decides which layout is faster"
        )
    return head + body + foot
