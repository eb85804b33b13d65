"""Checks of Segmenter arguments and memory-policy parameters, and the CLI's ``NAME=VALUE`` parsing.

Every refusal is a :class:`~sdk.errors.ParameterError` whose message names who takes the
parameter (a policy's name, or ``Segmenter``), the parameter, the value given and its type, and
what is accepted; the error also carries them as attributes ``owner``, ``parameter`` and
``value`` (so that a command line can say which option was wrong).

Rules (issue 13: nothing silently wrong):

* **Counts** (k, interval, β, θ, top_k, max_frames, initial_slots, capacity_frames, threads,
  resolution) accept Python ``int`` and NumPy integers only: not ``bool`` (True is not 1 frame),
  not strings, and not floats — not even an integral one such as 5.0. A float where a count is
  expected is most often a mixed-up parameter or the result of arithmetic (10 / 3), and
  accepting 5.0 but refusing 5.5 would make the accepted type depend on the value; the
  command line parses ``5.0`` as a float too, so ``--param k=5.0`` is refused the same way.
* **Thresholds** (σ of QDMN, σ_m and σ_en of QPM, ``quality_gate``) accept ints and floats
  (Python or NumPy, not bool or str), finite, in [0, 1]: they are compared with the normalised
  QAM quality S̄A_t (QDMN Eq. 3, QPM Eq. 2), the predicted mask IoU of the frame over the
  first frame's, whose scale is [0, 1]. The papers use 0 (no filtering, QDMN Table 4), 0.65,
  0.7, 0.75 and 0.8; σ = 0 already admits every frame, and a σ above 1 admits only frames
  rated better than the annotated first frame, i.e. next to none: memory silently stays the
  first frame (σ = 80 meant as 80 %, or 1.5 for 0.15, would do that). NaN never compares true,
  so NaN and ±inf are refused.
* **Choices** (``schedule``) are one of the known strings; **flags** (``temporary_memory``)
  are ``bool`` (or NumPy bool), not 0/1.
"""
from __future__ import annotations

import math
import re

import numpy as np

from .errors import ParameterError

# Segmenter(resolution=r) must give the key/value maps at least this many rows (r ≥ MIN_FEATURE_ROWS ×
# manifest.stride). Bundled lite model (stride 16), first 20 frames, mean (min) IoU of frames 1–19 on
# davis2016-240p, CPU (2-core VM): resolution   16: 0.00 (0.00) blackswan, 0.00 (0.00) cows;  32: 0.00 (0.00),
# 0.04 (0.00);  48: 0.08 (0.00), 0.16 (0.00);  64: 0.53 (0.43), 0.63 (0.56);  96: 0.77 (0.71), 0.82 (0.78);
# 128: 0.86 (0.82), 0.87 (0.85);  240: 0.91 (0.85), 0.92 (0.90). At ≤ 3 feature rows (≤ 48 px) the object is
# lost (IoU 0 from some frame on); from 4 rows (64 px) it is tracked on every frame.
MIN_FEATURE_ROWS = 4



def resolution(value, stride: int) -> int | None:
    """A Segmenter ``resolution`` other than ``"manifest"``: None (the frames' own size) or an
    int short side ≥ :data:`MIN_FEATURE_ROWS` × ``stride`` px (64 for stride 16). Raises
    :class:`~sdk.errors.ParameterError` (owner ``Segmenter``, parameter ``resolution``)."""
    low = MIN_FEATURE_ROWS * stride
    return integer("Segmenter", "resolution", value, low, optional=True,
                   expected=f"'manifest', None (the frames' own size) or an int short side ≥ {low} px "
                            f"({MIN_FEATURE_ROWS} × the model's stride {stride}: with fewer feature rows the "
                            "object is lost)")


SEGMENTER_OPTIONS = ("top_k", "threads", "temporary_memory")    # Segmenter arguments that --param may set


def segmenter_option(name: str, value):
    """A Segmenter ``top_k`` (int ≥ 1 or None), ``threads`` (int ≥ 1 or None) or
    ``temporary_memory`` (bool or None) → the value as int / bool / None. Raises
    :class:`~sdk.errors.ParameterError`."""
    if name == "temporary_memory":
        return flag("Segmenter", name, value, optional=True)
    return integer("Segmenter", name, value, 1, optional=True,
                   expected="a positive int (≥ 1) or None" if name == "threads" else "")


_INTEGERS = (int, np.integer)
_REALS = (int, float, np.integer, np.floating)
_BOOLS = (bool, np.bool_)


def shown(value) -> str:
    """repr(value), cut to 60 characters."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def parameter_error(message: str, owner: str, name: str, value) -> ParameterError:
    """A :class:`~sdk.errors.ParameterError` with ``message`` and attributes ``owner``,
    ``parameter`` (= ``name``) and ``value``."""
    error = ParameterError(message)
    error.owner, error.parameter, error.value = owner, name, value
    return error


def refuse(owner: str, name: str, value, expected: str, hint: str = "") -> ParameterError:
    """The :class:`~sdk.errors.ParameterError` for ``owner``'s parameter ``name`` = ``value``:
    "OWNER: NAME must be EXPECTED, got VALUE (TYPE)[; HINT]" (:func:`parameter_error`)."""
    return parameter_error(f"{owner}: {name} must be {expected}, got {shown(value)} ({type(value).__name__})"
                           + (f"; {hint}" if hint else ""), owner, name, value)


def integer(owner: str, name: str, value, minimum: int, *, optional: bool = False, expected: str = "",
            why: str = "") -> int | None:
    """``value`` as an ``int`` ≥ ``minimum`` (None passes when ``optional``).

    Accepts ``int`` and NumPy integers, not bool, float (5.0 included) or str. ``expected``
    replaces the generated "an int ≥ MINIMUM[ or None]" in the message; ``why`` is appended to it.
    Raises :class:`~sdk.errors.ParameterError`.
    """
    if value is None and optional:
        return None
    expected = expected or f"an int ≥ {minimum}{' or None' if optional else ''}{f' ({why})' if why else ''}"
    if isinstance(value, _BOOLS) or not isinstance(value, _INTEGERS):
        hint = ""                                               # the fix, when it is only the type
        if (isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer()
                and value >= minimum):
            hint = f"write {int(value)}: a count takes no float"
        elif isinstance(value, str) and _INT.fullmatch(value.strip()) and int(value) >= minimum:
            hint = f"pass the number {int(value)}, not a string"
        raise refuse(owner, name, value, expected, hint)
    if value < minimum:
        raise refuse(owner, name, value, expected)
    return int(value)


def number(owner: str, name: str, value, low: float, high: float, *, optional: bool = False,
           why: str = "") -> float | None:
    """``value`` as a finite ``float`` in [``low``, ``high``] (None passes when ``optional``).

    Accepts ``int``, ``float`` and NumPy integers/floats, not bool or str; NaN and ±inf are
    refused. ``why`` is appended to the accepted range in the message. Raises
    :class:`~sdk.errors.ParameterError`.
    """
    if value is None and optional:
        return None
    expected = f"a finite number in [{low:g}, {high:g}]{' or None' if optional else ''}{f' ({why})' if why else ''}"
    if isinstance(value, _BOOLS) or not isinstance(value, _REALS):
        raise refuse(owner, name, value, expected)
    try:
        x = float(value)
    except OverflowError:                                     # an int beyond float's range
        raise refuse(owner, name, value, expected) from None
    if not (math.isfinite(x) and low <= x <= high):
        raise refuse(owner, name, value, expected)
    return x


def choice(owner: str, name: str, value, choices: tuple[str, ...]) -> str:
    """``value`` if it is one of the strings ``choices``; raises :class:`~sdk.errors.ParameterError`."""
    if not isinstance(value, str) or value not in choices:
        raise refuse(owner, name, value, f"one of {', '.join(map(repr, choices))}")
    return value


def flag(owner: str, name: str, value, *, optional: bool = False) -> bool | None:
    """``value`` as a ``bool`` (Python or NumPy bool, not 0/1; None passes when ``optional``);
    raises :class:`~sdk.errors.ParameterError`."""
    if value is None and optional:
        return None
    if not isinstance(value, _BOOLS):
        raise refuse(owner, name, value, f"True or False{' or None' if optional else ''}")
    return bool(value)


# --- the command line: --param NAME=VALUE -----------------------------------------------------------

_INT = re.compile(r"[+-]?\d+")
_NAME = re.compile(r"([A-Za-z_][A-Za-z0-9_]*\.)?[A-Za-z_][A-Za-z0-9_]*")   # METHOD.NAME: one method only
_WORDS = {"true": True, "false": False, "none": None, "null": None}


def parse_value(text: str):
    """A command-line value → a Python value: ``'5'``, ``'-2'`` → int; ``'0.7'``, ``'1e-3'``,
    ``'nan'``, ``'inf'`` → float (the checks then refuse what is not finite); ``'true'``,
    ``'false'`` → bool and ``'none'``/``'null'`` → None (any case); ``"'5'"`` or ``'"paper"'``
    (quoted) → the string inside the quotes; anything else → the text itself (a string)."""
    text = text.strip()
    if _INT.fullmatch(text):
        return int(text)
    if text.lower() in _WORDS:
        return _WORDS[text.lower()]
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    try:
        return float(text)
    except ValueError:
        return text


def parse_assignment(text: str) -> tuple[str, object]:
    """``'NAME=VALUE'`` or ``'METHOD.NAME=VALUE'`` (for that memory policy only) → (NAME,
    :func:`parse_value` (VALUE)). Raises :class:`~sdk.errors.ParameterError` when there is no
    ``=`` or NAME is not an identifier (optionally prefixed by one and a dot)."""
    name, sep, value = text.partition("=")
    name = name.strip()
    if not sep or not _NAME.fullmatch(name):
        raise parameter_error(f"expected NAME=VALUE (e.g. sigma=0.7), got {shown(text)}", "--param", name, text)
    return name, parse_value(value)


def parse_assignments(texts) -> dict:
    """Several ``NAME=VALUE`` texts → {NAME: value}, in order. Raises
    :class:`~sdk.errors.ParameterError` for a malformed one or a NAME given twice."""
    params: dict = {}
    for text in texts:
        name, value = parse_assignment(text)
        if name in params:
            raise parameter_error(f"parameter {name} is given twice ({shown(params[name])} and {shown(value)})",
                                  "--param", name, value)
        params[name] = value
    return params
