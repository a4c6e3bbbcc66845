"""Verifiable token tasks for RL on a small causal transformer (GRPO in miniature).

One shared vocabulary: digits 0-9 are token ids 0..9, then the special tokens below. A prompt is
``[BOS, ...content..., SEP]``, left-padded with PAD to the task's fixed `prompt_width`; the
policy then writes response tokens until END or `max_response_length`.

- ``modular_sum`` (length free): the answer is the sum of the prompt's digits mod 10; any number
  of FILLER tokens before that digit is still correct, so length does not affect correctness
  (where Dr. GRPO's claim, that 1/|o_i| normalisation lets wrong answers grow long, can show).
- ``reverse`` / ``copy`` (length set by the prompt): the answer is the prompt's digits reversed
  (copied), so a correct response has exactly the prompt's length.

Shapes: S seeds (slots), C prompts per seed; prompts ``[S, C, prompt_width]``, responses and
their masks ``[S, C, T]`` with ``T <= max_response_length``, verdicts and rewards ``[S, C]``.
All randomness comes from `bench.seeding.CounterStreams` rows (one per seed), so a seed's
prompts and demonstrations do not depend on which other seeds are drawn with it.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import torch

from bench.seeding import CounterStreams

NUM_DIGITS = 10  # digit d is token id d
PAD = 10         # left padding of prompts (masked out); also fills demonstrations after END
BOS = 11         # prompt start
SEP = 12         # end of prompt, start of response
END = 13         # end of response
FILLER = 14      # a "thinking" token with no meaning
VOCAB_SIZE = 15


@dataclass(frozen=True)
class Prompts:
    """A batch of prompts and what scoring them needs.

    tokens ``[S, C, W]`` long, mask ``[S, C, W]`` bool (False = left padding), answer
    ``[S, C, A]`` long (the correct response's tokens before END, PAD beyond answer_length),
    answer_length ``[S, C]`` long.
    """

    tokens: torch.Tensor
    mask: torch.Tensor
    answer: torch.Tensor
    answer_length: torch.Tensor

    def repeat(self, group: int) -> Prompts:
        """Each prompt `group` times in a row along axis 1 (``[S, C*group, ...]``): the groups
        of GRPO, whose responses share one prompt."""
        return Prompts(*(x.repeat_interleave(group, dim=1) for x in
                         (self.tokens, self.mask, self.answer, self.answer_length)))


def response_mask(responses: torch.Tensor, end_token: int = END) -> torch.Tensor:
    """Bool mask of ``responses [..., T]``: True up to and including the first `end_token`
    along the last axis, False after it; True everywhere in a row without one."""
    is_end = (responses == end_token).to(torch.int64)
    # ENDs strictly before position t; zero means t is at or before the first END.
    return (is_end.cumsum(-1) - is_end) == 0


def _randint(bits: torch.Tensor, n: torch.Tensor | int) -> torch.Tensor:
    """Integers in [0, n) from 32-bit `bits` by multiply-shift (exact integer arithmetic, no
    float rounding at the top of the range; bias below n / 2^32). n < 2^31."""
    return (bits * n) >> 32


def _first_end(responses: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Position of the first END among masked tokens ``[..., T]`` (T where none) and whether
    there is one; what comes after it is ignored, whatever the mask says."""
    ends = (responses == END) & mask
    width = responses.shape[-1]
    positions = torch.arange(width, device=responses.device)
    first = torch.where(ends, positions, width).amin(-1)
    return first, first < width


class Task:
    """Common parts: the vocabulary, defaults and the reward's shape.

    Subclasses set `prompt_width`, `answer_width` (A of `Prompts.answer`) and
    `min_response_length`, implement `sample_prompts` and `_correct`, and may refine
    `_well_formed` and `_demonstration_fillers`.
    """

    vocab_size: int = VOCAB_SIZE
    prompt_width: int
    answer_width: int
    min_response_length: int  # the shortest limit that still allows every correct answer

    def __init__(self, max_response_length: int, format_reward: float) -> None:
        if not math.isfinite(format_reward):
            raise ValueError(f"format_reward must be finite, got {format_reward!r}")
        if max_response_length < self.min_response_length:
            raise ValueError(f"max_response_length={max_response_length!r} is below "
                             f"{self.min_response_length}, the longest correct response")
        self.max_response_length = int(max_response_length)
        self.format_reward = float(format_reward)

    def sample_prompts(self, streams: CounterStreams, count: int) -> Prompts:
        """`count` prompts per stream row (seed): `Prompts` of ``[S, count, ...]``."""
        raise NotImplementedError

    def reward(self, prompts: Prompts, responses: torch.Tensor,
               response_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Verdicts ``correct [S, C]`` (bool) and rewards ``[S, C]`` (float32) of
        ``responses [S, C, T]`` (T <= max_response_length) whose ``response_mask`` is True up to
        and including END. Reward is 1 if correct, plus `format_reward` if well formed.
        A response without END is neither."""
        if responses.shape[-1] > self.max_response_length:
            raise ValueError(f"responses of length {responses.shape[-1]} exceed "
                             f"max_response_length={self.max_response_length}")
        if responses.shape[:-1] != prompts.answer_length.shape:
            raise ValueError(f"responses {tuple(responses.shape)} do not match prompts "
                             f"{tuple(prompts.answer_length.shape)}")
        end, ended = _first_end(responses, response_mask.bool())
        positions = torch.arange(responses.shape[-1], device=responses.device)
        before_end = positions < end[..., None]  # the response's content, END excluded
        correct = ended & self._correct(prompts, responses, end, before_end)
        well_formed = ended & self._well_formed(responses, before_end)
        reward = correct.float() + self.format_reward * well_formed.float()
        return correct, reward

    def _correct(self, prompts: Prompts, responses: torch.Tensor, end: torch.Tensor,
                 before_end: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _well_formed(self, responses: torch.Tensor, before_end: torch.Tensor) -> torch.Tensor:
        return torch.ones(responses.shape[:-1], dtype=torch.bool, device=responses.device)

    def demonstrations(self, prompts: Prompts, streams: CounterStreams, error_rate: float
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """Supervised warm-start responses and masks ``[S, C, max_response_length]``: correct
        answers then END (PAD after, masked out), except that with probability `error_rate`
        one answer digit is replaced by a wrong one. One draw of `streams` (``"demonstrations"``
        rows, one per seed) per call."""
        if not 0.0 <= error_rate <= 1.0:
            raise ValueError(f"error_rate must be in [0, 1], got {error_rate!r}")
        shape = prompts.answer_length.shape
        # One draw of 4 numbers per demonstration: error?, which digit, wrong offset, filler.
        bits = streams.bits((shape[1], 4))[:, 0]  # [S, C, 4]
        wrong = (bits[..., 0] >> 8).float() * 2.0**-24 < error_rate
        which = _randint(bits[..., 1], prompts.answer_length)
        offset = 1 + _randint(bits[..., 2], NUM_DIGITS - 1)  # 1..9: always a different digit
        answer = prompts.answer.clone()
        digit = answer.gather(-1, which[..., None]).squeeze(-1)
        answer.scatter_(-1, which[..., None],
                        torch.where(wrong, (digit + offset) % NUM_DIGITS, digit)[..., None])
        fillers = self._demonstration_fillers(bits[..., 3])
        # Response position t holds FILLER before `fillers`, then answer digit t - fillers,
        # then END at fillers + length, then PAD.
        t = torch.arange(self.max_response_length, device=answer.device)
        start = fillers[..., None]
        stop = start + prompts.answer_length[..., None]
        digits = answer.gather(-1, (t - start).clamp(0, answer.shape[-1] - 1))
        responses = torch.where(t < start, FILLER, digits)
        responses = torch.where(t == stop, END, torch.where(t > stop, PAD, responses))
        return responses, t <= stop

    def _demonstration_fillers(self, bits: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(bits)


class ModularSum(Task):
    """Prompt ``[BOS, d_1..d_n, SEP]``; correct: any FILLER tokens, then (sum d_i) mod 10, END."""

    answer_width = 1
    min_response_length = 2  # the digit and END

    def __init__(self, num_operands: int = 2, max_response_length: int = 8,
                 format_reward: float = 0.0) -> None:
        if num_operands < 1:
            raise ValueError(f"num_operands must be at least 1, got {num_operands!r}")
        self.num_operands = int(num_operands)
        self.prompt_width = self.num_operands + 2
        super().__init__(max_response_length, format_reward)

    def sample_prompts(self, streams: CounterStreams, count: int) -> Prompts:
        digits = _randint(streams.bits((count, self.num_operands))[:, 0], NUM_DIGITS)
        shape = digits.shape[:2]
        tokens = torch.cat([torch.full((*shape, 1), BOS, device=digits.device), digits,
                            torch.full((*shape, 1), SEP, device=digits.device)], dim=-1)
        return Prompts(tokens, torch.ones_like(tokens, dtype=torch.bool),
                       digits.sum(-1, keepdim=True) % NUM_DIGITS,
                       torch.ones(shape, dtype=torch.int64, device=digits.device))

    def _correct(self, prompts, responses, end, before_end):
        # Every content token but the last is FILLER, and the last (at end - 1) is the answer.
        last = (end - 1).clamp(min=0)
        is_last = torch.arange(responses.shape[-1], device=responses.device) == last[..., None]
        fillers_only = ((responses == FILLER) | ~before_end | is_last).all(-1)
        digit = responses.gather(-1, last[..., None]).squeeze(-1)
        return (end >= 1) & fillers_only & (digit == prompts.answer[..., 0])

    def _well_formed(self, responses, before_end):
        return ((responses < NUM_DIGITS) & before_end).sum(-1) == 1

    def _demonstration_fillers(self, bits):
        # 0..3 FILLER tokens before every answer, so the warm-started model knows filler exists
        # (fewer if the length limit leaves no room).
        return _randint(bits, min(4, self.max_response_length - 1))


class Reverse(Task):
    """Prompt ``[PAD.., BOS, d_1..d_L, SEP]`` with L in [min_length, max_length]; correct:
    ``d_L..d_1, END`` (exactly L digits)."""

    reverse = True

    def __init__(self, min_length: int = 2, max_length: int = 5,
                 max_response_length: int | None = None, format_reward: float = 0.0) -> None:
        if not 1 <= min_length <= max_length:
            raise ValueError(f"need 1 <= min_length <= max_length, got min_length="
                             f"{min_length!r}, max_length={max_length!r}")
        self.min_length, self.max_length = int(min_length), int(max_length)
        self.prompt_width = self.max_length + 2
        self.answer_width = self.max_length
        self.min_response_length = self.max_length + 1
        super().__init__(self.max_length + 4 if max_response_length is None
                         else max_response_length, format_reward)

    def sample_prompts(self, streams: CounterStreams, count: int) -> Prompts:
        bits = streams.bits((count, self.max_length + 1))[:, 0]  # [S, C, 1 + max_length]
        length = self.min_length + _randint(bits[..., 0], self.max_length - self.min_length + 1)
        digits = _randint(bits[..., 1:], NUM_DIGITS)  # the first `length` are the list
        # Left padding: column p holds list item p - first (BOS at first - 1, SEP last).
        p = torch.arange(self.prompt_width, device=digits.device)
        first = (self.prompt_width - 1 - length)[..., None]
        item = digits.gather(-1, (p - first).clamp(0, self.max_length - 1))
        tokens = torch.where(p == first - 1, BOS, torch.where(p < first, PAD, item))
        tokens[..., -1] = SEP
        j = torch.arange(self.max_length, device=digits.device)
        valid = j < length[..., None]
        if self.reverse:
            digits = digits.gather(-1, (length[..., None] - 1 - j).clamp(min=0))
        answer = torch.where(valid, digits, PAD)
        return Prompts(tokens, p >= first - 1, answer, length)

    def _correct(self, prompts, responses, end, before_end):
        width = min(responses.shape[-1], prompts.answer.shape[-1])
        matches = (responses[..., :width] == prompts.answer[..., :width]) | ~before_end[..., :width]
        return (end == prompts.answer_length) & matches.all(-1)


class Copy(Reverse):
    """As `Reverse`, but the correct response is ``d_1..d_L, END``."""

    reverse = False


TASKS: dict[str, type[Task]] = {"modular_sum": ModularSum, "reverse": Reverse, "copy": Copy}


def make_task(name: str, **params: object) -> Task:
    """The task `name` of `TASKS` built with `params`; ValueError for an unknown name or
    parameter, or a bad value."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid choices: {', '.join(sorted(TASKS))}")
    try:
        inspect.signature(TASKS[name]).bind(**params)
    except TypeError as error:
        raise ValueError(f"task {name!r}: {error}") from None
    return TASKS[name](**params)
