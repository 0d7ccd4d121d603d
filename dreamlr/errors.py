"""Errors that are the user's to fix: the CLI prints them as one line and exits with code 2."""


class UserError(Exception):
    """A user's mistake (bad path, bad option, bad file): one clear line saying what, where and what to do."""
