"""sdviz: watch Stable Diffusion make an image, step by step."""
