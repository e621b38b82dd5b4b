"""One error type for bad user input, so every entry point fails with one clear sentence.

The message always names what was wrong, where (file and subject when known) and how to fix it; the CLI
prints it without a traceback.
"""

from __future__ import annotations

from os import PathLike


class FmriInputError(ValueError):
    """Bad input from the user: a file, a subject, a task or an argument that cannot be used as given."""

    def __init__(
        self,
        problem: str,
        *,
        fix: str,
        file: str | PathLike | None = None,
        subject: str | None = None,
    ) -> None:
        self.problem = problem.rstrip(". ")
        self.fix = fix.rstrip(". ")
        self.file = None if file is None else str(file)
        self.subject = subject
        where = []
        if self.file is not None:
            where.append(f"file '{self.file}'")
        if self.subject is not None:
            where.append(f"subject '{self.subject}'")
        joined = " and ".join(where)  # not str.capitalize(): it would lower-case the file name
        prefix = joined[:1].upper() + joined[1:] + ": " if where else ""
        super().__init__(f"{prefix}{self.problem}. Fix: {self.fix}.")
