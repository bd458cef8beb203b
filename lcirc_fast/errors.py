"""Exceptions that carry a message for the user.

Every class derives from :class:`LCIRCError` and from a built-in exception (``ValueError`` for
bad values and bad files, ``RuntimeError`` for runs that cannot go on), so callers may catch
either. The ``lcirc`` command line prints an ``LCIRCError`` as one line and exits non-zero.
"""
from __future__ import annotations


class LCIRCError(Exception):
    """Base class: a problem the user can fix; ``str(err)`` says what and how."""


class ConfigError(LCIRCError, ValueError):
    """A configuration value (``LCIRCConfig``, training YAML, ``--set``) of the wrong type or range."""


class MemoryFileError(LCIRCError, ValueError):
    """A compressed-memory file that is corrupt, incomplete or made for another model."""


class CheckpointError(LCIRCError, ValueError):
    """A checkpoint or ``save_pretrained`` directory that cannot be read."""


class DataError(LCIRCError, ValueError):
    """Input data (text, JSONL rows, token batches) that cannot be used."""


class RunError(LCIRCError, RuntimeError):
    """A run that cannot start or did not produce a result (locked directory, every sample failed)."""
