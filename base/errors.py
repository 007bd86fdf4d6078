"""User-facing errors. The CLI prints their message (no traceback) and exits with status 1."""


class QfabError(Exception):
    """Base of every error caused by the user's input (model, data, options)."""


class VerifyError(QfabError):
    """A graph breaks a rule of docs/semantics.md; the message names the node or tensor."""


class ModelFormatError(QfabError):
    """A .qfab file is malformed or from an unknown version."""


class UnsupportedModelError(QfabError):
    """An imported model uses an operator, attribute or shape qfab does not support."""
