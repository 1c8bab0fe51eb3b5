"""The encoder-decoder Transformer (Vaswani et al., 2017), built from a ``ModelConfig``."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from transformer.config import ModelConfig
from transformer.model.embeddings import LearnedPositionalEmbedding, SinusoidalPositionalEncoding, TokenEmbedding
from transformer.model.kv_cache import DecoderCache, DecoderState, KVCache, LayerCache
from transformer.model.layers import DecoderLayer, EncoderLayer
from transformer.model.masks import causal_mask, padding_mask
from transformer.tokens import PAD_ID


def _positional(config: ModelConfig) -> nn.Module:
    if config.positional == "learned":
        return LearnedPositionalEmbedding(config.d_model, max_positions=config.max_positions)
    return SinusoidalPositionalEncoding(config.d_model, max_len=config.max_positions)


@dataclass
class AttentionWeights:
    """Attention probabilities of every layer, first layer first; each tensor is (B, H, T_query, T_key).

    ``encoder``: (B, H, S, S) self-attention of the source; ``decoder``: (B, H, T, T) masked self-attention
    of the target (zero above the diagonal); ``cross``: (B, H, T, S) target positions attending to the source.
    Each row sums to 1 over the keys it may see; padding keys get exactly 0.
    """

    encoder: list[torch.Tensor] = field(default_factory=list)
    decoder: list[torch.Tensor] = field(default_factory=list)
    cross: list[torch.Tensor] = field(default_factory=list)


class Encoder(nn.Module):
    """Embedding + positions + N encoder layers (+ a final LayerNorm when pre-LN)."""

    def __init__(self, config: ModelConfig, embedding: TokenEmbedding) -> None:
        super().__init__()
        self.embedding = embedding
        self.positional = _positional(config)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.n_encoder_layers))
        self.final_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps) if config.norm_first else nn.Identity()

    def forward(
        self, src: torch.Tensor, src_mask: torch.Tensor | None = None, *, weights: list[torch.Tensor] | None = None
    ) -> torch.Tensor:
        """(B, S) ids -> (B, S, D) memory; a ``weights`` list receives each layer's (B, H, S, S) probabilities."""
        x = self.dropout(self.positional(self.embedding(src)))
        for layer in self.layers:
            x = layer(x, src_mask, weights=weights)
        return self.final_norm(x)


class Decoder(nn.Module):
    """Embedding + positions + N decoder layers (+ a final LayerNorm when pre-LN); returns hidden states."""

    def __init__(self, config: ModelConfig, embedding: TokenEmbedding) -> None:
        super().__init__()
        self.embedding = embedding
        self.positional = _positional(config)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.n_decoder_layers))
        self.final_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps) if config.norm_first else nn.Identity()

    def forward(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        *,
        src_mask: torch.Tensor | None = None,
        tgt_mask: torch.Tensor | None = None,
        cache: DecoderCache | None = None,
        self_weights: list[torch.Tensor] | None = None,
        cross_weights: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """(B, T) ids -> (B, T, D) hidden states; with a cache, ``tgt`` holds only the new positions.

        ``self_weights`` / ``cross_weights``: lists that receive each layer's attention probabilities.
        """
        offset = cache.length if cache is not None else 0
        if cache is not None and tgt_mask is None and tgt.size(1) > 1:
            tgt_mask = causal_mask(tgt.size(1), tgt.device, offset=offset)  # several new tokens at once
        x = self.dropout(self.positional(self.embedding(tgt), offset=offset))
        for i, layer in enumerate(self.layers):
            layer_cache = cache.layers[i] if cache is not None else None
            x = layer(
                x, memory, src_mask=src_mask, tgt_mask=tgt_mask, cache=layer_cache,
                self_weights=self_weights, cross_weights=cross_weights,
            )
        return self.final_norm(x)


class Transformer(nn.Module):
    """Encoder, decoder and the output classifier; the one place that turns a ``ModelConfig`` into layers.

    Inference makes a ``DecoderState`` once (``init_state``: encode, cross-attention keys/values) and then
    calls ``decode_step`` step by step. Training calls ``forward`` (teacher forcing).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        src_embedding = TokenEmbedding(c.src_vocab_size, c.d_model)
        tgt_embedding = src_embedding if c.share_embeddings else TokenEmbedding(c.tgt_vocab_size, c.d_model)
        self.encoder = Encoder(c, src_embedding)
        self.decoder = Decoder(c, tgt_embedding)
        self.output = nn.Linear(c.d_model, c.tgt_vocab_size, bias=False)
        self._init_weights()
        if c.tie_output:
            self.output.weight = tgt_embedding.weight

    def _init_weights(self) -> None:
        # Xavier-uniform matrices and zero biases, as in the reference implementations; embeddings keep
        # their own N(0, d^-1/2) initialisation, LayerNorms their ones/zeros.
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def output_projection(self) -> nn.Linear:
        """The (V, D) output classifier (its weight is the target embedding when ``tie_output``).

        Public so that a loss can apply it itself, a chunk of rows at a time, to the ``return_hidden`` states.
        """
        return self.output

    def src_mask(self, src: torch.Tensor) -> torch.Tensor:
        """(B, S) -> (B, 1, 1, S), True at real source tokens."""
        return padding_mask(src, PAD_ID)

    def encode(self, src: torch.Tensor, src_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, S) source ids -> (B, S, D) memory."""
        return self.encoder(src, src_mask)

    def decode(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        src_mask: torch.Tensor | None = None,
        tgt_mask: torch.Tensor | None = None,
        *,
        cache: DecoderCache | None = None,
    ) -> torch.Tensor:
        """(R, T) target ids -> (R, T, V) logits (no softmax).

        ``memory`` (N, S, D) and ``src_mask`` (N, 1, 1, S) may hold one row per sentence for R = N*K target rows
        (K hypotheses of each sentence, consecutive); in training R = N.
        """
        return self.output(self.decoder(tgt, memory, src_mask=src_mask, tgt_mask=tgt_mask, cache=cache))

    def forward(
        self, src: torch.Tensor, tgt: torch.Tensor, *, return_hidden: bool = False, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, AttentionWeights]:
        """Teacher forcing: (B, S) source and (B, T) decoder input ids -> (B, T, V) logits.

        With ``return_hidden`` the (B, T, D) decoder states are returned instead: the trainer's loss applies
        ``self.output`` itself, a chunk of rows at a time (``linear_label_smoothed_nll_loss``). A flag on
        ``forward``, not another method, because the trainer must call through the DDP wrapper's forward.

        With ``return_attention`` the result is ``(logits or hidden, AttentionWeights)``: the probabilities of
        every layer and head, computed by an explicit softmax instead of the fused SDPA kernel (slower; for
        inspection). The outputs are the same as without it.
        """
        src_mask = self.src_mask(src)
        if not return_attention:
            hidden = self.decoder(tgt, self.encode(src, src_mask), src_mask=src_mask)
            return hidden if return_hidden else self.output(hidden)
        weights = AttentionWeights()
        memory = self.encoder(src, src_mask, weights=weights.encoder)
        hidden = self.decoder(tgt, memory, src_mask=src_mask, self_weights=weights.decoder, cross_weights=weights.cross)
        return (hidden if return_hidden else self.output(hidden)), weights

    @torch.no_grad()
    def init_cache(self, memory: torch.Tensor, max_len: int, *, beam_size: int = 1) -> DecoderCache:
        """Caches for decoding up to ``max_len`` target positions of ``beam_size`` hypotheses per sentence.

        The cross-attention keys/values of every layer are computed here, once, from ``memory`` (N, S, D): one
        row per sentence. The self-attention caches get N * ``beam_size`` rows.
        """
        layers, c = [], self.config
        rows = memory.size(0) * beam_size
        for layer in self.decoder.layers:
            k, v = layer.cross_attn.project_kv(memory)  # two (N, H, S, Dh)
            self_cache = KVCache(rows, c.n_heads, c.head_dim, max_len, device=memory.device, dtype=k.dtype)
            layers.append(LayerCache(self_attn=self_cache, cross_attn=KVCache.from_tensors(k, v)))
        return DecoderCache(layers)

    @torch.no_grad()
    def init_state(
        self, src: torch.Tensor, max_len: int, *, beam_size: int = 1, use_cache: bool = True
    ) -> DecoderState:
        """Encode (N, S) source ids once for decoding up to ``max_len`` positions with ``beam_size`` rows each.

        Without ``use_cache`` the state holds no cache and every ``decode_step`` recomputes the whole prefix.
        """
        src_mask = self.src_mask(src)  # (N, 1, 1, S)
        memory = self.encode(src, src_mask)  # (N, S, D)
        cache = self.init_cache(memory, max_len, beam_size=beam_size) if use_cache else None
        return DecoderState(memory, src_mask, cache, beam_size=beam_size)

    def decode_step(self, tokens: torch.Tensor, state: DecoderState) -> torch.Tensor:
        """Next-token logits after (R, t) prefixes (BOS first; R = N*K rows of ``state``) -> (R, V).

        With a cache only the positions it has not seen yet are fed (the last one, step by step).
        """
        new = tokens[:, state.length :]  # (R, t - length)
        hidden = self.decoder(new, state.memory, src_mask=state.src_mask, cache=state.cache)  # (R, T, D)
        return self.output(hidden[:, -1])  # (R, V)


def count_parameters(model: nn.Module) -> int:
    """Number of distinct trainable parameters (tied weights counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
