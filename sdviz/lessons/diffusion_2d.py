"""A 2-D diffusion lab: the same reverse diffusion as Stable Diffusion, on points in the plane.

A picture has thousands of numbers, so nobody can see its whole distribution. A point in the plane has two, so
here the whole distribution fits on screen: three Gaussian "classes" around a circle, as in the classifier-free
guidance paper's Figure 2 (Ho & Salimans 2022). The class plays the part of the prompt.

The noise predictor is exact, not trained. For a Gaussian x0 ~ N(mu, S), the noisy point
x_t = sqrt(ab) x0 + sqrt(1 - ab) eps is Gaussian too, N(sqrt(ab) mu, ab S + (1 - ab) I), and eps and x_t are jointly
Gaussian, so the best guess of the noise is

    E[eps | x_t] = sqrt(1 - ab) C^-1 (x_t - sqrt(ab) mu),      C = ab S + (1 - ab) I.

For a mixture, each component's guess is weighted by how likely x_t came from it (its responsibility, by
log-sum-exp). The conditional predictor ("with the prompt") uses only the chosen class's components; the
unconditional one ("no prompt") the whole mixture. A student's drawing is data too: each stroke pixel a small
Gaussian of the class of its colour (:func:`drawn_mixture`), so its predictor is just as exact. So classifier-free guidance is exact too: it goes through
:func:`sdviz.pipeline.sampler.guide`, and the loop is the sampler's own :func:`~sdviz.pipeline.sampler.reverse_steps`
with diffusers' schedulers, as for Stable Diffusion.

The schedule is Stable Diffusion 1.5's (scaled-linear betas 0.00085 to 0.012, 1000 training steps) with one change:
every scheduler's steps start at t = 999 ("trailing" spacing), so the first step always sees almost pure noise,
however few steps are asked for (SD's "leading" spacing starts 5 steps at t = 801, where the data still shows).
"""

from __future__ import annotations

import inspect
import math
import time
from dataclasses import dataclass, replace

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from sdviz.errors import SdvizError
from sdviz.pipeline.sampler import NoiseEstimate, guide, reverse_steps, scheduler_step_kwargs
from sdviz.pipeline.schedulers import SCHEDULERS, current_sigma

# --- The controls of the lab and their ranges (the page and any lesson link read them here) ---------------------


@dataclass(frozen=True)
class Range:
    minimum: float
    maximum: float
    step: float
    default: float


CLASSES = ("red", "blue", "green")  # the three classes, named by the colour they are drawn in
CLASS_COLOURS = ("#d62728", "#1f63b4", "#2ca02c")
ALL_CLASSES = "all three"  # the class control's first choice: a third of the samples for each class
DATA_CHOICES = ("three Gaussians", "my drawing")  # the data: Ho & Salimans' mixture, or the student's drawing
GUIDANCE = Range(0, 10, 0.25, 3.0)  # g = 0: unconditional, 1: conditional, > 1: guided
STEPS = Range(1, 100, 1, 30)
SAMPLES = Range(100, 1000, 50, 500)
SEED = Range(0, 2**31 - 1, 1, 0)
SCHEDULER_NAMES = tuple(SCHEDULERS)  # the same five schedulers as the playground
DEFAULT_SCHEDULER = "ddim"
COMPARE_SCALES = (0.0, 1.0, 3.0, 10.0)  # the side-by-side comparison, plus the scale chosen

SD_SCHEDULE = dict(  # Stable Diffusion 1.5's scheduler config, with trailing timestep spacing (see the module text)
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
    set_alpha_to_one=False, clip_sample=False, skip_prk_steps=True, prediction_type="epsilon",
    timestep_spacing="trailing",
)


@dataclass(frozen=True)
class LabSettings:
    label: int | None = None  # the class that is the "prompt"; None: all three, a third of the samples each
    guidance_scale: float = GUIDANCE.default
    steps: int = int(STEPS.default)
    scheduler: str = DEFAULT_SCHEDULER
    samples: int = int(SAMPLES.default)
    seed: int = int(SEED.default)


def check_lab_settings(settings: LabSettings) -> None:
    """Refuse, in words a student can act on, settings outside the lab's ranges."""

    def whole(name: str, value, limits: Range) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not (
                limits.minimum <= value <= limits.maximum):
            raise SdvizError(f"The {name} must be a whole number from {limits.minimum:g} to {limits.maximum:g} "
                             f"(got {value!r}).")

    if settings.label is not None and settings.label not in range(len(CLASSES)):
        raise SdvizError(f"The class must be one of {', '.join(CLASSES)} or {ALL_CLASSES} (got {settings.label!r}).")
    g = settings.guidance_scale
    if isinstance(g, bool) or not isinstance(g, (int, float)) or not math.isfinite(g) or not (
            GUIDANCE.minimum <= g <= GUIDANCE.maximum):
        raise SdvizError(f"The guidance scale must be a number from {GUIDANCE.minimum:g} to {GUIDANCE.maximum:g} "
                         f"(got {g!r}).")
    whole("number of steps", settings.steps, STEPS)
    whole("number of samples", settings.samples, SAMPLES)
    whole("seed", settings.seed, SEED)
    if settings.scheduler not in SCHEDULERS:
        raise SdvizError(f"Unknown scheduler {settings.scheduler!r}: choose one of {', '.join(SCHEDULERS)}.")


def make_lab_scheduler(name: str):
    """A fresh diffusers scheduler of the lab's schedule (see the module text)."""
    if name not in SCHEDULERS:
        raise SdvizError(f"Unknown scheduler {name!r}: choose one of {', '.join(SCHEDULERS)}.")
    cls = SCHEDULERS[name]
    accepted = inspect.signature(cls.__init__).parameters  # each class takes its own share of SD's config
    return cls.from_config({k: v for k, v in SD_SCHEDULE.items() if k in accepted})


# --- The data: a mixture of Gaussians, and its exact noise predictor ----------------------------------------------


@dataclass(frozen=True)
class Mixture:
    """A mixture of Gaussian components, each belonging to a class (three Gaussians: one component per class; a
    drawing: many small components per colour)."""

    means: np.ndarray  # [K, 2]
    covs: np.ndarray  # [K, 2, 2]
    weights: np.ndarray  # [K], summing to 1
    classes: np.ndarray  # [K]: each component's class, 0 .. len(CLASSES) - 1

    @property
    def present(self) -> list[int]:
        """The classes the data has (a drawing may lack a colour)."""
        return sorted({int(k) for k in self.classes})

    def class_means(self) -> np.ndarray:
        """[len(CLASSES), 2]: each class's centre (NaN for a class the data lacks)."""
        centres = np.full((len(CLASSES), 2), np.nan)
        for k in self.present:
            mine = self.classes == k
            centres[k] = np.average(self.means[mine], axis=0, weights=self.weights[mine])
        return centres

    def class_spread(self, label: int) -> float:
        """sqrt of the mean of the class's two variances (as :class:`ClassStats` measures samples)."""
        mine = self.classes == label
        w = self.weights[mine] / self.weights[mine].sum()
        centred = self.means[mine] - self.class_means()[label]
        cov = np.einsum("k,kij->ij", w, self.covs[mine]) + np.einsum("k,ki,kj->ij", w, centred, centred)
        return float(np.sqrt(np.trace(cov) / 2))

    def sample(self, n: int, rng: np.random.Generator, label: int | None = None) -> np.ndarray:
        """n clean points x0 from the whole mixture, or from one class."""
        w = self.weights if label is None else np.where(self.classes == label, self.weights, 0.0)
        ks = rng.choice(len(w), size=n, p=w / w.sum())
        noise = rng.standard_normal((n, 2))
        return self.means[ks] + np.einsum("nij,nj->ni", np.linalg.cholesky(self.covs)[ks], noise)


def three_gaussians(radius: float = 2.0, along: float = 0.7, across: float = 0.35) -> Mixture:
    """Three equally likely classes around a circle (at 90, 210 and 330 degrees), each stretched along the circle
    (std ``along``) and thin across it (std ``across``), so neighbouring classes overlap a little in their tails."""
    angles = np.deg2rad([90.0, 210.0, 330.0])
    radial = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    tangent = np.stack([-np.sin(angles), np.cos(angles)], axis=1)
    covs = np.stack([along**2 * np.outer(t, t) + across**2 * np.outer(r, r)
                     for r, t in zip(radial, tangent, strict=True)])
    return Mixture(means=radius * radial, covs=covs, weights=np.full(3, 1 / 3), classes=np.arange(3))


MIXTURE = three_gaussians()

DRAWN_STD = 0.15  # each drawn pixel becomes a small round Gaussian this wide (the plane shown is 6 wide)
MAX_DRAWN = 200  # components at most: a drawing's pixels are thinned to this many
DRAWING_HALF_WIDTH = 3.0
NOTHING_DRAWN = "Draw something first: a few strokes in red, blue or green (each colour is a class)."


def drawn_mixture(picture: np.ndarray, seed: int = 0) -> Mixture:
    """A student's drawing as data: every stroke pixel a small Gaussian (at most :data:`MAX_DRAWN`, thinned at
    random), its class the brush colour nearest to the pixel's (red, blue or green), the canvas spanning
    [-3, 3] x [-3, 3]. Still a mixture of Gaussians, so the noise predictor stays exact."""
    rgb = np.asarray(picture, dtype=np.float64)
    if rgb.ndim != 3 or rgb.shape[2] not in (3, 4):
        raise SdvizError("The drawing must be a colour picture (height x width x RGB or RGBA).")
    alpha = rgb[..., 3] if rgb.shape[2] == 4 else np.full(rgb.shape[:2], 255.0)
    palette = np.array([[int(c[i : i + 2], 16) for i in (1, 3, 5)] for c in CLASS_COLOURS], dtype=np.float64)
    distance = np.linalg.norm(rgb[..., None, :3] - palette[None, None], axis=-1)  # [H, W, 3]
    ink = (alpha > 128) & (distance.min(axis=-1) < 120)  # a brush colour, not the canvas or a blend into it
    rows, cols = np.nonzero(ink)
    if len(rows) == 0:
        raise SdvizError(NOTHING_DRAWN)
    if len(rows) > MAX_DRAWN:
        keep = np.random.default_rng(seed).choice(len(rows), size=MAX_DRAWN, replace=False)
        rows, cols = rows[keep], cols[keep]
    size = max(rgb.shape[:2])  # a square plane: the picture's longer side spans it
    x = (cols + 0.5 - rgb.shape[1] / 2) / size * 2 * DRAWING_HALF_WIDTH
    y = (rgb.shape[0] / 2 - rows - 0.5) / size * 2 * DRAWING_HALF_WIDTH
    k = len(rows)
    return Mixture(means=np.stack([x, y], axis=1), covs=np.tile(DRAWN_STD**2 * np.eye(2), (k, 1, 1)),
                   weights=np.full(k, 1 / k), classes=np.argmin(distance[rows, cols], axis=-1))


@dataclass
class ExactNoise:
    """The exact noise predictions at one noise level, for every point."""

    per_class: np.ndarray  # [N, len(CLASSES), 2]: E[eps | x_t, class k] (zero for a class the data lacks)
    log_resp: np.ndarray  # [N, len(CLASSES)]: log P(class k | x_t), the responsibilities (-inf: a class it lacks)
    unconditional: np.ndarray  # [N, 2]: E[eps | x_t] under the whole mixture

    def conditional(self, labels: np.ndarray) -> np.ndarray:
        """E[eps | x_t, class]: each point's own class (labels [N])."""
        return self.per_class[np.arange(len(labels)), labels]


def _given_each_component(mixture: Mixture, x_t: np.ndarray, alpha_bar: float) -> tuple[np.ndarray, np.ndarray]:
    """For every point and component k: C^-1 (x_t - sqrt(ab) mu_k) [N, K, 2] and log N(x_t; sqrt(ab) mu_k, C) [N, K],
    where C = ab S_k + (1 - ab) I is x_t's covariance given the component (2 x 2, inverted by hand: fast for the
    hundreds of components of a drawing)."""
    a = float(alpha_bar)
    cov = a * mixture.covs + (1 - a) * np.eye(2)  # [K, 2, 2]
    det = cov[:, 0, 0] * cov[:, 1, 1] - cov[:, 0, 1] * cov[:, 1, 0]
    x_t = np.asarray(x_t, dtype=np.float64)
    d0 = x_t[:, None, 0] - math.sqrt(a) * mixture.means[None, :, 0]  # [N, K]: x_t - sqrt(ab) mu_k
    d1 = x_t[:, None, 1] - math.sqrt(a) * mixture.means[None, :, 1]
    s0 = (cov[:, 1, 1] * d0 - cov[:, 0, 1] * d1) / det
    s1 = (cov[:, 0, 0] * d1 - cov[:, 1, 0] * d0) / det
    log_lik = -0.5 * (d0 * s0 + d1 * s1) - 0.5 * np.log(det) - math.log(2 * math.pi)
    return np.stack([s0, s1], axis=-1), log_lik


def _weighted(weights: np.ndarray, values: np.ndarray) -> np.ndarray:
    """sum_k weights[n, k] values[n, k, :]: [N, 2]."""
    return np.stack([(weights * values[..., i]).sum(axis=1) for i in range(values.shape[-1])], axis=-1)


def _log_sum_exp(values: np.ndarray) -> np.ndarray:
    """log(sum(exp(values))) over the last axis, kept: far-out points have tiny likelihoods under every component."""
    peak = values.max(axis=-1, keepdims=True)
    return peak + np.log(np.exp(values - peak).sum(axis=-1, keepdims=True))


def exact_noise(mixture: Mixture, x_t: np.ndarray, alpha_bar: float) -> ExactNoise:
    """E[eps | x_t] for x_t = sqrt(ab) x0 + sqrt(1 - ab) eps, x0 from the mixture (float64, any ab in (0, 1)): each
    component's estimate (eps and x_t are jointly Gaussian), weighted by P(component | x_t), by Bayes."""
    solved, log_lik = _given_each_component(mixture, x_t, alpha_bar)
    per_component = math.sqrt(1 - float(alpha_bar)) * solved  # E[eps | x_t, component k]
    joint = np.log(mixture.weights)[None] + log_lik  # log p(k, x_t)
    total = _log_sum_exp(joint)  # log p(x_t)
    unconditional = _weighted(np.exp(joint - total), per_component)
    per_class = np.zeros((len(joint), len(CLASSES), 2))
    log_resp = np.full((len(joint), len(CLASSES)), -np.inf)
    for c in mixture.present:
        mine = mixture.classes == c
        in_class = _log_sum_exp(joint[:, mine])  # log p(c, x_t)
        per_class[:, c] = _weighted(np.exp(joint[:, mine] - in_class), per_component[:, mine])
        log_resp[:, c] = (in_class - total)[:, 0]
    return ExactNoise(per_class=per_class, log_resp=log_resp, unconditional=unconditional)


def log_density(mixture: Mixture, points: np.ndarray, alpha_bar: float = 1.0, label: int | None = None) -> np.ndarray:
    """log p(x_t) of the noised mixture (alpha_bar = 1: the data itself), or of one class."""
    _, log_lik = _given_each_component(mixture, points, alpha_bar)
    weights = mixture.weights if label is None else np.where(mixture.classes == label, mixture.weights, 0.0)
    with np.errstate(divide="ignore"):  # log 0 = -inf: the other classes' components
        return _log_sum_exp(np.log(weights / weights.sum())[None] + log_lik)[:, 0]


# --- Sampling: the sampler's own loop over points ------------------------------------------------------------------


@dataclass
class Lab2DTrace:
    """One run of the lab: every step's points."""

    settings: LabSettings
    mixture: Mixture  # the data
    labels: np.ndarray  # [N]: each point's class (its "prompt")
    timesteps: np.ndarray  # [S]
    alpha_bars: np.ndarray  # [S]: the noise level of each step's input, x_t = sqrt(ab) x0 + sqrt(1 - ab) eps
    points: np.ndarray  # [S + 1, N, 2]: each step's x_t (that mix, for every scheduler), then the final samples
    pred_x0: np.ndarray  # [S, N, 2]: the clean points each step's guided estimate implies (at most 1.6 MB each)
    seconds: float

    @property
    def steps(self) -> int:
        return len(self.timesteps)


def class_labels(samples: int, label: int | None, present: list[int] | None = None) -> np.ndarray:
    """Every point's class: all the chosen one, or each class the data has in turn (a third each for three)."""
    present = list(range(len(CLASSES))) if present is None else present
    return np.array(present)[np.arange(samples) % len(present)] if label is None else np.full(samples, label)


def exact_predictor(mixture: Mixture, scheduler, labels: np.ndarray, guidance_scale: float):
    """The exact noise predictor for the loop: conditional (each point's class) and unconditional (the mixture),
    combined by classifier-free guidance."""
    labels_t = np.asarray(labels)

    def predict(i: int, t, model_input: torch.Tensor) -> NoiseEstimate:
        sigma = current_sigma(scheduler, t)  # the noise level this step's input really has (Euler: interpolated)
        noise = exact_noise(mixture, model_input.numpy(), 1 / (1 + sigma**2))
        text = torch.from_numpy(noise.conditional(labels_t))
        uncond = torch.from_numpy(noise.unconditional)
        return NoiseEstimate(guided=guide(uncond, text, guidance_scale), text=text, uncond=[uncond])

    return predict


def sample_2d(settings: LabSettings, mixture: Mixture = MIXTURE) -> Lab2DTrace:
    """Run reverse diffusion on ``settings.samples`` points from pure noise, with the exact guided predictor, and
    keep every step's points. The same seed gives the same starting noise at every guidance scale."""
    check_lab_settings(settings)
    if settings.label is not None and settings.label not in mixture.present:
        raise SdvizError(f"The data has no {CLASSES[settings.label]} class (a drawing needs {CLASSES[settings.label]} "
                         f"strokes for it): pick {ALL_CLASSES} or a colour it has.")
    started = time.perf_counter()
    labels = class_labels(settings.samples, settings.label, mixture.present)
    scheduler = make_lab_scheduler(settings.scheduler)
    scheduler.set_timesteps(settings.steps)
    generator = torch.Generator("cpu").manual_seed(settings.seed)
    latents = randn_tensor((settings.samples, 2), generator=generator, dtype=torch.float64)
    latents = latents * scheduler.init_noise_sigma
    predict = exact_predictor(mixture, scheduler, labels, settings.guidance_scale)
    points, pred_x0, timesteps, alpha_bars = [], [], [], []
    for step in reverse_steps(scheduler, latents, scheduler.timesteps, predict,
                              scheduler_step_kwargs(scheduler, generator)):
        points.append((step.latents * step.input_scale).numpy())  # x_t as the predictor sees it
        pred_x0.append(step.pred_x0.double().numpy())
        timesteps.append(float(step.timestep))
        alpha_bars.append(1 / (1 + step.sigma**2))
        latents = step.next_latents
    points.append(latents.double().numpy())  # the samples: the last step leaves (almost) no noise
    return Lab2DTrace(settings=settings, mixture=mixture, labels=labels, timesteps=np.array(timesteps),
                      alpha_bars=np.array(alpha_bars), points=np.stack(points), pred_x0=np.stack(pred_x0),
                      seconds=time.perf_counter() - started)


# --- What the samples did: the numbers the paper's figure shows ------------------------------------------------


@dataclass
class ClassStats:
    label: int
    mean: np.ndarray  # [2]
    cov: np.ndarray  # [2, 2]
    spread: float  # sqrt of the mean variance: how concentrated the class's samples are
    distance_to_others: float  # mean distance from each sample to the nearest other class's centre
    radius: float  # mean distance from the centre of the plane (the three Gaussians' means sit at radius 2)
    own_share: float  # share of the samples most likely (at their noise level) to come from their own class


def class_stats(trace: Lab2DTrace, step: int | None = None) -> list[ClassStats]:
    """Per class: where its samples ended (or are at ``step``), how spread out, how far from the other classes
    (NaN where the data has no other class)."""
    mixture = trace.mixture
    step = trace.steps if step is None else step
    points = trace.points[step]
    alpha_bar = trace.alpha_bars[step] if step < trace.steps else 1.0 - 1e-12
    owner = np.argmax(exact_noise(mixture, points, alpha_bar).log_resp, axis=1)
    stats = []
    for k in np.unique(trace.labels):
        own = points[trace.labels == k]
        others = mixture.class_means()[[c for c in mixture.present if c != k]]
        nearest = (np.min(np.linalg.norm(own[:, None, :] - others[None], axis=2), axis=1) if len(others)
                   else np.full(len(own), np.nan))
        cov = np.cov(own.T)
        stats.append(ClassStats(label=int(k), mean=own.mean(axis=0), cov=cov, spread=float(np.sqrt(np.trace(cov) / 2)),
                                distance_to_others=float(nearest.mean()),
                                radius=float(np.linalg.norm(own, axis=1).mean()),
                                own_share=float(np.mean(owner[trace.labels == k] == k))))
    return stats


def compare_guidance(settings: LabSettings, scales=COMPARE_SCALES, mixture: Mixture = MIXTURE) -> list[Lab2DTrace]:
    """The same starting noise at several guidance scales (the chosen one among them), in order."""
    chosen = sorted({float(s) for s in scales} | {float(settings.guidance_scale)})
    return [sample_2d(replace(settings, guidance_scale=g), mixture) for g in chosen]


# --- Pictures for a projector ---------------------------------------------------------------------------------

FONT = 13
MAX_PATHS = 300  # paths drawn (the first of each class in turn): more is only ink


def view_limit(traces: list[Lab2DTrace]) -> float:
    """Half the width of the square view: the data and nearly every sample, the same for every step of a run."""
    extent = max(float(np.quantile(np.abs(t.points), 0.995)) for t in traces)
    return float(np.clip(1.1 * extent, 4.0, 12.0))


def _density_grid(limit: float, n: int = 120) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    axis = np.linspace(-limit, limit, n)
    gx, gy = np.meshgrid(axis, axis)
    return gx, gy, np.stack([gx.ravel(), gy.ravel()], axis=1)


def _draw_classes(ax, mixture: Mixture, limit: float, alpha_bar: float | None = None) -> None:
    """The data: each class's density as coloured contours; under them (``alpha_bar``) the noisy data's density at
    that step, in grey: where x_t's points would be without guidance."""
    gx, gy, grid = _density_grid(limit)
    if alpha_bar is not None:
        noisy = np.exp(log_density(mixture, grid, alpha_bar)).reshape(gx.shape)
        ax.contourf(gx, gy, noisy, levels=np.linspace(0, noisy.max(), 8)[1:], cmap="Greys", alpha=0.45)
    for k in mixture.present:
        clean = np.exp(log_density(mixture, grid, 1.0, label=k)).reshape(gx.shape)
        ax.contour(gx, gy, clean, levels=clean.max() * np.array([0.05, 0.3, 0.7]), colors=CLASS_COLOURS[k],
                   linewidths=1.6)


def _style(ax, limit: float, title: str) -> None:
    ax.set_xlim(-limit, limit)
    ax.set_ylim(-limit, limit)
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=FONT + 1)
    ax.tick_params(labelsize=FONT - 3)


def _path_rows(labels: np.ndarray) -> np.ndarray:
    order = np.argsort(np.arange(len(labels)) // len(CLASSES), kind="stable")  # the classes in turn
    return order[:MAX_PATHS]


def step_title(trace: Lab2DTrace, step: int) -> str:
    """``step`` counts the steps done: 0 is the pure noise the loop starts from, S the samples."""
    if step >= trace.steps:
        return f"the samples after all {trace.steps} steps (g = {trace.settings.guidance_scale:g})"
    ab = trace.alpha_bars[step]
    done = "the start (pure noise)" if step == 0 else f"after {step} of {trace.steps} steps"
    return f"{done}: t = {trace.timesteps[step]:.0f},  x_t = {math.sqrt(ab):.2f} x0 + {math.sqrt(1 - ab):.2f} noise"


def lab_figure(trace: Lab2DTrace, step: int, limit: float | None = None) -> Figure:
    """The points after ``step`` steps (0: the starting noise; S: the samples), coloured by their class, with
    their paths so far (faint), the classes' densities (coloured contours) and the noisy data at that step (grey)."""
    step = int(np.clip(step, 0, trace.steps))
    limit = limit or view_limit([trace])
    fig = Figure(figsize=(7.2, 4.5), layout="constrained")  # fits beside the controls on a 1280 x 720 screen
    ax = fig.subplots()
    _draw_classes(ax, trace.mixture, limit, trace.alpha_bars[step] if step < trace.steps else None)
    rows = _path_rows(trace.labels)
    if step > 0:
        paths = np.transpose(trace.points[: step + 1, rows], (1, 0, 2))  # [P, step + 1, 2]
        colours = [CLASS_COLOURS[k] for k in trace.labels[rows]]
        ax.add_collection(LineCollection(paths, colors=colours, linewidths=0.8, alpha=0.25))
    here = trace.points[step]
    for k in np.unique(trace.labels):
        mine = here[trace.labels == k]
        ax.scatter(mine[:, 0], mine[:, 1], s=22, color=CLASS_COLOURS[k], edgecolors="white", linewidths=0.4,
                   label=f"{CLASSES[k]} class", zorder=3)
    extra = [Line2D([], [], color="grey", linewidth=1.6, label="the data (contours)"),
             Line2D([], [], color="grey", linewidth=0.8, alpha=0.5, label="paths so far")][: 2 if step > 0 else 1]
    if step < trace.steps:
        extra.append(Patch(color="grey", alpha=0.45, label="the data, noised\nto this step"))
    handles, _ = ax.get_legend_handles_labels()
    ax.legend(handles=handles + extra, loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=FONT - 1, markerscale=1.8,
              frameon=False)
    _style(ax, limit, step_title(trace, step))
    return fig


def scale_title(g: float) -> str:
    what = {0.0: "unconditional", 1.0: "conditional"}.get(float(g), "guided")
    return f"g = {g:g} ({what})"


def comparison_figure(traces: list[Lab2DTrace]) -> Figure:
    """The final samples side by side, one panel per guidance scale, all from the same starting noise."""
    limit = view_limit(traces)
    fig = Figure(figsize=(2.7 * len(traces), 3.1), layout="constrained")
    axes = fig.subplots(1, len(traces), squeeze=False)[0]
    for ax, trace in zip(axes, traces, strict=True):
        _draw_classes(ax, trace.mixture, limit)
        final = trace.points[-1]
        for k in np.unique(trace.labels):
            mine = final[trace.labels == k]
            ax.scatter(mine[:, 0], mine[:, 1], s=8, color=CLASS_COLOURS[k], zorder=3)
        _style(ax, limit, scale_title(trace.settings.guidance_scale))
        ax.tick_params(labelsize=FONT - 4)
    fig.suptitle("the same starting noise at several guidance scales g", fontsize=FONT + 1)
    return fig


# --- In words, with the run's own numbers ------------------------------------------------------------------------


def describe_step(trace: Lab2DTrace, step: int) -> str:
    """What the figure shows after ``step`` steps, in the run's own numbers."""
    step = int(np.clip(step, 0, trace.steps))
    if step >= trace.steps:
        where = f"**The samples** after {trace.steps} steps ({trace.settings.scheduler}, g = {trace.settings.guidance_scale:g})."
    else:
        ab = trace.alpha_bars[step]
        done = "**The start**" if step == 0 else f"**After {step} of {trace.steps} steps**"
        where = (f"{done} (t = {trace.timesteps[step]:.0f}): each point is {math.sqrt(ab):.2f} x a clean point + "
                 f"{math.sqrt(1 - ab):.2f} x noise; the grey shows where the data's points lie at this much noise.")
    stats = class_stats(trace, step=step)
    own = ", ".join(f"{CLASSES[s.label]} {s.own_share:.0%}" for s in stats)
    spread = ", ".join(f"{CLASSES[s.label]} {s.spread:.2f} (data {trace.mixture.class_spread(s.label):.2f})"
                       for s in stats)
    return (f"{where} Points most likely to come from their own class: {own}. Spread: {spread}. "
            f"This run took {trace.seconds * 1000:.0f} ms.")


def _number(value: float, form: str) -> str:
    return "–" if math.isnan(value) else format(value, form)


def describe_comparison(traces: list[Lab2DTrace]) -> str:
    """How far the samples ended from the other classes, and how spread out, at each guidance scale."""
    rows = ["| g | distance from the other classes' centres | spread | distance from the middle | "
            "in their own class |", "|---|---|---|---|---|"]
    for trace in traces:
        stats = class_stats(trace)
        distance, spread, radius, own = (float(np.mean([getattr(s, field) for s in stats]))
                                         for field in ("distance_to_others", "spread", "radius", "own_share"))
        rows.append(f"| {scale_title(trace.settings.guidance_scale)} | {_number(distance, '.2f')} | {spread:.2f} | "
                    f"{radius:.2f} | {own:.0%} |")
    mixture = traces[0].mixture
    sampled = sorted({int(k) for k in traces[0].labels})
    data = ", ".join(f"{CLASSES[k]} {mixture.class_spread(k):.2f}" for k in sampled)
    return (f"Averaged over the classes sampled. In the data each class spreads {data}; with no guidance "
            f"(g = 0) the class is ignored, with g = 1 each class comes out as it is.\n\n" + "\n".join(rows))
