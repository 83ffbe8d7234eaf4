"""The one error of the pretrained-weights package."""


class WeightsError(ValueError):
    """Weights that cannot be found, read safely, or mapped onto the model."""
