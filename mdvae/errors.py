"""User-facing errors. Each message says what is wrong and, where it can, what to do."""


class MDVAEError(ValueError):
    """Base class for errors caused by the user's input, files or configuration."""


class ConfigError(MDVAEError):
    """A configuration or bundle does not fit the code that reads it."""
