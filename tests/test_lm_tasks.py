"""Token tasks (`bench.lm.tasks`): verdicts on hand-made responses, demonstrations and their
error rate, seed independence of prompts, the response mask and the task registry."""

from __future__ import annotations

import math

import pytest
import torch

from bench.lm.tasks import BOS, END, FILLER, PAD, SEP, VOCAB_SIZE, Prompts, make_task, response_mask
from bench.seeding import CounterStreams

torch.set_num_threads(1)
G = 99  # garbage after END: a token id no task may read


def _responses(rows: list[list[int]], width: int) -> torch.Tensor:
    """Rows right-padded with G to ``[1, len(rows), width]``."""
    return torch.tensor([[row + [G] * (width - len(row)) for row in rows]])


def _judge(task, prompts: Prompts, rows: list[list[int]]) -> tuple[list[bool], list[float]]:
    responses = _responses(rows, task.max_response_length)
    correct, reward = task.reward(prompts, responses, response_mask(responses))
    return correct[0].tolist(), reward[0].tolist()


def test_modular_sum_judges_hand_made_responses() -> None:
    task = make_task("modular_sum", num_operands=3, format_reward=0.25)
    tokens = torch.tensor([[[BOS, 7, 8, 9, SEP]]]).expand(1, 9, -1)  # (7+8+9) % 10 = 4
    prompts = Prompts(tokens, torch.ones_like(tokens, dtype=torch.bool),
                      torch.full((1, 9, 1), 4), torch.ones(1, 9, dtype=torch.int64))
    rows = [[4, END], [FILLER, FILLER, FILLER, 4, END],  # correct, filler is free
            [4, END, 5, 5, END],                            # garbage after END ignored
            [5, END],                                       # wrong digit
            [4],                                            # no END (rest garbage, no END)
            [4, FILLER, END],                               # filler after the answer
            [4, 4, END], [END],                             # two digits; no digit
            [FILLER, 3, FILLER, 4, END]]                    # a digit among the filler
    correct, reward = _judge(task, prompts, rows)
    assert correct == [True, True, True, False, False, False, False, False, False]
    assert reward == [1.25, 1.25, 1.25, 0.25, 0.0, 0.25, 0.0, 0.0, 0.0]


def test_reverse_and_copy_judge_hand_made_responses() -> None:
    task = make_task("reverse", min_length=2, max_length=4)
    assert task.max_response_length == 8 and task.prompt_width == 6
    prompts = task.sample_prompts(CounterStreams.for_seeds([0], "task_prompts", "cpu"), 64)
    # Find a prompt of length 3 and check its layout: left padding, BOS, digits, SEP.
    i = int((prompts.answer_length[0] == 3).nonzero()[0])
    row = prompts.tokens[0, i].tolist()
    assert row[:2] == [PAD, BOS] and row[-1] == SEP
    assert prompts.mask[0, i].tolist() == [False] + [True] * 5
    a, b, c = row[2:5]
    one = Prompts(*(x[:, i:i + 1].expand(1, 6, *x.shape[2:]) for x in
                    (prompts.tokens, prompts.mask, prompts.answer, prompts.answer_length)))
    rows = [[c, b, a, END], [c, b, a, END, G, END],  # correct; garbage after END ignored
            [c, b, END], [c, b, a, a, END],             # too short; too long
            [c, b, a], [a, b, c, END] if a != c else [c, (b + 1) % 10, a, END]]
    assert _judge(task, one, rows)[0] == [True, True, False, False, False, False]
    # Copy draws the same prompts from the same stream; only the answer differs.
    copy = make_task("copy", min_length=2, max_length=4)
    copied = copy.sample_prompts(CounterStreams.for_seeds([0], "task_prompts", "cpu"), 64)
    assert torch.equal(copied.tokens, prompts.tokens)
    two = Prompts(*(x[:, [i, i]] for x in
                    (copied.tokens, copied.mask, copied.answer, copied.answer_length)))
    rows = [[a, b, c, END], [c, b, a, END] if a != c else [a, b, END]]
    assert _judge(copy, two, rows)[0] == [True, False]


@pytest.mark.parametrize("name,params", [("modular_sum", {}), ("modular_sum", {"num_operands": 4}),
                                         ("reverse", {}), ("copy", {"max_length": 3})])
def test_demonstrations_are_correct_except_at_the_error_rate(name: str, params: dict) -> None:
    task = make_task(name, **params)
    seeds, count = [0, 1], 2000
    prompts = task.sample_prompts(CounterStreams.for_seeds(seeds, "task_prompts", "cpu"), count)
    assert prompts.tokens.shape == (2, count, task.prompt_width)
    assert int(prompts.tokens.max()) < VOCAB_SIZE
    streams = CounterStreams.for_seeds(seeds, "demonstrations", "cpu")
    responses, mask = task.demonstrations(prompts, streams, error_rate=0.0)
    assert responses.shape == mask.shape == (2, count, task.max_response_length)
    assert torch.equal(mask, response_mask(responses))
    assert bool(task.reward(prompts, responses, mask)[0].all())
    if name == "modular_sum":  # 0..3 fillers before every answer, each count seen
        fillers = (responses == FILLER).sum(-1)
        assert set(fillers.unique().tolist()) == {0, 1, 2, 3}
    responses, mask = task.demonstrations(prompts, streams, error_rate=0.3)
    wrong = 1.0 - task.reward(prompts, responses, mask)[0].float().mean().item()
    assert abs(wrong - 0.3) < 4 * math.sqrt(0.3 * 0.7 / (2 * count))


def test_a_seeds_prompts_do_not_depend_on_the_other_seeds() -> None:
    for name in ("modular_sum", "reverse"):
        task = make_task(name)
        together = task.sample_prompts(CounterStreams.for_seeds([3, 7, 11], "task_prompts", "cpu"),
                                       50)
        alone = task.sample_prompts(CounterStreams.for_seeds([7], "task_prompts", "cpu"), 50)
        for field in ("tokens", "mask", "answer", "answer_length"):
            assert torch.equal(getattr(together, field)[1], getattr(alone, field)[0])
        assert not torch.equal(together.tokens[0], together.tokens[1])


def test_reverse_prompts_cover_every_length_and_answer_the_reversed_digits() -> None:
    task = make_task("reverse", min_length=2, max_length=5)
    prompts = task.sample_prompts(CounterStreams.for_seeds([5], "task_prompts", "cpu"), 400)
    assert set(prompts.answer_length.unique().tolist()) == {2, 3, 4, 5}
    for i in range(20):
        length = int(prompts.answer_length[0, i])
        digits = prompts.tokens[0, i, -1 - length:-1].tolist()
        assert prompts.answer[0, i, :length].tolist() == digits[::-1]
        assert int(prompts.mask[0, i].sum()) == length + 2


def test_response_mask_on_hand_made_rows() -> None:
    rows = torch.tensor([[1, 2, END, 4], [END, END, 3, 3], [1, 2, 3, 4], [1, 2, 3, END]])
    assert response_mask(rows).tolist() == [[True, True, True, False],
                                            [True, False, False, False],
                                            [True, True, True, True], [True, True, True, True]]


def test_bad_names_and_values_raise() -> None:
    with pytest.raises(ValueError, match="nope.*copy, modular_sum, reverse"):
        make_task("nope")
    with pytest.raises(ValueError, match="-1"):
        make_task("modular_sum", num_operands=-1)
    with pytest.raises(ValueError, match="min_length=4"):
        make_task("reverse", min_length=4, max_length=3)
    with pytest.raises(ValueError, match="max_response_length=3"):
        make_task("reverse", max_length=5, max_response_length=3)
    with pytest.raises(ValueError, match="widht"):
        make_task("reverse", widht=3)
