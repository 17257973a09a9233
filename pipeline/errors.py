"""One exception type for bad input, so the CLI can print a single clear line."""


class InputError(ValueError):
    """Bad user input: names the file or config key and what was expected."""
