"""The error type of a value the user chose: an option or config field out of range, or one that does not fit the model.

The CLI prints these as one line (the message names the fix); every other ValueError is a bug and keeps its traceback.
"""


class ConfigError(ValueError):
    """An option or config value that cannot be used; the message names the allowed values or the fix."""
