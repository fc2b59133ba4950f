"""Token-by-token decoding over a static KV cache, replayed as a CUDA graph on GPUs.

The dynamic path (`ChatSession.append_text` per token) concatenates every layer's cache and
launches a few hundred small kernels per token, so a decode step costs tens of milliseconds
although it only has to read the semantic expert's weights once. Here the cache lives in
preallocated buffers ([kv_heads, capacity, head_dim] per layer); a step writes its key and value
at slot `length` and attends over the whole buffer with the slots past it masked out, so every
step has the same shapes and addresses and is captured once as a CUDA graph. The step computes
what `append_text([token])` computes (same projections, norms and rotary angles). On CUDA the
attention of the one query row is a split-over-the-cache Triton kernel and its merge
(`kernels.decode_attention`: PyTorch's fused attention kernels parallelise poorly over one query,
and a masked softmax over the whole buffer cost more than the matrix products); elsewhere two
batched matrix products around a softmax. About 11 kernels per layer.
"""
from __future__ import annotations

from typing import Optional

import torch

from g2vlm_ros.model import kernels
from g2vlm_ros.model.mot import KVCache
from g2vlm_ros.model.rope import mrope_cos_sin

CAPACITY_STEP = 256  # capacities are rounded up to this, so a few graphs serve every prompt length


class StaticDecoder:
    """One decode step of `model`'s semantic expert for caches of up to `capacity` tokens."""

    def __init__(self, model, capacity: int, use_graph: Optional[bool] = None):
        self.model, self.capacity = model, capacity
        text, device, dtype = model.config.text, model.device, model.dtype
        layers = len(model.language_model.model.layers)
        shape = (text.num_key_value_heads, capacity, text.head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(layers)]
        self.token = torch.zeros(1, dtype=torch.long, device=device)  # the step's input token
        self.slot = torch.zeros(1, dtype=torch.long, device=device)  # its cache index
        self.position = torch.zeros(1, dtype=torch.long, device=device)  # its M-RoPE position
        self.slots = torch.arange(capacity, device=device)
        self.query = torch.zeros(text.num_attention_heads, 1, text.head_dim, device=device, dtype=dtype)
        self.use_graph = device.type == "cuda" if use_graph is None else use_graph
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        self.logits: Optional[torch.Tensor] = None
        self.length = 0

    def load(self, cache: KVCache, position: int) -> None:
        """Takes over a prefilled cache (`len(cache)` < capacity) and the next free position."""
        length = len(cache)
        if length >= self.capacity:
            raise ValueError(f"a cache of {length} tokens does not fit a capacity of {self.capacity}")
        for (keys, values), static_keys, static_values in zip(cache.layers, self.keys, self.values, strict=True):
            static_keys[:, :length].copy_(keys)
            static_values[:, :length].copy_(values)
        self.slot.fill_(length)
        self.position.fill_(position)
        self.length = length

    def _forward(self) -> torch.Tensor:
        """The step on the static buffers; advances slot and position on the device."""
        language = self.model.language_model
        text = self.model.config.text
        hidden = language.model.embed_tokens(self.token)  # [1, C]
        cos, sin = mrope_cos_sin(self.position.expand(3, 1), text.head_dim, text.rope_theta)
        fused_attention = kernels.decode_attention_available(hidden, text.head_dim)
        if not fused_attention:  # additive mask over the slots: this token sees the cache and itself
            bias = torch.zeros(1, 1, self.capacity, device=hidden.device, dtype=hidden.dtype)
            bias.masked_fill_(self.slots > self.slot, float("-inf"))
        # on CUDA each residual add is fused with the norm that follows it (`kernels.add_rms_norm`)
        fused_norms = kernels.available(hidden)
        layer_input = language.model.layers[0].input_layernorm(hidden) if fused_norms else None
        for index, (layer, keys, values) in enumerate(zip(language.model.layers, self.keys, self.values,
                                                          strict=True)):
            attention = layer.self_attn
            if not fused_norms:
                layer_input = layer.input_layernorm(hidden)
            q = self._project(attention, layer_input, cos, sin, keys, values)
            if fused_attention:  # two kernels instead of a mask copy, two batched products and a softmax
                out = kernels.decode_attention(q, keys, values, self.slot, attention.head_dim ** -0.5)
            else:
                # GQA without copies: the query heads of one key/value head are its query rows
                folded = q.reshape(attention.kv_heads, -1, attention.head_dim)
                scores = torch.baddbmm(bias, folded, keys.transpose(1, 2), alpha=attention.head_dim ** -0.5)
                out = torch.bmm(torch.softmax(scores, dim=-1), values)
            attended = attention.o_proj(out.reshape(1, attention.heads * attention.head_dim))
            if not fused_norms:
                hidden = hidden + attended
                hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
                continue
            post = layer.post_attention_layernorm
            normed = kernels.add_rms_norm(hidden, attended, post.weight, post.eps)
            following = (language.model.layers[index + 1].input_layernorm if index + 1 < len(language.model.layers)
                         else language.model.norm)
            layer_input = kernels.add_rms_norm(hidden, layer.mlp(normed), following.weight, following.eps)
        final = layer_input if fused_norms else language.model.norm(hidden)
        logits = language.lm_head(final[0]).float()
        self.slot.add_(1)
        self.position.add_(1)
        return logits

    def _project(self, attention, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, keys: torch.Tensor,
                 values: torch.Tensor) -> torch.Tensor:
        """q [heads, 1, D]; the step's key and value go to the cache at `slot`."""
        fused = attention._fused("")
        if fused is not None and kernels.available(x):  # one kernel: norms, rotary, cache write
            kernels.qkv_norm_rope(fused.packed(x), self.query, keys, values, attention.q_norm.weight,
                                  attention.k_norm.weight, cos, sin, 0, self.slot, attention.q_norm.eps)
            return self.query
        q, k, v = attention._project(x, cos, sin, "")
        keys.index_copy_(1, self.slot, k)
        values.index_copy_(1, self.slot, v)
        return q

    def _capture(self) -> None:
        """Warms up on a side stream (lazy initialisation stays out of the graph), then captures;
        the buffers' contents are restored afterwards since warm-up steps write to them."""
        saved = (self.slot.clone(), self.position.clone())
        stream = torch.cuda.Stream(self.slot.device)
        stream.wait_stream(torch.cuda.current_stream(self.slot.device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._forward()
        torch.cuda.current_stream(self.slot.device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = self._forward()
        self.slot.copy_(saved[0])
        self.position.copy_(saved[1])

    @torch.no_grad()
    def step(self, token: int) -> torch.Tensor:
        """Appends `token` at the next slot; returns the logits [vocab] (fp32) for the next one.
        The returned tensor is overwritten by the next step."""
        if self.length >= self.capacity:
            raise ValueError(f"the static cache is full ({self.capacity} tokens)")
        self.token.fill_(token)
        if not self.use_graph:
            logits = self._forward()
        else:
            if self.graph is None:
                self._capture()
            self.graph.replay()
            logits = self.logits
        self.length += 1
        return logits

    def cache(self) -> KVCache:
        """The cache so far as ordinary tensors (copies: the buffers are reused)."""
        return KVCache([(keys[:, :self.length].clone(), values[:, :self.length].clone())
                        for keys, values in zip(self.keys, self.values, strict=True)])


def static_decoder(model, length: int, new_tokens: int, use_graph: Optional[bool] = None) -> StaticDecoder:
    """A decoder with room for `length` cached plus `new_tokens` tokens, kept on the model per
    capacity (so a captured graph is reused by later answers); the two most recent are kept."""
    capacity = -(-(length + new_tokens + 1) // CAPACITY_STEP) * CAPACITY_STEP
    decoders: dict = model.__dict__.setdefault("_static_decoders", {})
    key = (capacity, model.device, model.dtype, use_graph)
    decoder = decoders.pop(key, None) or StaticDecoder(model, capacity, use_graph)
    decoders[key] = decoder  # most recent last
    while len(decoders) > 2:
        decoders.pop(next(iter(decoders)))
    return decoder
