"""The errors a user can fix: bad input, a missing or altered file, a failed check.

Every one derives from ``CompressError``. The CLI catches that one class and prints its message as one
``Error:`` line (the message names the file or option, the rule and the fix) with exit status 1; any other
exception is a bug and keeps its traceback. Each module declares its own kinds (``TaskDataError``,
``PackError``, ...) on top of this base; ``tests/unit/test_errors.py`` fails when an exception class of the
package does not derive from it. The second bases (ValueError, RuntimeError) keep older callers' ``except``
clauses working.
"""


class CompressError(Exception):
    """Bad input or a failed check: the message is one line that names what is wrong and how to fix it."""


class ConfigError(CompressError, ValueError):
    """An option or config value that cannot be used; the message names the allowed values or the fix."""


class ArtifactError(CompressError, RuntimeError):
    """An artifact, backbone or pack directory that is missing, incomplete or altered, or cannot be written."""
