"""The lessons: pictures, plots and experiments made from a trace or a model, for a student. No Gradio.

peek (the peek-inside panel's pictures and plots) · forward (forward diffusion) · latent_space · text_attention ·
unet_diagram · experiments (classifier-free guidance, prompt A/B) · export (a run as one zip).
"""
