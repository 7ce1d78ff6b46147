"""The project's user-facing errors (torch-free, so every module can raise them)."""


class ConfigError(ValueError):
    """A model config, argument or input file is invalid; the message says what to fix."""


class WeightsNotFoundError(RuntimeError):
    """Model, Inception or CLIP weights are not available offline."""
