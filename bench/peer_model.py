"""A whole DeepSeek-V2/V3 checkpoint loaded for the PyTorch eager peer (bench/generate_peer.py):
which weights each layer needs, in which dtype, and the forward pass of DeepseekV3ForCausalLM."""

import os

import torch
import torch.nn.functional as F

from peer_checkpoint import InputError, TensorSource, read_json
from peer_config import Config, Rope, wide
from peer_layers import decoder_layer, rmsnorm


def mlp_shapes(prefix, d, inner):
    """A SwiGLU MLP's three projections with their shapes [out, in]."""
    return {
        prefix + "gate_proj.weight": (inner, d),
        prefix + "up_proj.weight": (inner, d),
        prefix + "down_proj.weight": (d, inner),
    }


def layer_shapes(config, is_moe, parts):
    """The weights of one decoder layer by bare name, with the shapes the config gives them;
    `parts` picks some of attention, norms, ffn (the experts or the dense MLP), router."""
    d, heads = config.hidden_size, config.num_attention_heads
    nope, pe, vd, latent = (config.qk_nope_head_dim, config.qk_rope_head_dim, config.v_head_dim,
                            config.kv_lora_rank)
    shapes = {}
    if "attention" in parts:
        if config.q_lora_rank is None:
            shapes["self_attn.q_proj.weight"] = (heads * (nope + pe), d)
        else:
            rank = config.q_lora_rank
            shapes["self_attn.q_a_proj.weight"] = (rank, d)
            shapes["self_attn.q_a_layernorm.weight"] = (rank,)
            shapes["self_attn.q_b_proj.weight"] = (heads * (nope + pe), rank)
        shapes["self_attn.kv_a_proj_with_mqa.weight"] = (latent + pe, d)
        shapes["self_attn.kv_a_layernorm.weight"] = (latent,)
        shapes["self_attn.kv_b_proj.weight"] = (heads * (nope + vd), latent)
        shapes["self_attn.o_proj.weight"] = (d, heads * vd)
    if "norms" in parts:
        shapes["input_layernorm.weight"] = (d,)
        shapes["post_attention_layernorm.weight"] = (d,)
    if "ffn" in parts and not is_moe:
        shapes.update(mlp_shapes("mlp.", d, config.intermediate_size))
    if "ffn" in parts and is_moe:
        for e in range(config.n_routed_experts):
            shapes.update(mlp_shapes("mlp.experts.%d." % e, d, config.moe_intermediate_size))
        if config.n_shared_experts:
            inner = config.moe_intermediate_size * config.n_shared_experts
            shapes.update(mlp_shapes("mlp.shared_experts.", d, inner))
    return shapes


def checked(source, name, dtype, shape):
    """A tensor in `dtype` after checking its shape against the config's (before reading it)."""
    if source.has(name) and source.shape(name) != tuple(shape):
        raise InputError("tensor %s has shape %s where the config needs %s"
                         % (name, list(source.shape(name)), list(shape)))
    return source.tensor(name, dtype)


def load_layer(config, source, prefix, dtype, is_moe, parts):
    """One decoder layer's weights by bare name (layer_shapes), in `dtype`, except the router's
    weight and correction bias, kept wide (HF computes the router in f32)."""
    shapes = layer_shapes(config, is_moe, parts)
    w = {name: checked(source, prefix + name, dtype, shape) for name, shape in shapes.items()}
    if "router" in parts and is_moe:
        experts = config.n_routed_experts
        w["mlp.gate.weight"] = checked(source, prefix + "mlp.gate.weight", wide(dtype),
                                       (experts, config.hidden_size))
        bias = prefix + "mlp.gate.e_score_correction_bias"
        if source.has(bias):
            w["mlp.gate.e_score_correction_bias"] = checked(source, bias, wide(dtype), (experts,))
        elif config.topk_method == "noaux_tc":
            raise InputError("noaux_tc routing needs %s, which the checkpoint lacks" % bias)
    return w


DTYPES = {"bf16": torch.bfloat16, "f32": torch.float32, "f64": torch.float64}


class Model:
    """A whole DeepseekV3ForCausalLM (the MTP layers past num_hidden_layers are not run)."""

    def __init__(self, directory, dtype_name):
        config_path = os.path.join(directory, "config.json")
        self.config = Config(read_json(config_path), config_path, need_model_type=True)
        source = TensorSource(directory)
        embed = "model.embed_tokens.weight"
        if dtype_name == "auto":
            # f32 checkpoints run in f32; bf16, fp8 and f16 ones in bf16 (PyTorch's CPU matmul
            # has no f16 kernel).
            stored = source.dtype(embed) if source.has(embed) else None
            dtype_name = "f32" if stored in ("F32", "F64") else "bf16"
        self.dtype_name = dtype_name
        self.dtype = DTYPES[dtype_name]
        config = self.config
        self.rope = Rope(config, self.dtype)
        d = config.hidden_size
        vocab = source.shape(embed)[0] if source.has(embed) else 0
        self.embed = checked(source, embed, self.dtype, (vocab, d))
        self.layers = []
        for i in range(config.num_hidden_layers):
            is_moe = config.is_moe_layer(i)
            w = load_layer(config, source, "model.layers.%d." % i, self.dtype, is_moe,
                           ("attention", "norms", "router", "ffn"))
            self.layers.append((w, is_moe))
        self.norm = checked(source, "model.norm.weight", self.dtype, (d,))
        if source.has("lm_head.weight"):
            self.lm_head = checked(source, "lm_head.weight", self.dtype, (vocab, d))
        elif config.tie_word_embeddings:
            self.lm_head = self.embed
        else:
            raise InputError("the checkpoint has no lm_head.weight and does not tie embeddings")
        self.vocab = self.lm_head.shape[0]
        self.eos = eos_ids(directory)

    def forward(self, ids, cache, last_only=True):
        """Logits (f32, or f64 in f64) of ids [B, T] following the tokens in `cache` (their
        positions start at its length, as HF's cache_position does): of the last position only
        when last_only, as generation needs."""
        start = cache.length()
        x = F.embedding(ids, self.embed)
        for i, (w, is_moe) in enumerate(self.layers):
            x = decoder_layer(self.config, w, x, self.rope, cache, i, start, is_moe)
        x = rmsnorm(x, self.norm, self.config.rms_norm_eps)
        if last_only:
            x = x[:, -1:, :]
        return F.linear(x, self.lm_head).to(wide(self.dtype))


def eos_ids(directory):
    """The end-of-sequence ids of generation_config.json, else config.json (one id or a list)."""
    for name in ("generation_config.json", "config.json"):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            eos = read_json(path).get("eos_token_id")
            if eos is not None:
                return set(eos if isinstance(eos, list) else [eos])
    return set()
