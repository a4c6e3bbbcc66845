"""The slot-batched causal transformer (`bench.lm.transformer`): cached decoding agrees with a
full pass, causality, slot independence, masking after END and left-padding invariance."""

from __future__ import annotations

import torch

from bench.lm.transformer import SlotTransformer, sample, sequence_logprobs

VOCAB, PAD, END = 15, 0, 1
WIDTH, NEW = 6, 5


def _model(seeds: list[int], layers: int = 2) -> SlotTransformer:
    """A tiny model whose unembedding is scaled up from its near-uniform init, so that the
    tests see logits that depend clearly on the inputs, and END made likely, so rows end
    early."""
    model = SlotTransformer(seeds, VOCAB, WIDTH + 2 + NEW, d_model=16, num_layers=layers,
                            num_heads=2, mlp_ratio=2)
    with torch.no_grad():
        model.unembed.weight.mul_(200.0)
        model.unembed.bias[:, :, END] += 1.0
    return model


def _prompts(num_slots: int, lengths: list[int], seed: int, width: int = WIDTH
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompts ``[S, B, width]`` of the given real lengths, tokens in [2, VOCAB)."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(2, VOCAB, (num_slots, len(lengths), width), generator=generator)
    mask = torch.arange(width) >= width - torch.tensor(lengths)[:, None]
    mask = mask.expand(num_slots, -1, -1).clone()
    return torch.where(mask, tokens, PAD), mask


def _responses(num_slots: int, ends: list[int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Responses ``[S, B, NEW]`` whose row b is real up to position ends[b] (END there when
    inside), with arbitrary tokens after it."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(2, VOCAB, (num_slots, len(ends), NEW), generator=generator)
    ends_t = torch.tensor(ends)[:, None]
    tokens = torch.where(torch.arange(NEW) == ends_t, END, tokens)
    mask = (torch.arange(NEW) <= ends_t).expand(num_slots, -1, -1).clone()
    return tokens, mask


def _grads(model: SlotTransformer, *inputs: torch.Tensor) -> tuple[torch.Tensor, list]:
    """Masked logprobs and the gradient of (their sum + the entropies' sum) per parameter."""
    model.zero_grad()
    logprobs, entropy = sequence_logprobs(model, *inputs)
    (logprobs.sum() + entropy.sum()).backward()
    return logprobs.detach(), [p.grad.clone() for p in model.parameters()]


def test_cached_sampling_matches_full_pass() -> None:
    torch.set_num_threads(1)
    model = _model([0, 1])
    prompts, prompt_mask = _prompts(2, [6, 3, 1, 4, 2, 5], seed=0)
    uniforms = torch.rand(2, 6, NEW, generator=torch.Generator().manual_seed(1))
    tokens, mask, logprobs = sample(model, prompts, prompt_mask, NEW, END, uniforms, PAD)
    lengths = mask.sum(-1)
    assert (lengths < NEW).any() and (lengths == NEW).any()  # some rows end early, some not
    ended = mask & (tokens == END)
    assert (ended.sum(-1) == (lengths < NEW)).all()  # an early end is an END, the last real
    assert (tokens[~mask] == PAD).all() and (logprobs[~mask] == 0).all()
    full, entropy = sequence_logprobs(model, prompts, prompt_mask, tokens, mask)
    assert (full - logprobs).abs().max() < 1e-5
    assert (entropy[~mask] == 0).all() and (entropy[mask] > 0).all()
    # The sampled tokens follow the uniforms: token = #{cdf entries <= u}.
    logits = model(torch.cat([prompts, tokens], -1), torch.cat([prompt_mask, mask], -1))
    cdf = logits[:, :, WIDTH - 1:-1].softmax(-1).cumsum(-1)
    expected = (uniforms[..., None] >= cdf).sum(-1).clamp(max=VOCAB - 1)
    assert torch.equal(tokens[mask], expected[mask])


def test_causal() -> None:
    torch.set_num_threads(1)
    model = _model([3])
    tokens, mask = _prompts(1, [6, 4, 2], seed=2)
    logits = model(tokens, mask)
    changed = tokens.clone()
    changed[:, :, 4] = (changed[:, :, 4] + 1 - 2) % (VOCAB - 2) + 2
    logits_changed = model(changed, mask)
    assert torch.equal(logits[:, :, :4], logits_changed[:, :, :4])
    assert not torch.allclose(logits[:, :, 4:], logits_changed[:, :, 4:], atol=1e-4)


def test_slots_independent() -> None:
    torch.set_num_threads(1)
    solo, packed = _model([7]), _model([3, 7, 11])
    for p_solo, p_packed in zip(solo.parameters(), packed.parameters(), strict=True):
        assert torch.equal(p_solo[0], p_packed[1])  # per-slot initialisation
    lengths, ends = [6, 2, 4, 1], [4, 1, 3, 2]
    prompts, prompt_mask = _prompts(3, lengths, seed=4)
    responses, response_mask = _responses(3, ends, seed=5)
    # Slot 1 of the pack sees different inputs from its neighbours, the solo model slot 1's.
    prompts_solo, responses_solo = prompts[1:2], responses[1:2]
    assert not torch.equal(prompts[0], prompts[1])
    inputs_solo = (prompts_solo, prompt_mask[1:2], responses_solo, response_mask[1:2])
    inputs_packed = (prompts, prompt_mask, responses, response_mask)
    tokens = torch.cat([prompts, responses], -1)
    mask = torch.cat([prompt_mask, response_mask], -1)
    assert torch.equal(solo(tokens[1:2], mask[1:2])[0], packed(tokens, mask)[1])
    logprobs_solo, grads_solo = _grads(solo, *inputs_solo)
    logprobs_packed, grads_packed = _grads(packed, *inputs_packed)  # loss of all three slots
    assert torch.equal(logprobs_solo[0], logprobs_packed[1])
    for (name, _), g_solo, g_packed in zip(solo.named_parameters(), grads_solo, grads_packed,
                                           strict=True):
        assert g_solo.abs().max() > 0, name
        assert torch.allclose(g_solo[0], g_packed[1], rtol=1e-6, atol=1e-9), name


def test_no_gradient_after_end_or_from_padding() -> None:
    torch.set_num_threads(1)
    model = _model([5], layers=1)
    prompts, prompt_mask = _prompts(1, [6, 3, 1, 5], seed=6)
    responses, response_mask = _responses(1, [4, 0, 2, 1], seed=7)
    logprobs, grads = _grads(model, prompts, prompt_mask, responses, response_mask)
    assert (logprobs[~response_mask] == 0).all() and (logprobs[response_mask] != 0).all()
    generator = torch.Generator().manual_seed(8)
    noise = torch.randint(2, VOCAB, responses.shape, generator=generator)
    perturbed = torch.where(response_mask, responses, noise)
    perturbed_prompts = torch.where(
        prompt_mask, prompts, torch.randint(2, VOCAB, prompts.shape, generator=generator))
    assert not torch.equal(perturbed, responses)
    assert not torch.equal(perturbed_prompts, prompts)
    logprobs_p, grads_p = _grads(model, perturbed_prompts, prompt_mask, perturbed,
                                 response_mask)
    assert torch.equal(logprobs, logprobs_p)
    for g, g_p in zip(grads, grads_p, strict=True):
        assert torch.equal(g, g_p)
    # A real response token does matter (the comparison can fail).
    changed = responses.clone()
    changed[0, 0, 1] = (changed[0, 0, 1] + 1 - 2) % (VOCAB - 2) + 2
    _, grads_c = _grads(model, prompts, prompt_mask, changed, response_mask)
    assert not all(torch.equal(g, g_c) for g, g_c in zip(grads, grads_c, strict=True))


def test_left_padding_invariance() -> None:
    torch.set_num_threads(1)
    model = _model([9, 10])
    prompts, prompt_mask = _prompts(2, [6, 3, 1], seed=9)
    responses, response_mask = _responses(2, [4, 2, 0], seed=10)
    wider = torch.cat([torch.full((2, 3, 2), PAD), prompts], -1)
    wider_mask = torch.cat([torch.zeros(2, 3, 2, dtype=torch.bool), prompt_mask], -1)
    logprobs, entropy = sequence_logprobs(model, prompts, prompt_mask, responses, response_mask)
    logprobs_w, entropy_w = sequence_logprobs(model, wider, wider_mask, responses,
                                              response_mask)
    assert torch.allclose(logprobs, logprobs_w, atol=1e-5, rtol=0)
    assert torch.allclose(entropy, entropy_w, atol=1e-5, rtol=0)
    uniforms = torch.rand(2, 3, NEW, generator=torch.Generator().manual_seed(11))
    sampled = sample(model, prompts, prompt_mask, NEW, END, uniforms, PAD)
    sampled_w = sample(model, wider, wider_mask, NEW, END, uniforms, PAD)
    assert torch.equal(sampled[0], sampled_w[0]) and torch.equal(sampled[1], sampled_w[1])
    assert torch.allclose(sampled[2], sampled_w[2], atol=1e-5, rtol=0)
