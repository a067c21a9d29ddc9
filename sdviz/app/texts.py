"""The page's words and looks: explanations beside each figure, labels, messages, and the CSS.

Kept apart from the layout so a teacher can read (and correct) every sentence a student sees in one place.
"""

UNREADABLE_PICTURE = "Could not read the starting picture: upload a PNG, JPEG or WebP image."
PICK_PICTURE = "Pick a picture first: upload one, or press **A toy picture** or **My last picture**."
NO_RUN = "Generate an image first (Text to image or Image to image): this panel works on your latest run."
UNREADABLE_UPLOAD = "That file is not a picture this app can read: upload a PNG, JPEG or WebP image."
OUT_OF_WORLD = ("**Why so poor?** This model's VAE was trained only on toy pictures (one flat shape on a plain light "
                "background), so it never learnt to encode anything else: a round trip of {psnr:.1f} dB is what it "
                "does with a picture from outside its world. Stable Diffusion's own VAE, trained on photos, keeps "
                "them above 25 dB.")
PROMPT_PLACEHOLDER = "e.g. a big red circle on the left (empty = no prompt)"

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
those weights: the maps show which word "lands" where, over the whole run or at one step. All maps share one
grey scale (white = the most attention), so a brighter map is a word the picture listens to more."""

EXPLAIN_LENS = """The U-Net normally reads what the text encoder's **last** layer makes of the prompt. **Diffusion Lens**
(Toker et al. 2024) hands it the text as it is after an **earlier** layer instead (through the encoder's final layer
norm, as the last layer's is): one whole run per layer, all from your last run's seed and settings with the prompt
above, so each picture shows what the prompt "means" by that layer. **What to look at on the embedded model (3
layers):** the early layers most often get the **colour** wrong (12 prompts x 3 seeds: the picture fully right 28
times at layer 1, 31 at layer 2, 35 at layer 3; of the 14 pictures the judge found wrong, 13 had the wrong colour
and one the wrong shape)."""

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

EXPLAIN_VARIANTS = """Two changes to CFG, each run beside plain CFG from your last run's settings and seed (the same
starting noise) at the g below. **Guidance rescale r** (Lin et al. 2023; diffusers' `guidance_rescale`) pulls the
guided estimate's spread back towards that of the prompt's own estimate, which a large g inflates (the plot).
**CFG on an interval** guides only on that share of the steps (0 = the first step, 1 = the end) and uses the
prompt's estimate alone elsewhere: one U-Net call a step instead of two. **What changes on the embedded model**
(12 prompts x 2 seeds): rescale barely moves its pictures (RMS 0.003 at g = 7.5: its guided estimate spreads only a
little more than the prompt's own, see the plot); guiding only the first half of the steps saves a quarter of the calls and
keeps the picture (at g = 2, 22 of 24 fully right against 23 with CFG throughout; at g = 7.5, 17 against 7, because
late guidance over-saturates the colour), while guiding only the second half often loses the prompt (18 of 24 at
g = 2): the early steps decide the picture."""

EXPLAIN_AB = """**Prompt A/B.** Prompt A is your last run; prompt B runs with the same seed and settings, so both start
from exactly the same noise. Move the step (or press **Play**) to watch both runs side by side: x_t and the
predicted clean picture x0 of each. The plot projects both latent trajectories onto their two main directions
(PCA): the paths start at one point and drift apart as the U-Net follows different words."""

LAB2D_HEADLINE = ("**Reverse diffusion on points in the plane**, where the whole distribution fits on screen: press "
                  "**▶ Play** and watch noise become samples of the three classes; then raise the guidance **g**.")

LAB2D_DRAW_TITLE = "Draw your own data (then pick data: my drawing)"
LAB2D_DRAW = ("Pick the brush (the pen on the left of the canvas) and draw strokes in **red, blue and green**: each "
              "colour is a class. Every stroke pixel becomes a small "
              "Gaussian (200 at most), so the data is still a mixture of Gaussians and the noise predictor stays "
              "exact. The canvas is the plane from -3 to 3; each stroke samples again.")

EXPLAIN_LAB2D = """**What you see.** A picture has thousands of numbers; here each sample is a point with two, so the
whole distribution fits on screen. The data is three Gaussian classes (the **coloured contours**), as in the CFG
paper's Figure 2 (Ho & Salimans 2022), or your drawing, and the class plays the part of the prompt: each **dot** is coloured by the class
it was asked for, the **faint lines** are the paths the dots took, and the **grey** shows where the data's points lie
at the current step's noise level. The noise predictor is exact (a mixture of Gaussians needs no training), with and
without the class, and the loop is Stable Diffusion's own: its schedulers, its CFG formula *uncond + g (cond -
uncond)*. **g = 0** ignores the class (dots of every colour land on every class), **g = 1** samples each class as it is,
and **more g** pushes each class's dots away from the other classes and bunches them up; much guidance carries them
past the far edge of their class. Below: the same starting noise at several g, with the numbers."""

EXPLAIN_EXPORT = """**Export** your last run as one zip: the final picture, settings.json (to reproduce it),
trace.npz (every step's tensors, for a notebook), the animation, and for every step the VAE's pictures of x_t
and x0 (large, for slides) and the step's panels. The command line writes the same file: `python -m sdviz generate ... --out out/ --bundle run.zip`."""


def latent_shape(model) -> str:
    """The model's latents as width x height x channels, at its own picture size: "8 x 8 x 4" (the one way the
    playground writes a shape)."""
    f, rec = model.vae_scale_factor, model.recommended
    return f"{rec.width // f} x {rec.height // f} x {model.vae.config.latent_channels}"


def picture_shape(model) -> str:
    rec = model.recommended
    return f"{rec.width} x {rec.height} x {model.vae.config.in_channels}"


def explain_latents(model) -> str:
    """The latents' explanation, with the selected model's numbers."""
    from sdviz.pipeline.vae import compression_ratio

    c, f = model.vae.config.latent_channels, model.vae_scale_factor
    return (f"**The latents x_t.** Stable Diffusion does not paint pixels: it works on *latents*, a small grid with "
            f"{c} numbers for every {f} x {f} block of pixels: this model's {picture_shape(model)} pictures are "
            f"{latent_shape(model)} latents, **{compression_ratio(model):g}x fewer numbers** (the VAE translates "
            f"between the two). Each tile is one of the {c} channels (red = positive, blue = negative, white = 0, "
            f"on the colour scale printed under it). At the first step they are pure random noise; watch "
            f"structure appear. x_t is shown as the U-Net sees it: Euler-type schedulers keep x0 + σ·noise, "
            f"divided here by √(σ²+1).")


EXPLAIN_NOISE = """**The noise predictor.** At every step the U-Net looks at x_t and guesses the noise in it,
twice: once **without** the prompt (unconditional) and once **with** it (text). Their difference
(text - uncond) is what the prompt adds. **Classifier-free guidance** pushes along it:
guided = uncond + CFG x (text - uncond). The scheduler then removes part of the *guided* noise. The
unconditional, text and guided maps share one colour scale; the direction is usually faint, so it has its own,
stronger one (each printed under its picture)."""


def explain_live(real_decodes: bool) -> str:
    """The compact live view's explanation: real decodes (a cheap VAE, the embedded model's) or the fast preview."""
    how = ("**real VAE decodes**, made for every frame (this model's decoder takes milliseconds)" if real_decodes else
           "a **fast preview** while it runs (a colour map fitted on this model's own VAE, no decoder: too slow "
           "here for every step); a step you pick and the final picture are real VAE decodes")
    return (f"**x_t** is what the loop holds at this step; **predicted x0** is x_t with *all* of the guessed noise "
            f"removed at once: blurry early on, sharper with every step. Both are shown as {how}. **At the first "
            f"steps x_t is almost pure noise, yet its decode looks like a light canvas with smears: the VAE only "
            f"ever saw the latents of clean pictures, so it cannot draw noise** (the noise is in the latent tiles "
            f"below). The guided noise is what the U-Net says is noise in x_t.")


EXPLAIN_TIMELINE = """**Replay the run**: ▶ Play steps the whole panel (decodes, latents, noise, numbers and the plot's
marker) at the pace you pick; ◀ step and step ▶ go one at a time. During a run it replays the steps that have
arrived. **Slow motion** makes the next run wait at every step, so the whole class sees each step arrive."""


def explain_plot(records=None) -> str:
    """The plot's explanation; with a run's records, what its curves did, in its own numbers (the spread of x_t
    depends on the scheduler: those of Euler's kind hold x_t at the scale of sigma, the others keep it a mix whose
    spread starts near that of unit noise)."""
    text = ("**The schedule.** Sigma is how much noise is left in x_t: the scheduler plans it to fall from pure "
            "noise to almost none. The red line marks the step you are looking at.")
    if not records:
        return text
    from sdviz.lessons.peek import rms

    def trend(first: float, last: float) -> str:
        if abs(last - first) <= 0.15 * max(abs(first), abs(last)):
            return f"stays near {first:.2f} (from {first:.2f} to {last:.2f})"
        return f"{'rises' if last > first else 'falls'} from {first:.2f} to {last:.2f}"

    first, last = records[0], records[-1]
    x_t = [float(r.latents.float().std()) for r in (first, last)]
    x0 = [float(r.pred_x0.float().std()) for r in (first, last)]
    noise = [rms(r.noise_guided) for r in (first, last)]
    if first.sigma > 2 and x_t[0] > 0.5 * first.sigma:
        why = "this scheduler keeps x_t at the scale of sigma (x_t = x0 + sigma · noise)"
    else:
        why = ("this scheduler keeps x_t a mix, sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) noise: it starts with the "
               "spread of unit noise, about 1, and ends with that of the latents the run made")
    return (f"{text} Below, in this run: the spread (std) of x_t {trend(*x_t)}, as {why}; the predicted x0's "
            f"spread {trend(*x0)}; the RMS of the guided noise {trend(*noise)}.")


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


# --- Lesson links and the guided lesson ---------------------------------------------------------------------

PICTURE_NOT_IN_LINK = ("A picture you uploaded cannot go into a link (a link holds settings, not pixels): the link "
                       "leaves it out. Pick one of the example pictures to share it.")
LAST_NOT_IN_LINK = ("'My last picture' goes into a link only with the run that made it, and Text to image's settings "
                    "are no longer those of your last run: the link leaves the picture out.")
LINK_MADE = "The link to this view is in the box above (and on the clipboard where the browser allows it)."


def escaped(text: str) -> str:
    """Text shown as it is in a Markdown component: HTML and Markdown's own characters escaped."""
    import html
    import re

    return re.sub(r"([\\`*_{}\[\]()#+\-.!|~])", r"\\\1", html.escape(str(text), quote=False))


def link_notices(notices: list[str]) -> str:
    """What a link (or Copy link) left out, one line each, escaped: a notice may name a key from the address bar."""
    return "\n\n".join(f"⚠️ {escaped(n)}" for n in notices)


def station_texts(number: int, total: int, station) -> dict[str, str]:
    """A station of the guided lesson, as its components show it (big text: read from the back of a room)."""
    return {"title": f"## Station {number} / {total}: {station.title}",
            "do": f"**Do:** {station.do}", "look": f"**Look at:** {station.look}",
            "question": f"**Question:** {station.question}", "answer": station.answer,
            "open": f"Open this in the {station.tab_label} tab ▶"}


# The address bar and the clipboard: the query comes checked and URL-encoded from Python (lesson_links); an empty
# one leaves the address as it is. A link with run=1 then presses the page's hidden run button (#link-run).
SET_URL_JS = """(query) => {
  if (!query) return;
  const url = new URL(window.location.href);
  url.search = query;
  window.history.replaceState(null, "", url);
  if (url.searchParams.get("run") === "1") {
    const run = document.getElementById("link-run");
    (run && run.tagName === "BUTTON" ? run : run?.querySelector("button"))?.click();
  }
}"""
COPY_LINK_JS = """(query) => {
  const url = new URL(window.location.href);
  url.search = query;
  window.history.replaceState(null, "", url);
  if (navigator.clipboard) navigator.clipboard.writeText(url.href).catch(() => {});
  return url.href;
}"""

WAITING = "appears when you press Generate"
STARTING = "comes with the first step"  # a run has started: its first step is being computed
LIVE_CAPTIONS = {"x_t": "x_t, VAE decode", "x0": "predicted x0, VAE decode", "guided": "guided noise (used)"}
PREVIEW_CAPTIONS = {"x_t": "x_t, preview (no decoder)", "x0": "predicted x0, preview (no decoder)"}
LATENTS_CAPTION = "x_t: the latent channels"
NOISE_AT_START = "x_t, VAE decode (pure noise: see why below)"
CSS = """
/* Bold text in one font: Gradio's theme loads Source Sans Pro at 400 and 600, and the 600 file it ships holds only
   55 glyphs (capital A and B among them), so bold words mixed two fonts ("Prompt A/B" with a different B). Here
   the same family comes from the complete Regular and Bold files Gradio ships beside it. */
@font-face { font-family: "sdviz Sans"; font-weight: 100 500; font-style: normal;
  src: url("static/fonts/SourceSansPro/SourceSansPro-Regular.woff2") format("woff2"); }
@font-face { font-family: "sdviz Sans"; font-weight: 600 900; font-style: normal;
  src: url("static/fonts/SourceSansPro/SourceSansPro-Bold.woff2") format("woff2"); }
:root, .gradio-container { --font: "sdviz Sans", ui-sans-serif, system-ui, sans-serif; }
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
.explain { font-size: 0.92em; }
#peek-status { min-height: 1.6em; }
/* Every tab's label fits one row at a page width of 1024 px (Gradio hides the rest behind a "..." menu). */
#tabs .tab-container button { padding: 0 9px; }
@media (max-width: 1180px) { #tabs .tab-container button { padding: 0 4px; font-size: 0.88em; } }
/* A teaching tab's message next to its input: one sentence, readable, and no space taken when empty. */
.teaching-message p { margin: 4px 0; font-size: 1.02em; }
.teaching-message:empty, .teaching-message .prose:empty { display: none; }
/* A projector (1280 x 720): the header, the settings, Generate, the final picture and the live view on one screen */
#header h1 { font-size: 1.5em; margin: 0; }
#header { align-items: center; }
#model-info { font-size: 0.85em; }
.generate-button { min-height: 96px; font-size: 1.25em; }
.live-figures { grid-template-columns: repeat(3, minmax(0, 1fr)); max-width: 720px; }
.live-figures img, .live-figures .peek-empty { max-height: 205px; }
.peek-legend { display: flex; justify-content: space-between; font-size: 0.8em; padding: 2px 4px 0;
  background: linear-gradient(to right, rgb(33, 102, 172), white, rgb(178, 24, 43)); color: #222; }
.peek-legend span { background: rgba(255, 255, 255, 0.75); padding: 0 3px; border-radius: 3px; }
#peek-latents .peek-figures { grid-template-columns: minmax(0, 300px); }
#peek-noise .peek-figures { grid-template-columns: repeat(4, minmax(0, 1fr)); }
#peek-plot img { image-rendering: auto; }
#peek-numbers table { font-size: 0.9em; }
/* Lesson links: a button no taller than the model line beside it; the notice's lines close together */
#copy-link { min-height: 0; padding-top: 1px; padding-bottom: 1px; }
#link-notice p { margin: 2px 0; }
/* The guided lesson, read from the back of a room on a 1280 x 720 projector */
#lesson-title h2 { font-size: 1.9em; margin: 0 0 6px; }
#lesson .prose p, #lesson-answer p { font-size: 1.4em; line-height: 1.35; margin: 4px 0; }
#lesson-answer-box .label-wrap span { font-size: 1.3em; }
#lesson-nav button { font-size: 1.25em; min-height: 52px; }
"""
