"""Single values of the training config: YAML spellings converted, types and ranges checked.

`check_value` turns a value into its annotated type (YAML 1.1 reads 1e-3 as text; 1000.0 and '1e3'
are integers) and checks it against a `Check`, or raises a ConfigError
"<key path> = <value>: must be <requirement>".
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import ConfigError

INT_MAX = 2**31 - 1        # the default bound of every integer field
MAX_TOKENS = 1 << 24       # the bound of a token count (context lengths, windows)


class Bad(Exception):
    """A value that does not fit; the caller reports the key path and the requirement."""


_SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def show(value) -> str:
    """A value as YAML spells it (null, true / false), strings quoted."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def as_float(value) -> float:
    """A finite number; text such as '1e-3' (a string to YAML 1.1, which wants a dot) counts."""
    if isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()):
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Bad
    try:
        number = float(value)
    except OverflowError:
        raise Bad from None
    if not math.isfinite(number):
        raise Bad
    return number


def as_int(value) -> int:
    """An integer; 1000.0 and '1e3' give 1000, bools and numbers with a fraction are refused."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    number = as_float(value)
    if not number.is_integer():
        raise Bad
    return int(number)


def _of_type(*kinds: type) -> Callable[[Any], Any]:
    """A converter that accepts instances of `kinds` (as the first of them) and nothing else."""
    def convert(value):
        if isinstance(value, kinds):
            return kinds[0](value)
        raise Bad
    return convert


_CONVERT = {int: as_int, float: as_float, bool: _of_type(bool), str: _of_type(str),
            list: _of_type(list, tuple), dict: _of_type(dict)}


@dataclass(frozen=True)
class Check:
    """What a good value of one field is.

    need: the requirement, read as "must be <need>"; test: a predicate on the converted value;
    fix: (value, key) -> value, for lists and mappings (raises Bad, or a ConfigError naming an
    entry); null: what null means, for fields annotated ``X | None``; most: the largest value
    (numbers), reported on its own ("must be at most ...").
    """
    need: str
    test: Callable[[Any], bool] | None = None
    fix: Callable[[Any, str], Any] | None = None
    null: str = ""
    most: float | None = None

    def requirement(self, optional: bool) -> str:
        out = f"must be {self.need}"
        if optional:
            out += f" or null ({self.null})" if self.null else " or null"
        return out


def check_value(key: str, value, kind: type, check: Check, optional: bool = False):
    """`value` converted to `kind` and checked, or a ConfigError "key = value: must be ..."."""
    if value is None and optional:
        return None
    try:
        if value is None:
            raise Bad
        out = _CONVERT[kind](value)
        if check.test is not None and not check.test(out):
            raise Bad
        if check.fix is not None:
            out = check.fix(out, key)
    except Bad:
        raise ConfigError(f"{key} = {show(value)}: {check.requirement(optional)}") from None
    if check.most is not None and out > check.most:
        raise ConfigError(f"{key} = {show(value)}: must be at most {check.most}")
    return out


def convert(kind: type, value):
    """A number that YAML spelled otherwise as `kind` ('1e-5' -> 1e-05, 64.0 and '64e0' -> 64);
    any other value unchanged, for a validator of its own to check."""
    spelled = isinstance(value, str) or (kind is int and isinstance(value, float))
    try:
        return _CONVERT[kind](value) if kind in (int, float) and spelled else value
    except Bad:
        return value


def at_least(lo: int, note: str = "", null: str = "", most: int = INT_MAX) -> Check:
    return Check(f"an integer >= {lo}{note}", lambda v: v >= lo, null=null, most=most)


def positive(null: str = "") -> Check:
    return Check("a positive number", lambda v: v > 0, null=null)


def choice(options, null: str = "") -> Check:
    return Check("one of " + ", ".join(map(str, options)), lambda v: v in options, null=null)


def nonempty(need: str, null: str = "") -> Check:
    return Check(need, lambda v: bool(v.strip()), null=null)


BOOL = Check("true or false")
