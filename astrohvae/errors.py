"""Exceptions raised for bad input; the CLI turns them into one-line errors."""


class AstroHVAEError(Exception):
    """Base class of every error astrohvae reports to the user."""


class InputError(AstroHVAEError):
    """A user-supplied file is missing, unreadable or inconsistent.

    Parameters
    ----------
    path : str or os.PathLike
        The offending file (or folder).
    problem : str
        What is wrong with it, in a few words.
    """

    def __init__(self, path, problem):
        self.path = str(path)
        self.problem = str(problem)
        super().__init__(f"{self.path}: {self.problem}")


class OutputError(AstroHVAEError):
    """An output location cannot be written."""

    def __init__(self, path, problem):
        self.path = str(path)
        self.problem = str(problem)
        super().__init__(f"{self.path}: {self.problem}")
