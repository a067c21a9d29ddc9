"""Schedulers: how much noise is in the latents at each step, and how one step removes some of it.

Each run gets a fresh scheduler made from the model's own config (schedulers keep a step counter, so two
runs must never share one). Names are sdviz's short ones; ``None`` means the model's own scheduler.
"""

from __future__ import annotations

import copy

import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
)

from sdviz.errors import SdvizError

SCHEDULERS = {
    "ddim": DDIMScheduler,
    "pndm": PNDMScheduler,
    "euler": EulerDiscreteScheduler,
    "euler_a": EulerAncestralDiscreteScheduler,
    "dpmpp_2m": DPMSolverMultistepScheduler,
}


def scheduler_name(scheduler) -> str:
    """The short name of a scheduler instance (or its class name when sdviz has none for it)."""
    for name, cls in SCHEDULERS.items():
        if type(scheduler) is cls:
            return name
    return type(scheduler).__name__


def make_scheduler(model, name: str | None = None):
    """A new scheduler for one run: the model's own (``None``) or one of :data:`SCHEDULERS`.

    A copy of an unused one built once per model and name: ``from_config`` reads every scheduler class's signature
    each time (0.75 ms against 0.15 ms for the copy; thirty students' runs are prepared one after another)."""
    if name in (None, ""):
        cls = type(model.pipe.scheduler)
    elif name in SCHEDULERS:
        cls = SCHEDULERS[name]
    else:
        raise SdvizError(f"Unknown scheduler {name!r}: choose one of {', '.join(SCHEDULERS)}.")
    unused = model.derived_from(("scheduler", cls), model.pipe.scheduler,
                                lambda: _from_config(cls, model.scheduler_config))
    return copy.deepcopy(unused)


def _from_config(cls, config):
    scheduler = cls.from_config(config)
    # StableDiffusionPipeline.__init__ corrects two legacy settings on any scheduler it is given; so do we.
    fixes = {}
    if scheduler.config.get("steps_offset", 1) != 1:
        fixes["steps_offset"] = 1
    if scheduler.config.get("clip_sample", False) is True:
        fixes["clip_sample"] = False
    # PNDM keeps the model's skip_prk_steps as diffusers does (SD 1.x ships True; built from another scheduler's
    # config it is False: Runge-Kutta warm-up steps first), so the picture is diffusers' own; check_steps refuses
    # the step counts PRK cannot plan.
    if fixes:
        scheduler.register_to_config(**fixes)
    return scheduler


def min_steps(scheduler) -> int:
    """The fewest steps a scheduler can plan: PNDM's Runge-Kutta warm-up (PRK) needs 4 (``pndm_order``)."""
    if isinstance(scheduler, PNDMScheduler) and not scheduler.config.skip_prk_steps:
        return scheduler.pndm_order
    return 1


def check_steps(scheduler, steps: int) -> None:
    """Refuse, in plain words, a step count the scheduler cannot plan (diffusers fails with a numpy error)."""
    fewest = min_steps(scheduler)
    if steps < fewest:
        raise SdvizError(
            f"PNDM on this model starts with Runge-Kutta warm-up steps (its scheduler config does not skip them), "
            f"which need at least {fewest} steps (got {steps}): use {fewest} or more steps, or another scheduler."
        )


def is_sigma_space(scheduler) -> bool:
    """Euler-type schedulers keep latents as x0 + sigma * noise (and scale the U-Net's input)."""
    return isinstance(scheduler, (EulerDiscreteScheduler, EulerAncestralDiscreteScheduler))


def input_scale(scheduler, sigma: float) -> float:
    """What ``scale_model_input`` multiplies the latents by before the U-Net sees them.

    Euler-type schedulers keep x_t as x0 + sigma * noise (sigma up to about 14.6 for SD): dividing by
    sqrt(sigma^2 + 1) gives the variance-preserving sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) noise, which the
    other schedulers keep as it is (scale 1). Pictures and decodes of x_t use that form, for every scheduler.
    """
    return 1 / (sigma**2 + 1) ** 0.5 if is_sigma_space(scheduler) else 1.0


def variance_preserving(scheduler, latents: torch.Tensor, sigma: float) -> torch.Tensor:
    """x_t as the U-Net sees it (see :func:`input_scale`)."""
    return latents * input_scale(scheduler, sigma)


def current_sigma(scheduler, t) -> float:
    """The noise level sigma of timestep t (noise std relative to the signal), for any scheduler.

    Euler-type schedulers hold it directly (read after ``scale_model_input``, before ``step``); for the
    others it is sqrt((1 - alpha_bar_t) / alpha_bar_t), the same quantity.
    """
    if is_sigma_space(scheduler) and scheduler.step_index is not None:
        return float(scheduler.sigmas[scheduler.step_index])
    alpha_bar = float(scheduler.alphas_cumprod[int(t)])
    return ((1 - alpha_bar) / alpha_bar) ** 0.5


def x0_from_noise(scheduler, latents: torch.Tensor, model_output: torch.Tensor, t, sigma: float) -> torch.Tensor:
    """The clean latent the model's output implies: remove all of the predicted noise in one go."""
    prediction = scheduler.config.get("prediction_type", "epsilon")
    latents, model_output = latents.float(), model_output.float()
    if is_sigma_space(scheduler):  # x_t = x0 + sigma * eps
        if prediction == "epsilon":
            return latents - sigma * model_output
        # v-prediction in sigma space (see EulerDiscreteScheduler.step)
        return model_output * (-sigma / (sigma**2 + 1) ** 0.5) + latents / (sigma**2 + 1)
    alpha_bar = float(scheduler.alphas_cumprod[int(t)])  # x_t = sqrt(a) x0 + sqrt(1 - a) eps
    a, b = alpha_bar**0.5, (1 - alpha_bar) ** 0.5
    if prediction == "epsilon":
        return (latents - b * model_output) / a
    if prediction == "v_prediction":
        return a * latents - b * model_output
    return model_output  # "sample": the model predicts x0 itself


def scheduler_x0(scheduler, step_output) -> torch.Tensor | None:
    """The x0 the scheduler computed itself during ``step``, where it exposes one."""
    x0 = getattr(step_output, "pred_original_sample", None)
    if x0 is None and isinstance(scheduler, DPMSolverMultistepScheduler):
        if scheduler.config.algorithm_type in ("dpmsolver++", "sde-dpmsolver++"):
            x0 = scheduler.model_outputs[-1]  # DPM-Solver++ converts the noise estimate to x0 and keeps it
    return x0
