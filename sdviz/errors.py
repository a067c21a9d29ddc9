"""The one exception sdviz raises for bad input: its message says what to change."""


class SdvizError(ValueError):
    """A setting, prompt, image or model that sdviz cannot use, with an actionable message."""
