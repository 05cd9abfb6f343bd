"""Small input checks shared by every module: one place for the integer-field idiom.

Python counts ``True`` as the integer 1, so a count, a size or an index given as ``True`` would
slip through ``isinstance(x, int)``; these helpers refuse it, and fail with one sentence naming
the field, as every check of bad input does (:class:`~unlearn_interp.errors.UnlearnInterpError`).

    >>> check_int(8, "batch_size", minimum=1)
    8
    >>> check_int(True, "batch_size", minimum=1)
    Traceback (most recent call last):
    unlearn_interp.errors.UnlearnInterpError: batch_size must be a positive integer, got True
    >>> is_int(3), is_int(False), is_int(3.0)
    (True, False, False)
"""

from __future__ import annotations

from unlearn_interp.errors import UnlearnInterpError


def is_int(value: object) -> bool:
    """Whether ``value`` is an ``int`` and not a ``bool``.

    >>> all(is_int(s) and s >= 0 for s in (0, 1, 2))
    True
    """
    return isinstance(value, int) and not isinstance(value, bool)


def int_kind(minimum: int | None) -> str:
    """How an integer field at least ``minimum`` reads in a sentence.

    >>> int_kind(1), int_kind(0), int_kind(None), int_kind(3)
    ('a positive integer', 'a non-negative integer', 'an integer', 'an integer >= 3')
    """
    names = {1: "a positive integer", 0: "a non-negative integer", None: "an integer"}
    return names.get(minimum, f"an integer >= {minimum}")


def check_int(value: object, field: str, *, minimum: int | None = None) -> int:
    """``value`` when it is an ``int`` (not a ``bool``) of at least ``minimum``; otherwise
    ``UnlearnInterpError("{field} must be {kind}, got {value!r}")``.

    >>> check_int(0, "min_len", minimum=0)
    0
    >>> check_int(-1, "OrganismConfig.n_layers", minimum=1)
    Traceback (most recent call last):
    unlearn_interp.errors.UnlearnInterpError: OrganismConfig.n_layers must be a positive integer, got -1
    """
    if not is_int(value) or (minimum is not None and value < minimum):
        raise UnlearnInterpError(f"{field} must be {int_kind(minimum)}, got {value!r}")
    return value


__all__ = ["check_int", "int_kind", "is_int"]
