"""The stock baseline of ``transformer benchmark compare``: ``torch.nn.Transformer`` used the way tutorials use it.

``StockTransformer`` wraps ``nn.Transformer`` with the sizes of a ``ModelConfig`` (d_model, heads, d_ff,
layers, dropout, LayerNorm eps, activation, batch_first=True), its own token embeddings scaled by
sqrt(d_model), a sinusoidal position table and an output projection tied to the target embedding. Its
attention and feed-forward-inner dropouts are set to the config's ``attention_dropout`` and
``activation_dropout`` (``nn.Transformer`` would use ``dropout`` everywhere), so that both models do the
same work. Masks follow the PyTorch translation tutorial: a float causal mask from
``generate_square_subsequent_mask`` plus boolean key-padding masks for source, target and memory.

Decoding is the tutorial's: no cache, the decoder re-runs the whole prefix at every step, whole batches
until every row is done (finished rows are not dropped). ``stock_greedy`` and ``stock_beam_search`` (the
simple tensor way: top-k over beams x vocabulary, finished beams frozen, length penalty at the end) apply
the project's decoding rules (PAD/BOS never generated, ``min_len``, EOS forced at
``int(a * src_len + b)``) so that both implementations generate the same number of tokens.

``copy_weights_from`` loads a project ``Transformer``'s weights, so both compute the same function (for
post-LN, up to the final LayerNorms that ``nn.Transformer`` always adds, left at their initial identity
scale): their losses on a batch agree to about 1e-6.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from transformer.config import ModelConfig
from transformer.model.transformer import Transformer
from transformer.tokens import BOS_ID, EOS_ID, PAD_ID


def sinusoidal_positions(length: int, d_model: int) -> torch.Tensor:
    """The paper's (length, d_model) sinusoid table, as in the tutorials."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    inv_freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    table = torch.zeros(length, d_model)
    table[:, 0::2] = torch.sin(position * inv_freq)
    table[:, 1::2] = torch.cos(position * inv_freq)
    return table


class StockTransformer(nn.Module):
    """``nn.Transformer`` + scaled embeddings + sinusoidal positions + tied output projection."""

    def __init__(self, config: ModelConfig, *, max_len: int = 1024) -> None:
        super().__init__()
        c = config
        self.config = c
        self.src_embedding = nn.Embedding(c.src_vocab_size, c.d_model, padding_idx=PAD_ID)
        share = c.share_embeddings
        self.tgt_embedding = (
            self.src_embedding if share else nn.Embedding(c.tgt_vocab_size, c.d_model, padding_idx=PAD_ID)
        )
        self.register_buffer("positions", sinusoidal_positions(max_len, c.d_model), persistent=False)
        self.dropout = nn.Dropout(c.dropout)
        self.transformer = nn.Transformer(
            d_model=c.d_model, nhead=c.n_heads, num_encoder_layers=c.n_encoder_layers,
            num_decoder_layers=c.n_decoder_layers, dim_feedforward=c.d_ff, dropout=c.dropout,
            activation=c.activation, layer_norm_eps=c.layer_norm_eps, batch_first=True, norm_first=c.norm_first,
        )
        for layer in [*self.transformer.encoder.layers, *self.transformer.decoder.layers]:
            for attn in (getattr(layer, "self_attn"), getattr(layer, "multihead_attn", None)):
                if attn is not None:
                    attn.dropout = c.attention_dropout
            layer.dropout.p = c.activation_dropout  # the feed-forward's inner dropout
        self.generator = nn.Linear(c.d_model, c.tgt_vocab_size, bias=False)
        self.generator.weight = self.tgt_embedding.weight
        self.scale = math.sqrt(c.d_model)

    def _embed(self, embedding: nn.Embedding, tokens: torch.Tensor) -> torch.Tensor:
        x = embedding(tokens) * self.scale + self.positions[: tokens.size(1)]
        return self.dropout(x)

    def encode(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S) ids -> (B, S, D) memory and the (B, S) key-padding mask (True at PAD)."""
        src_padding = src == PAD_ID
        memory = self.transformer.encoder(self._embed(self.src_embedding, src), src_key_padding_mask=src_padding)
        return memory, src_padding

    def decode(self, tgt: torch.Tensor, memory: torch.Tensor, src_padding: torch.Tensor) -> torch.Tensor:
        """(B, T) decoder input ids -> (B, T, V) logits, the whole prefix recomputed."""
        tgt_mask = nn.Transformer.generate_square_subsequent_mask(tgt.size(1), device=tgt.device)
        hidden = self.transformer.decoder(
            self._embed(self.tgt_embedding, tgt), memory, tgt_mask=tgt_mask,
            tgt_key_padding_mask=tgt == PAD_ID, memory_key_padding_mask=src_padding,
        )
        return self.generator(hidden)

    def forward(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: (B, S), (B, T) -> (B, T, V) logits."""
        memory, src_padding = self.encode(src)
        return self.decode(tgt, memory, src_padding)

    @torch.no_grad()
    def copy_weights_from(self, model: Transformer) -> None:
        """Load the weights of a project ``Transformer`` of the same sizes (Q/K/V stacked into in_proj).

        Raises:
            ValueError: ``model`` has learned positions or an untied output, which this baseline does not.
        """
        if model.config.positional != "sinusoidal" or not model.config.tie_output:
            raise ValueError(
                "the stock baseline has sinusoidal positions and a tied output projection; this model has "
                f"positional={model.config.positional!r}, tie_output={model.config.tie_output}"
            )
        self.src_embedding.weight.copy_(model.encoder.embedding.weight)
        self.tgt_embedding.weight.copy_(model.decoder.embedding.weight)
        for ours, stock in zip(model.encoder.layers, self.transformer.encoder.layers):
            _copy_attention(ours.self_attn, stock.self_attn)
            _copy_feed_forward(ours.feed_forward, stock)
            _copy_norms([ours.attn_block.norm, ours.ff_block.norm], [stock.norm1, stock.norm2])
        for ours, stock in zip(model.decoder.layers, self.transformer.decoder.layers):
            _copy_attention(ours.self_attn, stock.self_attn)
            _copy_attention(ours.cross_attn, stock.multihead_attn)
            _copy_feed_forward(ours.feed_forward, stock)
            norms = [ours.self_block.norm, ours.cross_block.norm, ours.ff_block.norm]
            _copy_norms(norms, [stock.norm1, stock.norm2, stock.norm3])
        if model.config.norm_first:  # pre-LN: the stacks' final norms (post-LN keeps nn.Transformer's at identity)
            _copy_norms([model.encoder.final_norm, model.decoder.final_norm],
                        [self.transformer.encoder.norm, self.transformer.decoder.norm])


def _copy_attention(ours: nn.Module, stock: nn.MultiheadAttention) -> None:
    stock.in_proj_weight.copy_(torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight]))
    stock.in_proj_bias.copy_(torch.cat([ours.q_proj.bias, ours.k_proj.bias, ours.v_proj.bias]))
    stock.out_proj.weight.copy_(ours.out_proj.weight)
    stock.out_proj.bias.copy_(ours.out_proj.bias)


def _copy_feed_forward(ours: nn.Module, stock: nn.Module) -> None:
    for name in ("linear1", "linear2"):
        getattr(stock, name).weight.copy_(getattr(ours, name).weight)
        getattr(stock, name).bias.copy_(getattr(ours, name).bias)


def _copy_norms(ours: list[nn.LayerNorm], stock: list[nn.LayerNorm]) -> None:
    for a, b in zip(ours, stock):
        b.weight.copy_(a.weight)
        b.bias.copy_(a.bias)


# ------------------------------------------------------------------------------------------- decoding
def max_lengths(src: torch.Tensor, a: float, b: int) -> torch.Tensor:
    """(B, S) padded source -> (B,) maximum output lengths ``int(a * src_len + b)`` (EOS not counted)."""
    return torch.tensor([int(a * n + b) for n in (src != PAD_ID).sum(1).tolist()], device=src.device)


def _rules(lprobs: torch.Tensor, step: int, max_lens: torch.Tensor, min_len: int) -> torch.Tensor:
    """PAD/BOS never, EOS not before ``min_len``, only EOS at the maximum length; (R, V) in place."""
    eos = lprobs[:, EOS_ID].clone()
    lprobs[:, PAD_ID] = float("-inf")
    lprobs[:, BOS_ID] = float("-inf")
    if step < min_len:
        lprobs[:, EOS_ID] = float("-inf")
    at_max = step >= max_lens
    lprobs[at_max] = float("-inf")
    lprobs[:, EOS_ID] = torch.where(at_max, eos, lprobs[:, EOS_ID])
    return lprobs


@torch.no_grad()
def stock_greedy(
    model: StockTransformer, src: torch.Tensor, *, max_len_a: float, max_len_b: int, min_len: int = 1
) -> list[list[int]]:
    """Batched greedy decoding without a cache; returns B token lists without BOS/EOS."""
    memory, src_padding = model.encode(src)
    max_lens = max_lengths(src, max_len_a, max_len_b)
    ys = torch.full((src.size(0), 1), BOS_ID, dtype=torch.long, device=src.device)
    done = torch.zeros(src.size(0), dtype=torch.bool, device=src.device)
    for step in range(int(max_lens.max()) + 1):
        lprobs = F.log_softmax(model.decode(ys, memory, src_padding)[:, -1].float(), dim=-1)
        best = _rules(lprobs, step, max_lens, min_len).argmax(-1).masked_fill(done, PAD_ID)
        ys = torch.cat([ys, best[:, None]], dim=1)
        done |= best == EOS_ID
        if bool(done.all()):
            break
    return [[t for t in row[1:] if t not in (EOS_ID, PAD_ID)] for row in ys.tolist()]


@torch.no_grad()
def stock_beam_search(
    model: StockTransformer,
    src: torch.Tensor,
    *,
    beam_size: int,
    length_penalty: float,
    max_len_a: float,
    max_len_b: int,
    min_len: int = 1,
) -> list[list[int]]:
    """Batched beam search the simple tensor way, without a cache; the best hypothesis of each sentence.

    All B*K beams advance together; a finished beam is frozen (its only extension is PAD at no cost); the
    search runs until every beam has finished, then ranks by log-prob / GNMT length penalty.
    """
    b, k = src.size(0), beam_size
    memory, src_padding = model.encode(src)
    memory, src_padding = memory.repeat_interleave(k, 0), src_padding.repeat_interleave(k, 0)
    max_lens = max_lengths(src, max_len_a, max_len_b).repeat_interleave(k)
    ys = torch.full((b * k, 1), BOS_ID, dtype=torch.long, device=src.device)
    scores = torch.full((b, k), float("-inf"), device=src.device)
    scores[:, 0] = 0.0  # one live beam at the start, or the first step would pick K copies
    done = torch.zeros(b * k, dtype=torch.bool, device=src.device)
    lengths = torch.zeros(b * k, dtype=torch.long, device=src.device)
    for step in range(int(max_lens.max()) + 1):
        lprobs = F.log_softmax(model.decode(ys, memory, src_padding)[:, -1].float(), dim=-1)  # (B*K, V)
        lprobs = _rules(lprobs, step, max_lens, min_len)
        lprobs[done] = float("-inf")
        lprobs[done, PAD_ID] = 0.0  # a finished beam keeps its score
        vocab = lprobs.size(-1)
        cand = (scores.unsqueeze(-1) + lprobs.view(b, k, vocab)).view(b, k * vocab)
        scores, index = cand.topk(k, dim=1)  # (B, K)
        rows = (torch.arange(b, device=src.device)[:, None] * k + index // vocab).view(-1)
        tokens = (index % vocab).view(-1)
        ys, done, lengths = torch.cat([ys[rows], tokens[:, None]], dim=1), done[rows], lengths[rows]
        lengths = lengths + (~done).long()  # tokens + EOS of the beams still open before this step
        done = done | (tokens == EOS_ID)
        if bool(done.all()):
            break
    normalised = scores / ((5.0 + lengths.view(b, k).float()) / 6.0) ** length_penalty
    best = (torch.arange(b, device=src.device) * k + normalised.argmax(1)).tolist()
    rows = ys[best].tolist()
    return [[t for t in row[1:] if t not in (EOS_ID, PAD_ID)] for row in rows]
