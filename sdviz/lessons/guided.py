"""The guided lesson: eight stations that walk a class through Stable Diffusion in the order of the story.

text to image -> forward diffusion -> the noise predictor and reverse diffusion -> the latent space -> text
conditioning and cross-attention -> classifier-free guidance -> image to image -> the U-Net.

Each station is data: what to do, what to look at, one question and its answer, and the tab that shows it with its
presets, a lesson link (:mod:`sdviz.lessons.links`): the station's button opens that link. The texts describe what
the embedded toy model really shows with these presets (the pictures named were checked on it: seed 7, 20 steps,
its own DPM-Solver scheduler, CFG 2).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sdviz.lessons.links import TABS


@dataclass(frozen=True)
class Station:
    title: str
    do: str
    look: str
    question: str
    answer: str
    tab: str  # the tab that shows it (an id of links.TABS)
    presets: dict = field(default_factory=dict)  # lesson-link values the button applies

    @property
    def link(self) -> dict:
        """The lesson link the station's button opens."""
        return {"tab": self.tab, **self.presets}

    @property
    def tab_label(self) -> str:
        return TABS[self.tab]


TOY_SETTINGS = {"seed": 7, "steps": 20, "cfg": 2.0, "scheduler": "default", "negative": ""}

STATIONS: tuple[Station, ...] = (
    Station(
        "Text to image",
        "Press **Generate** and watch the live view below the settings, step by step.",
        "**Predicted x0** (the middle picture) is a smear at first and a red circle on the left long before the last "
        "step; the final picture comes at the end.",
        "Change only the seed and press Generate again. What changes, and what stays?",
        "The seed picks the starting noise. Another seed gives another red circle, a little elsewhere and of another "
        "size (seed 3 draws a small one); the prompt decides *what* is drawn. The same seed and settings give the "
        "very same picture, on every computer.",
        "txt2img", {**TOY_SETTINGS, "prompt": "a big red circle on the left", "slow": False},
    ),
    Station(
        "Forward diffusion: ink on tissue paper",
        "Move **t** from 0 to 999, a little at a time (the picture follows when you let go of the slider).",
        "The noised picture loses its shape like ink spreading on tissue paper; on the schedule plot the signal "
        "falls and the noise rises as t grows.",
        "Is there a neural network at work in this direction?",
        "No. Forward diffusion is only the schedule's formula, x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) "
        "noise. Training makes such noisy pictures and teaches the U-Net to say which part is noise: that is what "
        "lets it run the process backwards.",
        "forward", {"forward_picture": "big_red_circle_in_the_center", "forward_t": 400, "forward_seed": 0},
    ),
    Station(
        "The noise predictor and reverse diffusion",
        "Press **Generate** (slow motion is on), then scroll down to *Peek inside the loop*.",
        "At every step the U-Net guesses the noise twice, without and with the prompt (the four noise maps); sigma, "
        "the noise left in x_t, falls from step to step.",
        "The U-Net only predicts noise. How does the loop get a picture out of that?",
        "Each step the scheduler removes part of the predicted noise from x_t, giving a slightly cleaner x_t for the "
        "next step. After the last step the latents are clean and the VAE decodes them. Predicted x0 is the same "
        "noise removed all at once, which is why it is blurry early on.",
        "txt2img", {**TOY_SETTINGS, "prompt": "a small blue square at the top", "steps": 12, "slow": True},
    ),
    Station(
        "The latent space (48x fewer numbers)",
        "Compare the picture with its VAE round trip, then press **A toy picture** for another one.",
        "The 4 latent channels: this model's 64 x 64 x 3 picture is 8 x 8 x 4 latents, 48 times fewer numbers; "
        "the error of the round trip is written below.",
        "Why does Stable Diffusion denoise latents instead of pixels?",
        "48 times fewer numbers make every U-Net step far cheaper, and pictures are regular enough that the VAE "
        "loses little: the decode looks like the original. Real Stable Diffusion does the same, 512 x 512 x 3 "
        "pixels to 64 x 64 x 4 latents.",
        "latent", {"latent_picture": "big_yellow_triangle_at_the_top"},
    ),
    Station(
        "Text conditioning and cross-attention",
        "Press **Show tokens and embeddings**, then **Run and capture attention**.",
        "The table: the prompt cut into tokens, with a start and an end token and padding; the maps: where each "
        "word's attention lands in the picture.",
        "The prompt has 7 words. Why does the table have 16 rows?",
        "The tokenizer adds a start and an end token and pads the prompt to a fixed length (this model reads 16 "
        "tokens, Stable Diffusion 77). The text encoder turns every token into a vector, and the U-Net's "
        "cross-attention layers read all of them.",
        "attention", {"attention_prompt": "a big red circle on the left", "attention_special": True},
    ),
    Station(
        "Classifier-free guidance",
        "The button already ran the prompt once: press **Run the sweep**.",
        "The same seed at g = 1, 2, 4 and 8: the same starting noise, only the guidance changes.",
        "Is more guidance always better?",
        "No. Up to g = 2 (this model's recommended value) it is a purple triangle at the top; at 4 it turns red "
        "and at 8 yellow (the judge under each picture says so). Guidance pushes along (text - uncond) *beyond* the prompt's own estimate, and pushed too "
        "far it overshoots.",
        "cfg", {**TOY_SETTINGS, "prompt": "a purple triangle at the top", "run": True, "cfg_scales": "1, 2, 4, 8"},
    ),
    Station(
        "Image to image",
        "Press **Generate**, then try strength 0.3 and 0.9.",
        "The start picture is a yellow triangle; the prompt asks for a purple one. Watch the live view: the run "
        "begins from the start picture with noise added, not from pure noise.",
        "At strength 0.6 the triangle comes out orange, neither yellow nor purple. Why?",
        "Strength is how far along the forward process the start picture is noised: 0.6 noises it to 60% of the "
        "schedule and runs only the last 12 of the 20 steps. Enough yellow survives to mix with the prompt; at 0.3 "
        "it stays yellow, at 0.9 it turns purple.",
        "img2img", {**TOY_SETTINGS, "seed": 0, "prompt": "a big purple triangle at the top",
                    "example": "big_yellow_triangle_at_the_top", "strength": 0.6},
    ),
    Station(
        "The U-Net",
        "Press **Draw the selected model's U-Net**.",
        "Down the left the latent grid shrinks while the channels grow; up the right it grows back; the skip "
        "connections cross between them; purple marks the cross-attention blocks, where the prompt comes in.",
        "Why does the U-Net need the skip connections?",
        "Shrinking the grid lets the U-Net see the whole picture at once but throws detail away; each skip connection "
        "hands a resolution's detail straight across, so the way back up can put the sharp edges back.",
        "unet", {},
    ),
)

def station(number: int) -> Station:
    """Station ``number`` (1-based), clamped to the lesson."""
    return STATIONS[min(max(int(number), 1), len(STATIONS)) - 1]
