"""The page's words and looks: explanations beside each figure, labels, messages, and the CSS.

Kept apart from the layout so a teacher can read (and correct) every sentence a student sees in one place.
"""

UNREADABLE_PICTURE = "Could not read the starting picture: upload a PNG, JPEG or WebP image."
PICK_PICTURE = "Pick a picture first: upload one, or press **A toy picture** or **My last picture**."
NO_RUN = "Generate an image first (Text to image or Image to image): this panel works on your latest run."

EXPLAIN_FORWARD = """**Forward diffusion: the ink spreading on tissue paper.** Training takes a clean picture and
mixes noise into it, a little at first and then until nothing of the picture is left. In latent space,
*x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise*: move **t** and watch the picture dissolve.
No neural network is involved in this direction, only the model's noise schedule; the U-Net is trained to
look at such a mix and say which part is noise, which is how it learns to run the process backwards."""

EXPLAIN_LATENT = """**The latent space: why Stable Diffusion is fast.** The VAE encoder squeezes the picture into a
small grid of numbers (Stable Diffusion: 48 times fewer), the U-Net does all its work there, and the VAE
decoder turns the result back into pixels. Pictures are not random (every face has eyes and a mouth), so
a well-trained VAE loses little: compare the decode with the original and read the error below."""

EXPLAIN_TEXT = """**Text conditioning.** The tokenizer cuts the prompt into tokens (with a start and an end token,
padded to a fixed length); the CLIP text encoder turns each token into a vector (the heat map: one row per
token). The U-Net reads these vectors through its **cross-attention** layers: every latent pixel weighs the
tokens, and the weights add up to 1. **Run and capture** repeats your last run with this prompt and records
those weights: the maps show which word "lands" where, over the whole run or at one step."""

EXPLAIN_UNET = """**The U-Net: the noise predictor.** It has a *contracting path*
(encoders: the latent grid shrinks, the channels grow) and an *expansive path* (decoders: the grid grows
back), with *skip connections* carrying each resolution's details across. Stable Diffusion adds the
timestep to every block and **cross-attention** (purple) where the prompt enters. Drawn from the selected
model's own configuration."""

EXPLAIN_CFG = """**Classifier-free guidance (CFG).** Each step the U-Net estimates the noise twice, without and with
the prompt; the scheduler uses *uncond + g (text - uncond)*. **Sweep**: your last run's settings and seed at
several g (same starting noise, so only guidance changes). **What-if**: pick one recorded step and
recombine its two stored estimates at another g: the picture shows where that step would have aimed (the
predicted clean latents x0), with no new U-Net call."""

EXPLAIN_AB = """**Prompt A/B.** Prompt A is your last run; prompt B runs with the same seed and settings, so both start
from exactly the same noise. The plot projects both latent trajectories onto their two main directions
(PCA): the paths start at one point and drift apart as the U-Net follows different words."""

EXPLAIN_EXPORT = """**Export** your last run as one zip: the final picture, settings.json (to reproduce it),
trace.npz (every step's tensors, for a notebook), the animation, and every step's panels as PNGs
(for slides). The command line writes the same file: `python -m sdviz generate ... --out out/ --bundle run.zip`."""


EXPLAIN_LATENTS = """**The latents x_t.** Stable Diffusion does not paint pixels: it works on *latents*, a small
grid with 4 numbers for every 8x8 block of pixels, **48x fewer numbers** than the picture (the VAE
translates between the two). Each tile is one of the 4 channels (red = positive, blue = negative,
white = 0). At the first step they are pure random noise; watch structure appear. The colour
previews are a quick **approximation** (a straight linear guess from the 4 channels, no decoder)."""

EXPLAIN_NOISE = """**The noise predictor.** At every step the U-Net looks at x_t and guesses the noise in it,
twice: once **without** the prompt (unconditional) and once **with** it (text). Their difference
(text - uncond) is what the prompt adds. **Classifier-free guidance** pushes along it:
guided = uncond + CFG x (text - uncond). The scheduler then removes part of the *guided* noise. The
direction is usually faint, so it is drawn on its own, stronger colour scale (see the numbers)."""

EXPLAIN_DECODES = """**Back to pixels.** Removing *all* of the guessed noise at once gives the predicted clean
latent **x0**: blurry early on, sharper with every step. Here the VAE decoder turns x_t and x0 into
pictures: full decodes, computed when you pick a step. The animation replays the run (x_t left,
x0 right, approximate colours; its last frame is the real final picture)."""

EXPLAIN_PLOT = """**The schedule.** Sigma is how much noise is left in x_t: the scheduler plans it to fall
from pure noise to almost none. Below: the spread of x_t shrinks towards that of a clean latent,
while the predicted x0 settles down. The red line marks the step you are looking at."""

def unknown_word(what: str, word: str, pieces: tuple[str, ...], known: list[str]) -> str:
    """A word of the prompt that the model's tokenizer has no token for (a toy tokenizer: the embedded model)."""
    return (f"'{word}' is not in this model's vocabulary: it became {'·'.join(pieces)} and is ignored "
            f"(the {what} still runs). The words it learned (besides single letters): {', '.join(known)}.")


def too_long(what: str, max_tokens: int, dropped: list[str]) -> str:
    """A prompt longer than the model's text encoder reads (``max_tokens``: its tokenizer's model_max_length,
    counting the start and end tokens)."""
    shown = " ".join(dropped[:40]) + (f" … ({len(dropped) - 40} more)" if len(dropped) > 40 else "")
    return (f"The {what} is longer than the {max_tokens} tokens this model's text encoder reads (start and end "
            f"tokens included), so it was cut. Dropped ({len(dropped)} words): {shown}")


WAITING = "appears when you press Generate"
LATENT_CAPTIONS = ("x_t: the 4 latent channels", "x_t in colour (approximate)", "predicted x0 (approximate)")
CFG_INFO = ("How hard to follow the prompt. 1 or less means no guidance (one U-Net pass per step). SD 1.5 likes 7.5; "
            "the embedded model 2: too much overshoots.")

CSS = """
.peek-figures { display: grid; grid-template-columns: repeat(auto-fill, minmax(140px, 190px)); gap: 12px; }
.peek-figures figure { margin: 0; }
.peek-figures img, .peek-empty { width: 100%; aspect-ratio: 1; object-fit: contain; image-rendering: pixelated;
  border: 1px solid var(--border-color-primary); border-radius: var(--radius-sm); box-sizing: border-box; }
.peek-empty { display: flex; align-items: center; justify-content: center; text-align: center; padding: 8px;
  font-size: 0.8em; color: var(--body-text-color-subdued); background: var(--background-fill-secondary); }
.peek-figures figcaption { font-size: 0.85em; text-align: center; margin-top: 4px; }
/* Pictures fill their box with sharp pixels (the embedded model draws 64x64), below the component's label. */
.peek-picture .image-container > button, .final-picture .image-container > button,
.teaching-picture .image-container > button { width: 100%; height: 100%; }
.teaching-picture .upload-container { width: 100% !important; }  /* an input picture: Gradio sets width: auto */
.peek-picture .image-frame, .final-picture .image-frame, .teaching-picture .image-frame { width: 100%; height: 100%;
  padding-top: 30px; box-sizing: border-box; }
.peek-picture img, .final-picture img, .teaching-picture img { width: 100%; height: 100%; object-fit: contain;
  image-rendering: pixelated; }
/* The teaching galleries keep their 6 columns with fewer pictures (Gradio would stretch 2 pictures to half the
   width each, taller than the gallery), below the label. */
.teaching-gallery .grid-wrap .grid-container { grid-template-columns: repeat(6, minmax(0, 1fr)); padding-top: 32px; }
.teaching-gallery img { image-rendering: pixelated; }
.explain { font-size: 0.92em; }
#peek-status { min-height: 1.6em; }
#peek-numbers table { font-size: 0.9em; }
"""
