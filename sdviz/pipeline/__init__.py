"""The pipeline: Stable Diffusion's parts and the one denoising loop, with every step recorded.

settings (a run's settings and their checks) · models (loading) · text (prompt -> CLIP embeddings) ·
schedulers (noise levels) · vae (pictures <-> latents) · sampler (the loop) · trace (what a run recorded) ·
capture (cross-attention weights during a run). No Gradio, no matplotlib.
"""
