"""A slot-batched causal transformer policy for token tasks.

Every parameter has a leading slot axis ``S`` (as `bench.networks`): slot s's weights only
ever see slot s's tokens, and every projection is a `SeedLinear`, whose weight gradient a
slot's rows decide alone. Slot s is initialised from its own generator
(``torch_generators(seeds, "policy_init")``), so its weights do not depend on which other
seeds share the process.

Shapes: tokens and masks ``[S, B, T]`` (mask False = padding; prompts are left-padded),
hidden states ``[S, B*T, d]`` (the rows SeedLinear sees), logits ``[S, B, T, vocab]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from bench.networks import SeedLinear
from bench.seeding import torch_generators


class SlotLayerNorm(nn.Module):
    """LayerNorm over the last axis of ``[S, M, d]`` with per-slot affine ``[S, 1, d]``."""

    def __init__(self, num_slots: int, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_slots, 1, dim))
        self.bias = nn.Parameter(torch.zeros(num_slots, 1, dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # torch's kernel normalises each row on its own (so a slot's rows do not depend on
        # the others'); the affine part is per slot.
        normalized = torch.nn.functional.layer_norm(x, x.shape[-1:], eps=self.eps)
        return normalized * self.weight + self.bias


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
            allowed: torch.Tensor) -> torch.Tensor:
    """Softmax attention of queries ``[S, B, H, Tq, hd]`` over keys/values ``[S, B, H, Tk, hd]``
    where ``allowed [S, B, 1, Tq, Tk]``; returns ``[S, B, H, Tq, hd]``.

    Callers always allow a query its own key, so no row is fully masked (a padded query
    attends to itself alone: finite, and causal). Disallowed scores get the most negative
    finite float rather than -inf, so even a fully masked row would stay finite; their
    weights are exactly 0 (exp underflows)."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    return torch.softmax(scores, dim=-1) @ v


class _Block(nn.Module):
    """Pre-LayerNorm block: x + attn(ln1(x)), then x + mlp(ln2(x)); x is ``[S, B*T, d]``."""

    def __init__(self, num_slots: int, d_model: int, num_heads: int, mlp_ratio: int) -> None:
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model={d_model} is not a multiple of num_heads={num_heads}")
        self.num_heads = num_heads
        self.ln1, self.ln2 = SlotLayerNorm(num_slots, d_model), SlotLayerNorm(num_slots, d_model)
        self.q, self.k, self.v, self.out = (SeedLinear(num_slots, d_model, d_model)
                                            for _ in range(4))
        self.fc = SeedLinear(num_slots, d_model, mlp_ratio * d_model)
        self.proj = SeedLinear(num_slots, mlp_ratio * d_model, d_model)

    def init(self, generators: Sequence[torch.Generator], num_layers: int) -> None:
        for layer in (self.q, self.k, self.v, self.fc):
            layer.init_orthogonal(generators, gain=1.0)
        # Residual-branch outputs scaled down (as GPT-2) so the residual stream's variance
        # stays bounded in depth.
        for layer in (self.out, self.proj):
            layer.init_orthogonal(generators, gain=1.0 / math.sqrt(2 * num_layers))

    def forward(self, x: torch.Tensor, batch: int, allowed: torch.Tensor,
                past: tuple[torch.Tensor, torch.Tensor] | None
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """`x` holds T new positions per row; keys/values of earlier positions come from
        `past` (``[S, B, H, T_past, hd]`` each). Returns the new x and all keys/values."""
        num_slots, rows, d = x.shape
        length = rows // batch

        def heads(t: torch.Tensor) -> torch.Tensor:  # [S, B*T, d] -> [S, B, H, T, hd]
            return t.view(num_slots, batch, length, self.num_heads, -1).transpose(2, 3)

        h = self.ln1(x)
        q, k, v = heads(self.q(h)), heads(self.k(h)), heads(self.v(h))
        if past is not None:
            k, v = torch.cat([past[0], k], dim=3), torch.cat([past[1], v], dim=3)
        attended = _attend(q, k, v, allowed).transpose(2, 3).reshape(num_slots, rows, d)
        x = x + self.out(attended)
        x = x + self.proj(torch.nn.functional.gelu(self.fc(self.ln2(x))))
        return x, (k, v)


@dataclass
class KVCache:
    """Per-layer keys and values ``[S, B, H, T_so_far, hd]``, the key mask ``[S, B, T_so_far]``
    and the number of real tokens per row ``[S, B]`` (the next position)."""

    kv: list[tuple[torch.Tensor, torch.Tensor]]
    key_mask: torch.Tensor
    lengths: torch.Tensor


class SlotTransformer(nn.Module):
    """S independent causal transformers: ``tokens [S, B, T] -> logits [S, B, T, vocab]``."""

    def __init__(self, seeds: Sequence[int], vocab_size: int, max_positions: int,
                 d_model: int = 64, num_layers: int = 2, num_heads: int = 4,
                 mlp_ratio: int = 4) -> None:
        super().__init__()
        num_slots = len(seeds)
        self.vocab_size, self.max_positions = vocab_size, max_positions
        self.token_embedding = nn.Parameter(torch.empty(num_slots, vocab_size, d_model))
        self.position_embedding = nn.Parameter(torch.empty(num_slots, max_positions, d_model))
        self.blocks = nn.ModuleList(_Block(num_slots, d_model, num_heads, mlp_ratio)
                                    for _ in range(num_layers))
        self.ln_final = SlotLayerNorm(num_slots, d_model)
        self.unembed = SeedLinear(num_slots, d_model, vocab_size)
        # Each slot draws from its own generator only, in a fixed order: its weights do not
        # depend on which seeds share the model.
        generators = torch_generators(seeds, "policy_init")
        with torch.no_grad():
            for table in (self.token_embedding, self.position_embedding):
                for s, generator in enumerate(generators):
                    table[s].normal_(0.0, 0.02, generator=generator)
        for block in self.blocks:
            block.init(generators, num_layers)
        # Small output gain (as the suite's policies): a near-uniform initial policy.
        self.unembed.init_orthogonal(generators, gain=0.01)

    @staticmethod
    def _gather(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Rows ``index [S, M]`` of each slot's ``table [S, N, d]``: ``[S, M, d]``."""
        return table.gather(1, index.unsqueeze(-1).expand(-1, -1, table.shape[2]))

    def _run(self, tokens: torch.Tensor, positions: torch.Tensor, allowed: torch.Tensor,
             past: list[tuple[torch.Tensor, torch.Tensor]] | None
             ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """Logits ``[S, B, T, vocab]`` of T new positions ``tokens, positions [S, B, T]``
        attending where ``allowed [S, B, 1, T, T_past + T]``, and all keys/values."""
        num_slots, batch, length = tokens.shape
        x = (self._gather(self.token_embedding, tokens.reshape(num_slots, -1))
             + self._gather(self.position_embedding, positions.reshape(num_slots, -1)))
        kv = []
        for index, block in enumerate(self.blocks):
            x, layer_kv = block(x, batch, allowed, None if past is None else past[index])
            kv.append(layer_kv)
        logits = self.unembed(self.ln_final(x))
        return logits.view(num_slots, batch, length, -1), kv

    def _full(self, tokens: torch.Tensor, attention_mask: torch.Tensor
              ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        # Left padding: a token's position counts the real tokens before it.
        positions = (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)
        length = tokens.shape[-1]
        causal = torch.ones(length, length, dtype=torch.bool, device=tokens.device).tril()
        # Padded keys are never seen, except by their own (padded) query: the diagonal keeps
        # every row of the softmax non-empty without looking ahead.
        allowed = causal & (attention_mask[:, :, None, None, :] | torch.eye(
            length, dtype=torch.bool, device=tokens.device))
        return self._run(tokens, positions, allowed, None)

    def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits ``[S, B, T, vocab]``; position p predicts token p+1. Padded positions give
        finite logits that mean nothing."""
        return self._full(tokens, attention_mask)[0]

    def start_cache(self, tokens: torch.Tensor, attention_mask: torch.Tensor
                    ) -> tuple[torch.Tensor, KVCache]:
        """Run the (left-padded) prompt ``[S, B, T]``: the last position's logits
        ``[S, B, vocab]`` and the cache to `step` from."""
        logits, kv = self._full(tokens, attention_mask)
        return logits[:, :, -1], KVCache(kv, attention_mask, attention_mask.long().sum(-1))

    def step(self, cache: KVCache, next_tokens: torch.Tensor, next_mask: torch.Tensor
             ) -> tuple[torch.Tensor, KVCache]:
        """Append one position ``next_tokens, next_mask [S, B]``: its logits ``[S, B, vocab]``
        and the extended cache. A masked position is a key no later query sees."""
        key_mask = torch.cat([cache.key_mask, next_mask.unsqueeze(-1)], dim=-1)
        # The one query is last (causal already) and sees itself, as in `_full`.
        allowed = torch.cat([cache.key_mask, torch.ones_like(next_mask).unsqueeze(-1)],
                            dim=-1)[:, :, None, None, :]
        logits, kv = self._run(next_tokens.unsqueeze(-1), cache.lengths.unsqueeze(-1),
                               allowed, cache.kv)
        return logits[:, :, 0], KVCache(kv, key_mask, cache.lengths + next_mask.long())


@torch.no_grad()
def sample(model: SlotTransformer, prompt_tokens: torch.Tensor, prompt_mask: torch.Tensor,
           max_new_tokens: int, end_token: int, uniforms: torch.Tensor,
           pad_token: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Generate up to `max_new_tokens` per row from left-padded prompts ``[S, B, T]``.

    Token t of a row is the inverse-CDF index of ``uniforms[:, :, t]`` (U[0,1), the caller's
    per-seed streams) under softmax(logits). A row stops after its first `end_token`; later
    positions hold `pad_token` (END if None). Returns tokens ``[S, B, max_new_tokens]``, the
    response mask (True up to and including the first END) and the sampled tokens'
    log-probabilities (0 where masked), all ``[S, B, max_new_tokens]``.
    """
    pad = end_token if pad_token is None else pad_token
    logits, cache = model.start_cache(prompt_tokens, prompt_mask)
    alive = torch.ones(prompt_tokens.shape[:2], dtype=torch.bool, device=prompt_tokens.device)
    tokens, masks, logprobs = [], [], []
    for t in range(max_new_tokens):
        log_probs = torch.log_softmax(logits, dim=-1)
        cdf = log_probs.exp().cumsum(dim=-1)
        # right=True: the number of CDF entries <= u, as `bench.networks.Policy.sample`;
        # clamped because rounding can leave cdf[-1] just below u.
        token = torch.searchsorted(cdf, uniforms[:, :, t:t + 1].contiguous(), right=True)
        token = token.clamp(max=cdf.shape[-1] - 1)
        logprob = log_probs.gather(-1, token).squeeze(-1)
        token = token.squeeze(-1)
        tokens.append(torch.where(alive, token, pad))
        logprobs.append(torch.where(alive, logprob, 0.0))
        masks.append(alive)
        alive = alive & (token != end_token)
        if not alive.any():  # every row has ended: the rest is padding
            rest = max_new_tokens - t - 1
            tokens.extend([torch.full_like(token, pad)] * rest)
            logprobs.extend([torch.zeros_like(logprob)] * rest)
            masks.extend([alive] * rest)
            break
        if t + 1 < max_new_tokens:
            logits, cache = model.step(cache, tokens[-1], masks[-1])
    return torch.stack(tokens, -1), torch.stack(masks, -1), torch.stack(logprobs, -1)


def sequence_logprobs(model: SlotTransformer, prompt_tokens: torch.Tensor,
                      prompt_mask: torch.Tensor, responses: torch.Tensor,
                      response_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities of the response tokens and the policy's entropy at each response
    position, both ``[S, B, T_resp]``, from one forward pass over prompt ``[S, B, T_prompt]``
    + response ``[S, B, T_resp]``. Exactly 0, with no gradient, where ``response_mask`` is
    False."""
    tokens = torch.cat([prompt_tokens, responses], dim=-1)
    mask = torch.cat([prompt_mask, response_mask], dim=-1)
    width = prompt_tokens.shape[-1]
    # Position p predicts token p+1: response token j is predicted at width - 1 + j (the
    # prompt's last column is real, as prompts are left-padded).
    logits = model(tokens, mask)[:, :, width - 1:-1]
    log_probs = torch.log_softmax(logits, dim=-1)
    token_logprobs = log_probs.gather(-1, responses.unsqueeze(-1)).squeeze(-1)
    entropy = -(log_probs.exp() * log_probs).sum(dim=-1)
    # torch.where, not a product with the mask: a NaN/inf at a masked position cannot leak
    # into the values or the gradient.
    zero = torch.zeros((), dtype=logits.dtype, device=logits.device)
    return (torch.where(response_mask, token_logprobs, zero),
            torch.where(response_mask, entropy, zero))
