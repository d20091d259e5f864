"""Number types for everything a person or a remote client types: config keys and command
arguments. The rule (issue 8, class 1): no non-finite, out-of-range or boolean value reaches a
decision. Ranges are declared per field (``Field(gt=..., le=...)``); these types add what a
range cannot say:

* ``true`` is not a number: pydantic would take it as 1 (``{"value": true}`` as threshold 1.0);
* NaN and ±inf are refused (``AllowInfNan(False)``): NaN compares False with everything, so a
  NaN threshold makes every part OK.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AllowInfNan, BeforeValidator, Field, TypeAdapter, ValidationError


def not_a_boolean(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {str(value).lower()}")
    return value


FiniteFloat = Annotated[float, BeforeValidator(not_a_boolean), AllowInfNan(False)]
Integer = Annotated[int, BeforeValidator(not_a_boolean)]

# Image-score threshold (model.threshold, postprocess.map_threshold, P/cmd/set-threshold): NG when
# score >= threshold. Scores are normalised on good images (bundle threshold ~1..10), so 0 or a
# negative value would reject every part and 1e6 would pass every one.
THRESHOLD_RANGE = {"gt": 0, "le": 1_000_000}


def error_text(err: dict) -> str:
    """One pydantic error's message; our own validators' words without pydantic's "Value error, "."""
    msg = str(err.get("msg", "invalid"))
    return msg.removeprefix("Value error, ") if err.get("type") == "value_error" else msg


_THRESHOLD = TypeAdapter(Annotated[FiniteFloat, Field(**THRESHOLD_RANGE)])


def threshold_problem(value: Any) -> str | None:
    """Why ``value`` cannot be an image threshold, or None: the same type and range as
    ``model.threshold`` and ``P/cmd/set-threshold``, for ``PipelineControl.set_threshold``."""
    try:
        _THRESHOLD.validate_python(value)
    except ValidationError as exc:
        reason = error_text(exc.errors()[0])
        return (f"threshold must be a finite number > {THRESHOLD_RANGE['gt']} and <= {THRESHOLD_RANGE['le']:g}, "
                f"not {value!r} ({reason})")
    return None
