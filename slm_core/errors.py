"""The one exception type for mistakes a person can make (bad path, bad config, ...).

Its message always says what to do next; the CLI prints it as one line and the Studio
shows it next to the field, instead of a traceback.
"""


class SLMError(Exception):
    """A user-fixable problem. The message names the cause and the remedy."""
