"""Gymnasium's classic-control dynamics as batched torch code (any device).

One object steps N independent copies of an environment: its state is a float64 tensor
[N, state_dim] (environments on axis 0) and every method is plain tensor arithmetic, with no
host synchronisation, so the environments can live on the GPU next to the policy. The
arithmetic follows gymnasium 1.4's own classes (`gymnasium.envs.classic_control`) operation
for operation; the physical constants are class attributes with gymnasium's names. Gymnasium's
float32 roundings are kept: Acrobot's reset state and MountainCarContinuous's state are
float32-valued, and Pendulum's torque terms are computed in the action's dtype.

Only the raw dynamics are here: reset distributions (mapped from uniforms the caller draws),
observations, one step's reward and termination. Time limits, autoreset, seeding and
normalisation belong to the wrapper (`bench.envs.torch_backend`).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import torch

F64 = torch.float64


class ClassicControl:
    """N copies of one classic-control environment; subclasses set the class attributes.

    Keyword arguments are those `gymnasium.make` accepts for the environment (`default_kwargs`
    holds them with gymnasium's defaults); each becomes an attribute of the same name.
    """

    gym_id: ClassVar[str]
    obs_dim: ClassVar[int]
    state_dim: ClassVar[int]
    discrete: ClassVar[bool]
    action_dim: ClassVar[int]  # number of actions (discrete) or action dimensions (continuous)
    action_low: ClassVar[np.ndarray | None] = None  # continuous: gymnasium's action Box bounds
    action_high: ClassVar[np.ndarray | None] = None
    reset_uniforms: ClassVar[int]  # U[0, 1) numbers one reset of one environment consumes
    default_kwargs: ClassVar[dict[str, Any]] = {}

    def __init__(self, num_envs: int, device: torch.device | str = "cpu", **kwargs: Any) -> None:
        unknown = sorted(set(kwargs) - set(self.default_kwargs))
        if unknown:
            raise ValueError(
                f"{self.gym_id}: unknown keyword argument(s) {unknown}; "
                f"valid: {sorted(self.default_kwargs) or 'none'}"
            )
        for name, value in {**self.default_kwargs, **kwargs}.items():
            setattr(self, name, value)
        self.num_envs = num_envs
        self.device = torch.device(device)
        self.state = torch.zeros(num_envs, self.state_dim, dtype=F64, device=self.device)

    def reset(self, mask: torch.Tensor, uniforms: torch.Tensor) -> None:
        """Reset the environments where `mask` (bool [N]) is True to gymnasium's reset
        distribution, mapped from `uniforms` (float64 [N, reset_uniforms] in [0, 1), one row per
        environment, used in the order gymnasium draws them); other rows keep their state."""
        self.state = torch.where(mask[:, None], self._initial_state(uniforms), self.state)

    def observe(self) -> torch.Tensor:
        """Gymnasium's observation of the current state: float32 [N, obs_dim]."""
        return self.state.float()

    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Advance all N environments one step with `actions` (discrete: int64 [N]; continuous:
        float [N, action_dim], clipped as gymnasium does). Returns reward (float64 [N]) and
        terminated (bool [N]) as gymnasium gives them within a live episode. Replaces
        `self.state` with a new tensor and never writes into the old one (callers may keep it
        to undo a step)."""
        raise NotImplementedError

    def _initial_state(self, uniforms: torch.Tensor) -> torch.Tensor:
        """Reset states [N, state_dim] for all rows, from uniforms [N, reset_uniforms]."""
        raise NotImplementedError


class CartPole(ClassicControl):
    """CartPole-v1; state (x, x_dot, theta, theta_dot), Euler integration."""

    gym_id = "CartPole-v1"
    obs_dim = state_dim = 4
    discrete = True
    action_dim = 2
    reset_uniforms = 4
    default_kwargs = {"sutton_barto_reward": False}

    gravity = 9.8
    masscart = 1.0
    masspole = 0.1
    total_mass = masspole + masscart
    length = 0.5  # actually half the pole's length
    polemass_length = masspole * length
    force_mag = 10.0
    tau = 0.02  # seconds between state updates
    theta_threshold_radians = 12 * 2 * math.pi / 360
    x_threshold = 2.4
    reset_low, reset_high = -0.05, 0.05

    def _initial_state(self, uniforms: torch.Tensor) -> torch.Tensor:
        return self.reset_low + (self.reset_high - self.reset_low) * uniforms

    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, x_dot, theta, theta_dot = self.state.unbind(1)
        force = torch.where(actions == 1, self.force_mag, -self.force_mag).to(F64)
        costheta = torch.cos(theta)
        sintheta = torch.sin(theta)

        temp = (force + self.polemass_length * theta_dot.square() * sintheta) / self.total_mass
        thetaacc = (self.gravity * sintheta - costheta * temp) / (
            self.length * (4.0 / 3.0 - self.masspole * costheta.square() / self.total_mass)
        )
        xacc = temp - self.polemass_length * thetaacc * costheta / self.total_mass

        x = x + self.tau * x_dot
        x_dot = x_dot + self.tau * xacc
        theta = theta + self.tau * theta_dot
        theta_dot = theta_dot + self.tau * thetaacc
        self.state = torch.stack((x, x_dot, theta, theta_dot), dim=1)

        terminated = (
            (x < -self.x_threshold)
            | (x > self.x_threshold)
            | (theta < -self.theta_threshold_radians)
            | (theta > self.theta_threshold_radians)
        )
        if self.sutton_barto_reward:  # 0 while alive, -1 on the terminating step
            reward = torch.where(terminated, -1.0, 0.0).to(F64)
        else:
            reward = torch.ones_like(x)
        return reward, terminated


def wrap(x: torch.Tensor, m: float, M: float) -> torch.Tensor:
    """Gymnasium's acrobot `wrap`, elementwise: shift x by whole turns M - m into [m, M]
    (one turn: the same arithmetic as its loop; several turns: may differ in the last bit)."""
    diff = M - m
    x = torch.where(x > M, x - diff * torch.ceil((x - M) / diff), x)
    return torch.where(x < m, x + diff * torch.ceil((m - x) / diff), x)


class Acrobot(ClassicControl):
    """Acrobot-v1 ("book" dynamics, no torque noise); state (theta1, theta2, dtheta1, dtheta2),
    one RK4 step of length dt per step."""

    gym_id = "Acrobot-v1"
    obs_dim = 6
    state_dim = 4
    discrete = True
    action_dim = 3
    reset_uniforms = 4

    dt = 0.2
    LINK_LENGTH_1 = 1.0
    LINK_MASS_1 = 1.0
    LINK_MASS_2 = 1.0
    LINK_COM_POS_1 = 0.5
    LINK_COM_POS_2 = 0.5
    LINK_MOI = 1.0
    MAX_VEL_1 = 4 * math.pi
    MAX_VEL_2 = 9 * math.pi
    AVAIL_TORQUE = (-1.0, 0.0, +1.0)
    g = 9.8
    reset_low, reset_high = -0.1, 0.1

    def __init__(self, num_envs: int, device: torch.device | str = "cpu", **kwargs: Any) -> None:
        super().__init__(num_envs, device, **kwargs)
        self.torques = torch.tensor(self.AVAIL_TORQUE, dtype=F64, device=self.device)

    def _initial_state(self, uniforms: torch.Tensor) -> torch.Tensor:
        # gymnasium keeps the reset state as float32
        return (self.reset_low + (self.reset_high - self.reset_low) * uniforms).float().to(F64)

    def observe(self) -> torch.Tensor:
        theta1, theta2, dtheta1, dtheta2 = self.state.unbind(1)
        obs = (torch.cos(theta1), torch.sin(theta1), torch.cos(theta2), torch.sin(theta2))
        return torch.stack((*obs, dtheta1, dtheta2), dim=1).float()

    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        torque = self.torques.index_select(0, actions)
        s = self._rk4(self.state, torque)
        theta1 = wrap(s[:, 0], -math.pi, math.pi)
        theta2 = wrap(s[:, 1], -math.pi, math.pi)
        dtheta1 = s[:, 2].clamp(-self.MAX_VEL_1, self.MAX_VEL_1)
        dtheta2 = s[:, 3].clamp(-self.MAX_VEL_2, self.MAX_VEL_2)
        self.state = torch.stack((theta1, theta2, dtheta1, dtheta2), dim=1)

        terminated = -torch.cos(theta1) - torch.cos(theta2 + theta1) > 1.0
        reward = terminated.to(F64) - 1.0  # -1 while alive, 0 on reaching the height
        return reward, terminated

    def _rk4(self, s0: torch.Tensor, torque: torch.Tensor) -> torch.Tensor:
        """Gymnasium's `rk4` over t = [0, dt] for states s0 [N, 4] (the torque is constant)."""
        dt = self.dt
        dt2 = dt / 2.0
        k1 = self._dsdt(s0, torque)
        k2 = self._dsdt(s0 + dt2 * k1, torque)
        k3 = self._dsdt(s0 + dt2 * k2, torque)
        k4 = self._dsdt(s0 + dt * k3, torque)
        return s0 + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)

    def _dsdt(self, s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Time derivative [N, 4] of states s [N, 4] under torques a [N]."""
        m1 = self.LINK_MASS_1
        m2 = self.LINK_MASS_2
        l1 = self.LINK_LENGTH_1
        lc1 = self.LINK_COM_POS_1
        lc2 = self.LINK_COM_POS_2
        I1 = self.LINK_MOI
        I2 = self.LINK_MOI
        g = self.g
        theta1, theta2, dtheta1, dtheta2 = s.unbind(1)
        cos, pi = torch.cos, math.pi
        cos_theta2, sin_theta2 = cos(theta2), torch.sin(theta2)
        d1 = m1 * lc1**2 + m2 * (l1**2 + lc2**2 + 2 * l1 * lc2 * cos_theta2) + I1 + I2
        d2 = m2 * (lc2**2 + l1 * lc2 * cos_theta2) + I2
        phi2 = m2 * lc2 * g * cos(theta1 + theta2 - pi / 2.0)
        phi1 = (
            -m2 * l1 * lc2 * dtheta2**2 * sin_theta2
            - 2 * m2 * l1 * lc2 * dtheta2 * dtheta1 * sin_theta2
            + (m1 * lc1 + m2 * l1) * g * cos(theta1 - pi / 2)
            + phi2
        )
        ddtheta2 = (a + d2 / d1 * phi1 - m2 * l1 * lc2 * dtheta1**2 * sin_theta2 - phi2) / (
            m2 * lc2**2 + I2 - d2**2 / d1
        )
        ddtheta1 = -(d2 * ddtheta2 + phi1) / d1
        return torch.stack((dtheta1, dtheta2, ddtheta1, ddtheta2), dim=1)


class MountainCar(ClassicControl):
    """MountainCar-v0; state (position, velocity)."""

    gym_id = "MountainCar-v0"
    obs_dim = state_dim = 2
    discrete = True
    action_dim = 3
    reset_uniforms = 1
    default_kwargs = {"goal_velocity": 0}

    min_position = -1.2
    max_position = 0.6
    max_speed = 0.07
    goal_position = 0.5
    force = 0.001
    gravity = 0.0025
    reset_low, reset_high = -0.6, -0.4

    def _initial_state(self, uniforms: torch.Tensor) -> torch.Tensor:
        position = self.reset_low + (self.reset_high - self.reset_low) * uniforms[:, 0]
        return torch.stack((position, torch.zeros_like(position)), dim=1)

    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        position, velocity = self.state.unbind(1)
        accel = (actions - 1).to(F64) * self.force + torch.cos(3 * position) * (-self.gravity)
        position, velocity, terminated = self._move(position, velocity, accel)
        self.state = torch.stack((position, velocity), dim=1)
        return torch.full_like(position, -1.0), terminated

    def _move(
        self, position: torch.Tensor, velocity: torch.Tensor, accel: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Apply the velocity change `accel` with the speed and position limits and the left
        wall (which stops the car); returns the new position, velocity and goal flags."""
        velocity = (velocity + accel).clamp(-self.max_speed, self.max_speed)
        position = (position + velocity).clamp(self.min_position, self.max_position)
        velocity = torch.where((position == self.min_position) & (velocity < 0), 0.0, velocity)
        terminated = (position >= self.goal_position) & (velocity >= self.goal_velocity)
        return position, velocity, terminated


class MountainCarContinuous(MountainCar):
    """MountainCarContinuous-v0; state (position, velocity), kept float32-valued as gymnasium
    stores it after each step."""

    gym_id = "MountainCarContinuous-v0"
    discrete = False
    action_dim = 1
    min_action = -1.0
    max_action = 1.0
    action_low = np.array([min_action], dtype=np.float32)
    action_high = np.array([max_action], dtype=np.float32)

    goal_position = 0.45
    power = 0.0015
    gravity = 0.0025  # a literal in gymnasium's step
    goal_reward = 100.0
    action_cost = 0.1  # times the squared (unclipped) action

    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        position, velocity = self.state.unbind(1)
        action = actions[:, 0].to(F64)
        force = action.clamp(self.min_action, self.max_action)
        accel = force * self.power - self.gravity * torch.cos(3 * position)
        position, velocity, terminated = self._move(position, velocity, accel)
        self.state = torch.stack((position, velocity), dim=1).float().to(F64)
        reward = self.goal_reward * terminated.to(F64) - action.square() * self.action_cost
        return reward, terminated


def angle_normalize(x: torch.Tensor) -> torch.Tensor:
    """Gymnasium's pendulum `angle_normalize`: the angle x in [-pi, pi)."""
    return ((x + math.pi) % (2 * math.pi)) - math.pi


class Pendulum(ClassicControl):
    """Pendulum-v1; state (theta, theta_dot); never terminates."""

    gym_id = "Pendulum-v1"
    obs_dim = 3
    state_dim = 2
    discrete = False
    action_dim = 1
    reset_uniforms = 2
    default_kwargs = {"g": 10.0}

    max_speed = 8
    max_torque = 2.0
    dt = 0.05
    m = 1.0
    l = 1.0  # noqa: E741 (gymnasium's name)
    action_low = np.array([-max_torque], dtype=np.float32)
    action_high = np.array([max_torque], dtype=np.float32)
    reset_high = (math.pi, 1.0)  # gymnasium's DEFAULT_X, DEFAULT_Y; low = -high

    def _initial_state(self, uniforms: torch.Tensor) -> torch.Tensor:
        high = self.reset_high
        columns = [-high[i] + (high[i] - -high[i]) * uniforms[:, i] for i in range(len(high))]
        return torch.stack(columns, dim=1)

    def observe(self) -> torch.Tensor:
        theta, theta_dot = self.state.unbind(1)
        return torch.stack((torch.cos(theta), torch.sin(theta), theta_dot), dim=1).float()

    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        th, thdot = self.state.unbind(1)
        # The torque terms stay in the action's dtype, as numpy computes them in gymnasium
        # (float32 for actions from its float32 Box); the sums are float64.
        u = actions[:, 0].clamp(-self.max_torque, self.max_torque)
        costs = angle_normalize(th) ** 2 + 0.1 * thdot**2 + 0.001 * (u**2)

        g, m, l, dt = self.g, self.m, self.l, self.dt  # noqa: E741
        newthdot = thdot + (3 * g / (2 * l) * torch.sin(th) + 3.0 / (m * l**2) * u) * dt
        newthdot = newthdot.clamp(-self.max_speed, self.max_speed)
        newth = th + newthdot * dt
        self.state = torch.stack((newth, newthdot), dim=1)
        return -costs, torch.zeros_like(th, dtype=torch.bool)


CLASSIC_CONTROL: dict[str, type[ClassicControl]] = {
    env.gym_id: env for env in (CartPole, Acrobot, MountainCar, MountainCarContinuous, Pendulum)
}


def make_classic_control(
    gym_id: str,
    num_envs: int,
    device: torch.device | str = "cpu",
    kwargs: dict[str, Any] | None = None,
) -> ClassicControl:
    """`num_envs` copies of the environment `gym_id` on `device`, with gymnasium.make's
    keyword arguments `kwargs`."""
    if gym_id not in CLASSIC_CONTROL:
        raise ValueError(
            f"no torch implementation of {gym_id!r}; supported: {sorted(CLASSIC_CONTROL)}"
        )
    return CLASSIC_CONTROL[gym_id](num_envs, device, **(kwargs or {}))
