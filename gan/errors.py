"""The one base class of every error a user can cause (bad config, missing data, wrong checkpoint, ...).

Its message is a single line that says what to do. Entry scripts catch `UserError` alone, so this module
imports nothing: a bad argument is reported before torch is even loaded.
"""


class UserError(Exception):
    """A problem with the user's input, not a bug; `str(err)` is one line that says what to do."""
