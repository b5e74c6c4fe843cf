"""The pieces of a DeepSeek-V2/V3 decoder as Hugging Face's modeling_deepseek.py computes them in
eager PyTorch, each a function of its weights (a dict of tensors by bare HF name such as
"self_attn.kv_b_proj.weight"), for the peer of `moira bench generate` (bench/generate_peer.py)."""

import torch
import torch.nn.functional as F

from peer_config import attention_scale, wide


def rotate_half(x):
    """[x1 | x2] -> [-x2 | x1]: the rotation of HF's RoPE on its de-interleaved halves."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x, cos, sin):
    """apply_rotary_pos_emb: de-interleave (even elements first, then odd) and rotate halves,
    which rotates each pair (2i, 2i+1) by angle i as docs/math.md says."""
    b, h, s, d = x.shape
    x = x.view(b, h, s, d // 2, 2).transpose(4, 3).reshape(b, h, s, d)
    return x * cos + rotate_half(x) * sin


def rmsnorm(x, weight, eps):
    """DeepseekV3RMSNorm: normalise in f32, back to the input dtype, times the weight."""
    dtype = x.dtype
    h = x.to(wide(dtype))
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(dtype)


def mlp(x, w, prefix):
    """DeepseekV3MLP (SwiGLU): down(silu(gate(x)) * up(x))."""
    gate = F.linear(x, w[prefix + "gate_proj.weight"])
    up = F.linear(x, w[prefix + "up_proj.weight"])
    return F.linear(F.silu(gate) * up, w[prefix + "down_proj.weight"])


class KVCache:
    """Hugging Face's DynamicCache: the full (roped) keys and values of every layer, grown by
    concatenation each step, as PyTorch eager generation keeps them."""

    def __init__(self):
        self.keys = {}
        self.values = {}

    def update(self, layer, key, value):
        if layer in self.keys:
            key = torch.cat((self.keys[layer], key), dim=-2)
            value = torch.cat((self.values[layer], value), dim=-2)
        self.keys[layer] = key
        self.values[layer] = value
        return key, value

    def length(self):
        """Tokens seen so far: the position of the next one."""
        return self.keys[0].shape[-2] if 0 in self.keys else 0


def attention(config, w, x, rope, cache, layer, start):
    """DeepseekV3Attention.forward on x [B, T, D] at positions start..start+T-1: the full
    (non-absorbed) form, keys and values appended to `cache` (None: no cache)."""
    b, t, _ = x.shape
    heads, nope, pe, vd = (
        config.num_attention_heads,
        config.qk_nope_head_dim,
        config.qk_rope_head_dim,
        config.v_head_dim,
    )
    if config.q_lora_rank is None:
        q = F.linear(x, w["self_attn.q_proj.weight"])
    else:
        q = F.linear(x, w["self_attn.q_a_proj.weight"])
        q = rmsnorm(q, w["self_attn.q_a_layernorm.weight"], config.rms_norm_eps)
        q = F.linear(q, w["self_attn.q_b_proj.weight"])
    q = q.view(b, t, heads, nope + pe).transpose(1, 2)
    q_nope, q_pe = torch.split(q, [nope, pe], dim=-1)
    compressed = F.linear(x, w["self_attn.kv_a_proj_with_mqa.weight"])
    compressed, k_pe = torch.split(compressed, [config.kv_lora_rank, pe], dim=-1)
    k_pe = k_pe.view(b, t, 1, pe).transpose(1, 2)
    compressed = rmsnorm(compressed, w["self_attn.kv_a_layernorm.weight"], config.rms_norm_eps)
    kv = F.linear(compressed, w["self_attn.kv_b_proj.weight"])
    kv = kv.view(b, t, heads, nope + vd).transpose(1, 2)
    k_nope, value = torch.split(kv, [nope, vd], dim=-1)
    cos, sin = rope.cos_sin(start, t)
    q_pe = apply_rope(q_pe, cos, sin)
    k_pe = apply_rope(k_pe, cos, sin)
    query = k_pe.new_empty(b, heads, t, nope + pe)
    query[:, :, :, :nope] = q_nope
    query[:, :, :, nope:] = q_pe
    key = k_pe.new_empty(b, heads, t, nope + pe)
    key[:, :, :, :nope] = k_nope
    key[:, :, :, nope:] = k_pe
    if cache is not None:
        key, value = cache.update(layer, key, value)
    scores = torch.matmul(query, key.transpose(2, 3)) * attention_scale(config)
    if t > 1:
        keys = key.shape[-2]
        query_pos = torch.arange(keys - t, keys).unsqueeze(1)
        hidden = torch.arange(keys).unsqueeze(0) > query_pos
        scores = scores.masked_fill(hidden, float("-inf"))
    probs = F.softmax(scores, dim=-1, dtype=wide(x.dtype)).to(x.dtype)
    out = torch.matmul(probs, value).transpose(1, 2).reshape(b, t, heads * vd)
    return F.linear(out, w["self_attn.o_proj.weight"])


def route(config, w, x):
    """MoEGate.forward on x [N, D]: scores in f32, group-limited (max per group, or the sum of
    the best two with the correction bias) and top-k selection, weights normalised and scaled
    as docs/math.md writes them. Returns (topk_idx [N, k], topk_weight [N, k] f32)."""
    n = x.shape[0]
    experts, k = config.n_routed_experts, config.num_experts_per_tok
    logits = F.linear(x.to(w["mlp.gate.weight"].dtype), w["mlp.gate.weight"])
    if config.scoring_func == "softmax":
        scores = logits.softmax(dim=-1)
    else:
        scores = logits.sigmoid()
    bias = w.get("mlp.gate.e_score_correction_bias") if config.topk_method == "noaux_tc" else None
    choice = scores + bias.unsqueeze(0) if bias is not None else scores
    groups = config.n_group
    if groups > 1 and config.topk_method != "greedy":
        grouped = choice.view(n, groups, experts // groups)
        if bias is not None:
            group_scores = grouped.topk(2, dim=-1)[0].sum(dim=-1)
        else:
            group_scores = grouped.max(dim=-1).values
        kept = torch.topk(group_scores, k=config.topk_group, dim=-1, sorted=False)[1]
        mask = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, kept, True)
        mask = mask.repeat_interleave(experts // groups, dim=1)
        choice = choice.masked_fill(~mask, float("-inf"))
    idx = torch.topk(choice, k=k, dim=-1, sorted=False)[1]
    weight = scores.gather(1, idx)
    if config.norm_topk_prob:
        weight = weight / (weight.sum(dim=-1, keepdim=True) + 1e-20)
    return idx, weight * config.routed_scaling_factor


def moe(config, w, x):
    """DeepseekV3MoE.forward at inference: route, sort the assignments by expert, run each
    expert with tokens on its rows (moe_infer's loop), combine in f32, add the shared experts."""
    shape = x.shape
    flat = x.reshape(-1, shape[-1])
    idx, weight = route(config, w, flat)
    k = idx.shape[1]
    counts = torch.bincount(idx.view(-1), minlength=config.n_routed_experts).tolist()
    order = idx.view(-1).argsort()
    rows = flat[order // k]
    outputs = []
    begin = 0
    for expert, count in enumerate(counts):
        if count:
            prefix = "mlp.experts.%d." % expert
            outputs.append(mlp(rows[begin : begin + count], w, prefix))
            begin += count
    sorted_out = torch.cat(outputs, dim=0)
    scattered = torch.empty_like(sorted_out)
    scattered[order] = sorted_out
    y = (
        scattered.view(*idx.shape, -1)
        .to(weight.dtype)
        .mul_(weight.unsqueeze(-1))
        .sum(dim=1)
        .to(scattered.dtype)
    )
    if config.n_shared_experts:
        y = y + mlp(flat, w, "mlp.shared_experts.")
    return y.view(shape)


def decoder_layer(config, w, x, rope, cache, layer, start, is_moe):
    """DeepseekV3DecoderLayer: pre-norm attention and pre-norm MoE (or dense MLP), residuals."""
    h = x + attention(
        config, w, rmsnorm(x, w["input_layernorm.weight"], config.rms_norm_eps), rope, cache,
        layer, start,
    )
    normed = rmsnorm(h, w["post_attention_layernorm.weight"], config.rms_norm_eps)
    return h + (moe(config, w, normed) if is_moe else mlp(normed, w, "mlp."))
