"""How far torch.compile takes a PPO gradient step at S = 10 (docs/performance.md).

A stand-in for the suite's step without its slot machinery: 10 slots x 64 rows of CartPole
(4 observations, 2 actions), 64x64 tanh actor and critic as batched matrix products, PPO's
clipped loss, gradients, then Adam written as tensor ops. Compares eager and
``torch.compile`` (inductor) gradients bit for bit, then times both, alternating, three
rounds (one torch thread): ``.venv/bin/python docs/scripts/compile_gradient_step.py``.
"""

import time

import torch

torch.set_num_threads(1)
SLOTS, ROWS, OBS, HIDDEN, ACTIONS = 10, 64, 4, 64, 2
STEPS = 300
generator = torch.Generator().manual_seed(0)


def parameter(*shape: int) -> torch.Tensor:
    return (torch.randn(*shape, generator=generator) * 0.3).requires_grad_()


def mlp(out: int) -> list[torch.Tensor]:
    return [parameter(SLOTS, OBS, HIDDEN), parameter(SLOTS, 1, HIDDEN),
            parameter(SLOTS, HIDDEN, HIDDEN), parameter(SLOTS, 1, HIDDEN),
            parameter(SLOTS, HIDDEN, out), parameter(SLOTS, 1, out)]


params = mlp(ACTIONS) + mlp(1)
batch = (
    torch.randn(SLOTS, ROWS, OBS, generator=generator),                  # observations
    torch.randint(0, ACTIONS, (SLOTS, ROWS, 1), generator=generator),    # actions
    torch.randn(SLOTS, ROWS, generator=generator) * 0.1 - 0.7,           # old log-probs
    torch.randn(SLOTS, ROWS, generator=generator),                       # advantages
    torch.randn(SLOTS, ROWS, generator=generator),                       # returns
    torch.full((SLOTS, ROWS), 1.0 / ROWS),                               # reduction weights
)


def forward(layers: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    w1, b1, w2, b2, w3, b3 = layers
    x = torch.tanh(torch.baddbmm(b1, x, w1))
    x = torch.tanh(torch.baddbmm(b2, x, w2))
    return torch.baddbmm(b3, x, w3)


def loss(params, obs, actions, old_log_probs, advantages, returns, weights):
    log_probs_all = torch.log_softmax(forward(params[:6], obs), -1)
    values = forward(params[6:], obs).squeeze(-1)
    log_probs = log_probs_all.gather(-1, actions).squeeze(-1)
    entropy = -(log_probs_all.exp() * log_probs_all).sum(-1)
    ratio = (log_probs - old_log_probs).exp()
    policy = torch.max(-advantages * ratio, -advantages * ratio.clamp(0.8, 1.2))
    per_step = policy + 0.5 * 0.5 * (values - returns).pow(2) - 0.0 * entropy
    return (weights * per_step).sum()


compiled_loss = torch.compile(loss, dynamic=False)


def eager_gradients(params, *batch):
    return torch.autograd.grad(loss(params, *batch), params)


def compiled_gradients(params, *batch):
    return torch.autograd.grad(compiled_loss(params, *batch), params)


moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in params]


def adam(params, gradients, step, lr=3e-4, beta1=0.9, beta2=0.999, eps=1e-5) -> None:
    with torch.no_grad():
        for p, g, (m, v) in zip(params, gradients, moments, strict=True):
            m.mul_(beta1).add_(g, alpha=1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            p.sub_(lr * (m / (1 - beta1 ** step)) / ((v / (1 - beta2 ** step)).sqrt() + eps))


start = time.perf_counter()
eager, compiled = eager_gradients(params, *batch), compiled_gradients(params, *batch)
print(f"first compiled call (compiling): {time.perf_counter() - start:.1f} s")
differing = sum(int((a != b).sum()) for a, b in zip(eager, compiled, strict=True))
print(f"gradient elements that differ bitwise: {differing} of {sum(a.numel() for a in eager)}")
for round_ in range(3):
    for name, gradients in (("eager", eager_gradients), ("compiled", compiled_gradients)):
        start = time.perf_counter()
        for step in range(STEPS):
            adam(params, gradients(params, *batch), step + 1)
        with_adam = 1e3 * (time.perf_counter() - start) / STEPS
        start = time.perf_counter()
        for _ in range(STEPS):
            gradients(params, *batch)
        alone = 1e3 * (time.perf_counter() - start) / STEPS
        print(f"round {round_} {name:8s}: gradients {alone:.2f} ms, with Adam {with_adam:.2f} ms")
