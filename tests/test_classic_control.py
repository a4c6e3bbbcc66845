"""Batched torch classic-control dynamics (bench.envs.classic_control) against gymnasium's own
environment classes: one step from many random and hand-set states, resets, the interface."""

from __future__ import annotations

import math
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.seeding import np_random
from host_sync import ForbidHostSync

from bench.envs.classic_control import (
    CLASSIC_CONTROL,
    Acrobot,
    CartPole,
    ClassicControl,
    MountainCarContinuous,
    make_classic_control,
)

N = 2048  # random states per parity test
CUDA = torch.cuda.is_available()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not CUDA, reason="needs CUDA"))]
PI = math.pi
F32_MAX_SPEED = float(np.float32(0.07))  # MountainCarContinuous stores its state as float32
# 2 float32 ulps at MountainCarContinuous's largest |position| and |velocity|
F32_STATE_ATOL = 2 * np.spacing(np.float32([1.2, 0.07])).astype(np.float64)


@dataclass
class Step:
    """One step of a batch of environments: next observation, reward, terminated, next state."""

    obs: np.ndarray
    reward: np.ndarray
    terminated: np.ndarray
    state: np.ndarray


def gym_env(gym_id: str, kwargs: dict | None = None) -> gym.Env:
    env = gym.make(gym_id, **(kwargs or {})).unwrapped
    env.reset(seed=0)
    return env


def step_torch(
    gym_id: str, states: np.ndarray, actions: np.ndarray, device: str, kwargs: dict | None = None
) -> Step:
    """Set the torch environments to `states` (one row each) and step them with `actions`."""
    env = make_classic_control(gym_id, len(states), device, kwargs)
    env.state = torch.as_tensor(states, dtype=torch.float64, device=device)
    reward, terminated = env.step(torch.as_tensor(actions, device=device))
    assert reward.dtype == torch.float64 and terminated.dtype == torch.bool
    obs = env.observe()
    assert obs.dtype == torch.float32 and obs.device == env.state.device
    return Step(
        obs.cpu().numpy(), reward.cpu().numpy(), terminated.cpu().numpy(), env.state.cpu().numpy()
    )


def step_gym(
    gym_id: str,
    states: np.ndarray,
    actions: np.ndarray,
    kwargs: dict | None = None,
    state_dtype: type = np.float64,
) -> Step:
    """Step gymnasium's own environment once from each state (stored with `state_dtype`)."""
    env = gym_env(gym_id, kwargs)
    rows = []
    for state, action in zip(states, actions, strict=True):
        env.state = state.astype(state_dtype)
        env.steps_beyond_terminated = None  # CartPole: each row is a live episode
        obs, reward, terminated, _, _ = env.step(int(action) if action.ndim == 0 else action)
        rows.append((obs, reward, terminated, np.asarray(env.state, dtype=np.float64)))
    obs, reward, terminated, state = (np.array(column) for column in zip(*rows, strict=True))
    return Step(obs, reward.astype(np.float64), terminated, state)


def assert_same_step(
    ours: Step, theirs: Step, ambiguous: np.ndarray | None = None, state_atol=1e-9
) -> None:
    """Same observation (float32), state (float64: to `state_atol`), reward and terminated
    flags, the latter except where `ambiguous` (a next state within rounding of a termination
    threshold)."""
    np.testing.assert_allclose(ours.obs, theirs.obs, rtol=1e-6, atol=1e-6)
    for column, atol in enumerate(np.broadcast_to(state_atol, ours.state.shape[1:])):
        np.testing.assert_allclose(ours.state[:, column], theirs.state[:, column], 0, atol)
    np.testing.assert_allclose(ours.reward, theirs.reward, rtol=1e-9, atol=1e-9)
    keep = np.ones(len(ours.terminated), dtype=bool) if ambiguous is None else ~ambiguous
    assert (~keep).sum() <= 2, f"{(~keep).sum()} states next to a threshold"
    np.testing.assert_array_equal(ours.terminated[keep], theirs.terminated[keep])


def assert_occurs(at_least: int = 20, **cases: np.ndarray) -> None:
    """Each edge case (a bool mask over the batch) occurs at least `at_least` times."""
    for name, mask in cases.items():
        assert mask.sum() >= at_least, f"{name} occurred {mask.sum()} times"


# --- parity with gymnasium over many random states ----------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("sutton_barto_reward", [False, True])
def test_cartpole_matches_gymnasium(device: str, sutton_barto_reward: bool) -> None:
    rng = np.random.default_rng(0)
    states = rng.uniform([-3.0, -3.0, -0.35, -4.0], [3.0, 3.0, 0.35, 4.0], size=(N, 4))
    actions = rng.integers(0, 2, N)
    kwargs = {"sutton_barto_reward": sutton_barto_reward}
    ours = step_torch("CartPole-v1", states, actions, device, kwargs)
    theirs = step_gym("CartPole-v1", states, actions, kwargs)

    x, theta = theirs.state[:, 0], theirs.state[:, 2]
    x_limit, theta_limit = CartPole.x_threshold, CartPole.theta_threshold_radians
    assert_occurs(
        x_left=x < -x_limit,
        x_right=x > x_limit,
        theta_left=theta < -theta_limit,
        theta_right=theta > theta_limit,
        alive=~theirs.terminated,
    )
    ambiguous = (abs(abs(x) - x_limit) < 1e-9) | (abs(abs(theta) - theta_limit) < 1e-9)
    assert_same_step(ours, theirs, ambiguous)


@pytest.mark.parametrize("device", DEVICES)
def test_acrobot_matches_gymnasium(device: str) -> None:
    rng = np.random.default_rng(1)
    high = np.array([3 * PI, 3 * PI, 1.3 * Acrobot.MAX_VEL_1, 1.3 * Acrobot.MAX_VEL_2])
    states = rng.uniform(-high, high, size=(N, 4))
    actions = rng.integers(0, 3, N)
    ours = step_torch("Acrobot-v1", states, actions, device)
    theirs = step_gym("Acrobot-v1", states, actions)

    env = Acrobot(N)  # the integrated state before wrapping and bounding
    torques = torch.as_tensor(Acrobot.AVAIL_TORQUE, dtype=torch.float64)[actions]
    raw = env._rk4(torch.as_tensor(states), torques).numpy()
    velocity = theirs.state[:, 2:]
    assert_occurs(
        theta1_wrapped=abs(raw[:, 0]) > PI,
        theta2_wrapped=abs(raw[:, 1]) > PI,
        several_turns=abs(raw[:, :2]).max(1) > 3 * PI,
        dtheta1_bounded=abs(velocity[:, 0]) == Acrobot.MAX_VEL_1,
        dtheta2_bounded=abs(velocity[:, 1]) == Acrobot.MAX_VEL_2,
        terminated=theirs.terminated,
        alive=~theirs.terminated,
    )
    theta1, theta2 = theirs.state[:, 0], theirs.state[:, 1]
    ambiguous = abs(-np.cos(theta1) - np.cos(theta2 + theta1) - 1.0) < 1e-9
    assert_same_step(ours, theirs, ambiguous)


def mountain_car_masks(theirs: Step, dtype: type = np.float64) -> dict:
    """Edge cases of one MountainCar step, from gymnasium's next states (stored as `dtype`)."""
    position, velocity = theirs.state[:, 0], theirs.state[:, 1]
    return {
        "speed_clipped": abs(velocity) == dtype(0.07),
        "position_clipped_right": position == dtype(0.6),
        "left_wall": (position == dtype(-1.2)) & (velocity == 0),
        "goal": theirs.terminated,
        "alive": ~theirs.terminated,
    }


def goal_ambiguous(state: np.ndarray, goal_position: float, goal_velocity: float, tol: float):
    position, velocity = state[:, 0], state[:, 1]
    near_position = (abs(position - goal_position) < tol) & (velocity >= goal_velocity - tol)
    near_velocity = (abs(velocity - goal_velocity) < tol) & (position >= goal_position - tol)
    return near_position | near_velocity


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("goal_velocity", [0, 0.03])
def test_mountain_car_matches_gymnasium(device: str, goal_velocity: float) -> None:
    rng = np.random.default_rng(2)
    states = rng.uniform([-1.3, -0.09], [0.7, 0.09], size=(N, 2))
    actions = rng.integers(0, 3, N)
    kwargs = {"goal_velocity": goal_velocity}
    ours = step_torch("MountainCar-v0", states, actions, device, kwargs)
    theirs = step_gym("MountainCar-v0", states, actions, kwargs)

    assert_occurs(**mountain_car_masks(theirs))
    assert_same_step(ours, theirs, goal_ambiguous(theirs.state, 0.5, goal_velocity, 1e-9))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("state_dtype", [np.float32, np.float64])  # after a step / a reset
def test_mountain_car_continuous_matches_gymnasium(device: str, state_dtype: type) -> None:
    """Gymnasium keeps this state as float32 and mixes float32 and float64 arithmetic (numpy's
    promotion); ours computes in float64 and rounds the state to float32: the next states agree
    to a float32 rounding."""
    rng = np.random.default_rng(3)
    states = rng.uniform([-1.3, -0.09], [0.7, 0.09], size=(N, 2)).astype(state_dtype)
    actions = rng.uniform(-1.6, 1.6, size=(N, 1)).astype(np.float32)  # 3/8 outside the box
    ours = step_torch("MountainCarContinuous-v0", states, actions, device)
    theirs = step_gym("MountainCarContinuous-v0", states, actions, state_dtype=state_dtype)

    assert_occurs(
        force_clipped=abs(actions[:, 0]) > 1.0,
        **mountain_car_masks(theirs, np.float32),
    )
    goal = MountainCarContinuous.goal_position
    ambiguous = goal_ambiguous(theirs.state, goal, 0.0, 1e-6)
    assert_same_step(ours, theirs, ambiguous, state_atol=F32_STATE_ATOL)
    assert np.array_equal(ours.state, ours.state.astype(np.float32))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("action_dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kwargs", [{}, {"g": 9.81}])
def test_pendulum_matches_gymnasium(device: str, action_dtype: type, kwargs: dict) -> None:
    rng = np.random.default_rng(4)
    states = rng.uniform([-4 * PI, -10.0], [4 * PI, 10.0], size=(N, 2))
    actions = rng.uniform(-3.0, 3.0, size=(N, 1)).astype(action_dtype)  # 1/3 outside the box
    ours = step_torch("Pendulum-v1", states, actions, device, kwargs)
    theirs = step_gym("Pendulum-v1", states, actions, kwargs)

    assert_occurs(
        torque_clipped=abs(actions[:, 0]) > 2.0,
        speed_clipped=abs(theirs.state[:, 1]) == 8.0,
        angle_normalized=abs(states[:, 0]) > PI,
    )
    assert not theirs.terminated.any()
    assert_same_step(ours, theirs)


# --- hand-set edge cases ------------------------------------------------------------------


def test_cartpole_terminates_just_past_the_limits() -> None:
    """With zero velocities x and theta stay put: at ±2.4 / ±12 degrees the pole is alive, one
    float past them it has fallen."""
    x_limit, theta_limit = CartPole.x_threshold, CartPole.theta_threshold_radians
    x = [x_limit, np.nextafter(x_limit, 3), -x_limit, np.nextafter(-x_limit, -3), 0, 0, 0, 0]
    theta = [0, 0, 0, 0, theta_limit, np.nextafter(theta_limit, 1)]
    theta += [-theta_limit, np.nextafter(-theta_limit, -1)]
    states = np.stack([x, np.zeros(8), theta, np.zeros(8)], axis=1)
    actions = np.array([0, 1] * 4)
    kwargs = {"sutton_barto_reward": True}
    ours = step_torch("CartPole-v1", states, actions, "cpu", kwargs)
    theirs = step_gym("CartPole-v1", states, actions, kwargs)

    expected = np.array([False, True] * 4)
    np.testing.assert_array_equal(ours.terminated, expected)
    np.testing.assert_array_equal(ours.reward, np.where(expected, -1.0, 0.0))
    np.testing.assert_array_equal(ours.state[:, [0, 2]], states[:, [0, 2]])
    assert_same_step(ours, theirs)
    default = step_torch("CartPole-v1", states, actions, "cpu")
    np.testing.assert_array_equal(default.reward, np.ones(8))


@pytest.mark.parametrize("goal_velocity", [0, 0.05])
def test_mountain_car_walls_speed_limit_and_goal(goal_velocity: float) -> None:
    states = np.array(
        [
            [-1.2, -0.05],  # at the left wall, moving left: stopped
            [-1.15, -0.07],  # hits the left wall at top speed: stopped there
            [-0.5, 0.07],  # at top speed, pushing right: stays at top speed
            [-0.5, -0.07],  # likewise to the left
            [0.49, 0.02],  # reaches the goal (if fast enough)
            [0.59, 0.07],  # past the right edge: clipped to 0.6, at the goal
        ]
    )
    actions = np.array([0, 0, 2, 0, 2, 2])
    kwargs = {"goal_velocity": goal_velocity}
    ours = step_torch("MountainCar-v0", states, actions, "cpu", kwargs)
    assert_same_step(ours, step_gym("MountainCar-v0", states, actions, kwargs))

    np.testing.assert_array_equal(ours.state[:2], [[-1.2, 0.0], [-1.2, 0.0]])
    np.testing.assert_array_equal(ours.state[2:4, 1], [0.07, -0.07])
    np.testing.assert_array_equal(ours.state[5], [0.6, 0.07])
    np.testing.assert_array_equal(ours.terminated, [0, 0, 0, 0, goal_velocity < 0.02, 1])
    np.testing.assert_array_equal(ours.reward, -np.ones(6))


def test_mountain_car_continuous_walls_force_clip_and_goal() -> None:
    states = np.array(
        [
            [-1.2, -0.05],  # at the left wall, moving left: stopped
            [-0.5, 0.07],  # at top speed, pushing right: stays at top speed
            [-0.5, 0.0],  # force 5 acts as 1 but costs 0.1 * 5^2
            [-0.5, 0.0],
            [0.44, 0.02],  # reaches the goal: +100
        ],
        dtype=np.float32,
    )
    actions = np.array([[-1.0], [1.0], [5.0], [1.0], [1.0]], dtype=np.float32)
    ours = step_torch("MountainCarContinuous-v0", states, actions, "cpu")
    theirs = step_gym("MountainCarContinuous-v0", states, actions, state_dtype=np.float32)
    assert_same_step(ours, theirs, state_atol=F32_STATE_ATOL)

    np.testing.assert_array_equal(ours.state[0], [np.float32(-1.2), 0.0])
    assert ours.state[1, 1] == F32_MAX_SPEED
    np.testing.assert_array_equal(ours.state[2], ours.state[3])
    np.testing.assert_array_equal(ours.terminated, [0, 0, 0, 0, 1])
    np.testing.assert_allclose(ours.reward, [-0.1, -0.1, -2.5, -0.1, 99.9], rtol=1e-12)


def test_acrobot_velocity_bounds_angle_wrap_and_goal() -> None:
    states = np.array(
        [
            [0.3, 0.2, 4 * PI, 9 * PI],  # both velocities end above their bounds
            [0.3, 0.2, -4 * PI, -9 * PI],  # dtheta1 ends below -4 pi
            [0.0, 0.0, 0.0, -9 * PI],  # dtheta2 ends below -9 pi
            [PI - 0.01, 0.0, 1.0, 0.0],  # theta1 passes pi: wraps to near -pi
            [PI - 0.1, 0.0, 0.0, 0.0],  # link 1 up: terminated
        ]
    )
    actions = np.array([0, 0, 0, 1, 1])
    ours = step_torch("Acrobot-v1", states, actions, "cpu")
    assert_same_step(ours, step_gym("Acrobot-v1", states, actions))

    np.testing.assert_array_equal(ours.state[0, 2:], [Acrobot.MAX_VEL_1, Acrobot.MAX_VEL_2])
    assert ours.state[1, 2] == -Acrobot.MAX_VEL_1 and ours.state[2, 3] == -Acrobot.MAX_VEL_2
    assert -PI < ours.state[3, 0] < -PI + 0.2
    np.testing.assert_array_equal(ours.terminated, [0, 0, 0, 1, 1])
    np.testing.assert_array_equal(ours.reward, [-1, -1, -1, 0, 0])


def test_pendulum_speed_clip_torque_clip_and_angle_wrap() -> None:
    states = np.array(
        [
            [0.0, 7.99],  # pushed past +8: clipped
            [0.0, -7.99],  # likewise -8
            [0.3, 0.5],  # torque 5 acts and costs as 2
            [0.3, 0.5],
            [3 * PI + 0.5, 1.0],  # angle cost of the normalised angle -pi + 0.5
            [2 * PI + 0.5, 1.0],  # normalised 0.5
        ]
    )
    actions = np.array([[2.0], [-2.0], [5.0], [2.0], [0.0], [0.0]])
    ours = step_torch("Pendulum-v1", states, actions, "cpu")
    assert_same_step(ours, step_gym("Pendulum-v1", states, actions))

    np.testing.assert_array_equal(ours.state[:2, 1], [8.0, -8.0])
    np.testing.assert_array_equal(ours.state[2], ours.state[3])
    np.testing.assert_array_equal(ours.reward[2], ours.reward[3])
    angle_costs = np.array([(PI - 0.5) ** 2, 0.5**2]) + 0.1
    np.testing.assert_allclose(-ours.reward[4:], angle_costs, rtol=1e-12)
    assert not ours.terminated.any()


# --- reset ---------------------------------------------------------------------------------

# gymnasium's reset ranges (low, high) per state component
RESET_RANGES = {
    "CartPole-v1": ([-0.05] * 4, [0.05] * 4),
    "Acrobot-v1": ([np.float32(-0.1)] * 4, [np.float32(0.1)] * 4),  # kept as float32
    "MountainCar-v0": ([-0.6, 0.0], [-0.4, 0.0]),
    "MountainCarContinuous-v0": ([-0.6, 0.0], [-0.4, 0.0]),
    "Pendulum-v1": ([-PI, -1.0], [PI, 1.0]),
}


def gym_observation(env: gym.Env, state: np.ndarray) -> np.ndarray:
    """Gymnasium's observation of `state`."""
    env.state = state
    if hasattr(env, "_get_ob"):  # Acrobot
        return env._get_ob()
    if hasattr(env, "_get_obs"):  # Pendulum
        return env._get_obs()
    return np.array(state, dtype=np.float32)


@pytest.mark.parametrize("gym_id", sorted(CLASSIC_CONTROL))
def test_reset_bounds_and_mask(gym_id: str) -> None:
    """Uniforms 0 and 1 - 2^-24 give gymnasium's low and high reset bounds; unmasked rows keep
    their state; the observation is gymnasium's for the reset state."""
    env = make_classic_control(gym_id, 4)
    env.state = torch.full_like(env.state, 7.0)
    mask = torch.tensor([True, True, False, True])
    uniforms = torch.tensor([0.0, 1 - 2**-24, 0.5, 0.5], dtype=torch.float64)
    env.reset(mask, uniforms[:, None].expand(4, env.reset_uniforms))
    state = env.state.numpy()

    low, high = (np.array(bound, dtype=np.float64) for bound in RESET_RANGES[gym_id])
    np.testing.assert_array_equal(state[0], low)
    np.testing.assert_allclose(state[1], high, rtol=0, atol=(high - low).max() * 2**-23)
    assert (state[1] <= high).all()
    np.testing.assert_array_equal(state[2], np.full(env.state_dim, 7.0))
    np.testing.assert_allclose(state[3], (low + high) / 2, rtol=0, atol=1e-8)
    genv = gym_env(gym_id)
    expected = [gym_observation(genv, row) for row in state]
    np.testing.assert_allclose(env.observe().numpy(), expected, rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("gym_id", sorted(CLASSIC_CONTROL))
def test_reset_from_gymnasiums_generator_is_gymnasiums_reset(gym_id: str) -> None:
    """Uniforms drawn like `env.reset(seed=s)` draws them give exactly its reset state."""
    seeds = range(16)
    env = make_classic_control(gym_id, len(seeds))
    uniforms = np.stack([np_random(seed)[0].random(env.reset_uniforms) for seed in seeds])
    env.reset(torch.ones(len(seeds), dtype=torch.bool), torch.as_tensor(uniforms))
    genv = gym.make(gym_id).unwrapped
    for i, seed in enumerate(seeds):
        obs, _ = genv.reset(seed=seed)
        np.testing.assert_array_equal(env.state[i].numpy(), np.asarray(genv.state, np.float64))
        np.testing.assert_array_equal(env.observe()[i].numpy(), obs)


# --- interface -----------------------------------------------------------------------------


def random_actions(env: ClassicControl, device: str) -> torch.Tensor:
    if env.discrete:
        return torch.randint(env.action_dim, (env.num_envs,), device=device)
    return torch.randn(env.num_envs, env.action_dim, device=device) * 2


@pytest.mark.parametrize("gym_id", sorted(CLASSIC_CONTROL))
def test_attributes_match_gymnasium_spaces(gym_id: str) -> None:
    cls = CLASSIC_CONTROL[gym_id]
    genv = gym.make(gym_id).unwrapped
    assert cls.gym_id == gym_id
    assert (cls.obs_dim,) == genv.observation_space.shape
    if cls.discrete:
        assert cls.action_dim == genv.action_space.n
        assert cls.action_low is None and cls.action_high is None
    else:
        assert (cls.action_dim,) == genv.action_space.shape
        np.testing.assert_array_equal(cls.action_low, genv.action_space.low)
        np.testing.assert_array_equal(cls.action_high, genv.action_space.high)
        assert cls.action_low.dtype == cls.action_high.dtype == np.float32

    env = make_classic_control(gym_id, 5)
    assert env.state.shape == (5, env.state_dim) and env.state.dtype == torch.float64
    assert not env.state.any()
    env.reset(torch.ones(5, dtype=torch.bool), torch.rand(5, env.reset_uniforms).double())
    reward, terminated = env.step(random_actions(env, "cpu"))
    assert reward.shape == terminated.shape == (5,)
    assert env.observe().shape == (5, env.obs_dim)


def test_unknown_id_is_refused() -> None:
    with pytest.raises(ValueError, match=r"'CartPole-v0'.*'Acrobot-v1', 'CartPole-v1'"):
        make_classic_control("CartPole-v0", 2)


def test_unknown_keyword_argument_is_refused() -> None:
    with pytest.raises(ValueError, match=r"\['gravity'\].*\['goal_velocity'\]"):
        make_classic_control("MountainCar-v0", 2, kwargs={"gravity": 1.0})
    with pytest.raises(ValueError, match=r"\['render_mode'\].*none"):
        make_classic_control("Acrobot-v1", 2, kwargs={"render_mode": "human"})
    env = make_classic_control("Pendulum-v1", 2, kwargs={"g": 9.81})
    assert env.g == 9.81


def reset_observe_step(env: ClassicControl, device: str, repeats: int) -> None:
    """Reset a random half of the environments, observe and step them, `repeats` times; the
    inputs are made first."""
    mask = torch.rand(env.num_envs, device=device) < 0.5
    uniforms = torch.rand(env.num_envs, env.reset_uniforms, dtype=torch.float64, device=device)
    actions = random_actions(env, device)
    for _ in range(repeats):
        env.reset(mask, uniforms)
        env.observe()
        env.step(actions)


@pytest.mark.parametrize("gym_id", sorted(CLASSIC_CONTROL))
def test_reset_observe_and_step_use_no_host_synchronising_operation(gym_id: str) -> None:
    env = make_classic_control(gym_id, 64)
    with ForbidHostSync():
        reset_observe_step(env, "cpu", 2)
    with pytest.raises(AssertionError, match="item"), ForbidHostSync():  # the check itself
        env.state[0, 0].item()


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("gym_id", sorted(CLASSIC_CONTROL))
def test_reset_observe_and_step_do_not_synchronise_on_cuda(gym_id: str) -> None:
    env = make_classic_control(gym_id, 64, "cuda")
    reset_observe_step(env, "cuda", 1)  # warm-up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        reset_observe_step(env, "cuda", 3)
    finally:
        torch.cuda.set_sync_debug_mode("default")
