"""The embedded model's toy world: the world, the tiny model's parts, its training, a pixel judge, the evaluation.

world (pictures and captions) · model (the tiny SD's parts) · train (``python -m sdviz.toy.train``) ·
judge (what a picture shows) · evaluate (``python -m sdviz.toy.evaluate``). No Gradio.
"""
