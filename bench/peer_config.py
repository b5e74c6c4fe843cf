"""The model configuration of the PyTorch eager peer (bench/generate_peer.py): Hugging Face
DeepSeek config keys with modeling_deepseek.py's defaults, and what follows from them (the rotary
frequencies with YaRN, the attention scale)."""

import json
import math

import torch

from peer_checkpoint import InputError


class Config:
    """The Hugging Face DeepSeek config keys the model reads, with modeling_deepseek.py's
    defaults; refuses what this peer does not implement (exit 2) instead of running it wrong."""

    def __init__(self, values, path, need_model_type):
        self.path = path
        model_type = values.get("model_type")
        if need_model_type and model_type not in ("deepseek_v2", "deepseek_v3"):
            raise InputError(
                "%s: model_type %s: the peer runs deepseek_v2 and deepseek_v3"
                % (path, json.dumps(model_type))
            )
        get = values.get
        self.hidden_size = self._int(values, "hidden_size")
        self.num_hidden_layers = self._int(values, "num_hidden_layers")
        self.num_attention_heads = self._int(values, "num_attention_heads")
        self.kv_lora_rank = self._int(values, "kv_lora_rank")
        self.qk_nope_head_dim = self._int(values, "qk_nope_head_dim")
        self.qk_rope_head_dim = self._int(values, "qk_rope_head_dim")
        self.v_head_dim = self._int(values, "v_head_dim")
        self.q_lora_rank = self._int(values, "q_lora_rank", optional=True)
        self.n_routed_experts = self._int(values, "n_routed_experts", optional=True)
        self.first_k_dense_replace = self._int(values, "first_k_dense_replace", zero=True) or 0
        self.moe_layer_freq = self._int(values, "moe_layer_freq", optional=True) or 1
        dense = not self.n_routed_experts or self.first_k_dense_replace > 0
        self.intermediate_size = self._int(values, "intermediate_size", optional=not dense)
        moe = bool(self.n_routed_experts)
        self.moe_intermediate_size = self._int(values, "moe_intermediate_size", optional=not moe)
        self.num_experts_per_tok = self._int(values, "num_experts_per_tok", optional=not moe)
        self.n_shared_experts = self._int(values, "n_shared_experts", zero=True) or 0
        self.n_group = self._int(values, "n_group", optional=True) or 1
        self.topk_group = self._int(values, "topk_group", optional=True) or 1
        self.scoring_func = get("scoring_func", "softmax")
        self.norm_topk_prob = bool(get("norm_topk_prob", False))
        self.routed_scaling_factor = float(get("routed_scaling_factor", 1.0))
        self.rms_norm_eps = float(get("rms_norm_eps", 1e-6))
        self.rope_theta = float(get("rope_theta", 10000.0))
        self.rope_scaling = get("rope_scaling")
        scaling = self.rope_scaling
        if scaling is not None and not (
            isinstance(scaling, dict)
            and isinstance(scaling.get("factor"), (int, float))
            and scaling["factor"] > 0
        ):
            raise InputError("%s: rope_scaling is not null or an object with a factor" % path)
        self.tie_word_embeddings = bool(get("tie_word_embeddings", False))
        self.topk_method = get("topk_method")
        if self.scoring_func not in ("softmax", "sigmoid"):
            raise InputError(
                "%s: scoring_func %s is not softmax or sigmoid" % (path, self.scoring_func)
            )
        if self.topk_method is None:
            grouped = self.n_group > 1
            self.topk_method = (
                "noaux_tc"
                if self.scoring_func == "sigmoid"
                else ("group_limited_greedy" if grouped else "greedy")
            )
        if self.topk_method not in ("greedy", "group_limited_greedy", "noaux_tc"):
            raise InputError("%s: topk_method %s is not implemented" % (path, self.topk_method))
        if self.n_routed_experts and self.n_routed_experts % self.n_group:
            raise InputError("%s: n_routed_experts is not a multiple of n_group" % path)
        if self.n_routed_experts and self.num_experts_per_tok > self.n_routed_experts:
            raise InputError("%s: num_experts_per_tok exceeds n_routed_experts" % path)
        for key in ("index_topk", "index_n_heads"):
            if key in values:
                raise InputError("%s: %s (deepseek_v32's indexer) is not implemented" % (path, key))

    def _int(self, values, key, optional=False, zero=False):
        """A positive integer key (0 allowed with zero; null or absent with optional or zero)."""
        value = values.get(key)
        if value is None and (optional or zero):
            return None
        if not isinstance(value, int) or isinstance(value, bool) or value < (0 if zero else 1):
            raise InputError("%s: %s must be a %s integer" % (
                self.path, key, "non-negative" if zero else "positive"))
        return value

    def is_moe_layer(self, layer):
        """modeling_deepseek.py's rule for which decoder layers carry a DeepseekV3MoE."""
        return (
            bool(self.n_routed_experts)
            and layer >= self.first_k_dense_replace
            and layer % self.moe_layer_freq == 0
        )


def wide(dtype):
    """The type Hugging Face's code widens to (softmax, RMSNorm, router): f32, or f64 when the
    whole model runs in f64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def yarn_mscale(factor, mscale):
    """yarn_get_mscale: the attention magnitude correction for a context stretched by factor."""
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


class Rope:
    """Inverse frequencies (YaRN-blended when rope_scaling says so) and the cos/sin scale."""

    def __init__(self, config, dtype):
        d = config.qk_rope_head_dim
        base = config.rope_theta
        self.dtype = dtype
        self.acc = wide(dtype)
        exponents = torch.arange(0, d, 2, dtype=self.acc) / d
        inv_freq = 1.0 / base**exponents
        self.magnitude = 1.0
        scaling = config.rope_scaling
        if scaling:
            kind = scaling.get("type", scaling.get("rope_type"))
            if kind != "yarn":
                raise InputError(
                    "%s: rope_scaling type %s is not implemented (yarn is)"
                    % (config.path, json.dumps(kind))
                )
            factor = float(scaling["factor"])
            original = scaling.get("original_max_position_embeddings", 4096)
            beta_fast, beta_slow = scaling.get("beta_fast", 32), scaling.get("beta_slow", 1)

            def correction(rotations):
                return d * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

            low = max(math.floor(correction(beta_fast)), 0)
            high = min(math.ceil(correction(beta_slow)), d - 1)
            if low == high:
                high += 0.001
            ramp = torch.clamp((torch.arange(d // 2, dtype=self.acc) - low) / (high - low), 0, 1)
            keep = 1.0 - ramp
            inv_freq = inv_freq / factor * (1 - keep) + inv_freq * keep
            self.magnitude = yarn_mscale(factor, scaling.get("mscale", 1)) / yarn_mscale(
                factor, scaling.get("mscale_all_dim", 0)
            )
        self.inv_freq = inv_freq

    def cos_sin(self, start, count):
        """cos and sin [count, d] for positions start.., laid out as the HF code's
        cat((freqs, freqs)), in the model's dtype."""
        positions = torch.arange(start, start + count, dtype=self.acc)
        freqs = torch.outer(positions, self.inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        return (
            (emb.cos() * self.magnitude).to(self.dtype),
            (emb.sin() * self.magnitude).to(self.dtype),
        )


def attention_scale(config):
    """softmax_scale: q_head_dim^-0.5, times mscale^2 when rope_scaling has mscale_all_dim."""
    scale = (config.qk_nope_head_dim + config.qk_rope_head_dim) ** -0.5
    scaling = config.rope_scaling
    if scaling and scaling.get("mscale_all_dim", 0):
        m = yarn_mscale(float(scaling["factor"]), scaling["mscale_all_dim"])
        scale = scale * m * m
    return scale
