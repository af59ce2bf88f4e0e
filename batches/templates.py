"""A job's `prompt_template`: plain `{name}` fields only, rendered with a size cap.

`str.format_map` would run format specs (`{x:>100000000}` builds a 100 MB string) and
attribute or index lookups (`{x.__class__.__mro__}`), so a template is parsed once, every
field must be a bare identifier without conversion or spec, and rendering concatenates
the pieces while counting, stopping at TOKENFLOW_MAX_INPUT_CHARS before building more.
"""

from string import Formatter
from typing import Any

from django.conf import settings

from tokenflow_site.errors import ApiError

FIELD = "prompt_template"


def _invalid(message: str) -> ApiError:
    return ApiError(f"prompt_template: {message}", code="invalid_template", field=FIELD)


def template_parse(template: str) -> list[tuple[str, str | None]]:
    """[(literal text, field name or None)]; 400 for anything but plain `{name}` fields,
    413 beyond TOKENFLOW_BATCH_MAX_TEMPLATE_CHARS."""
    limit = settings.TOKENFLOW_BATCH_MAX_TEMPLATE_CHARS
    if len(template) > limit:
        raise ApiError(
            f"prompt_template is {len(template)} characters; the limit is {limit} "
            "(TOKENFLOW_BATCH_MAX_TEMPLATE_CHARS).",
            code="input_too_large",
            status=413,
            field=FIELD,
            extra={"limit": limit},
        )
    try:
        parsed = list(Formatter().parse(template))
    except ValueError as exc:
        raise _invalid(f"{exc} (write {{{{ and }}}} for literal braces).") from exc
    pieces: list[tuple[str, str | None]] = []
    for literal, name, spec, conversion in parsed:
        if name is None:
            pieces.append((literal, None))
            continue
        if not name.isidentifier():
            raise _invalid(
                f"field {{{name}}} is not a plain name: only {{name}} fields are allowed "
                "(no attributes, indexes or positional fields)."
            )
        if spec or conversion:
            raise _invalid(
                f"field {{{name}}} has a conversion or format spec: only {{name}} fields "
                "are allowed."
            )
        pieces.append((literal, name))
    return pieces


def template_render(template: str, variables: dict[str, Any]) -> str:
    """The template with `variables` filled in; 400 naming a missing variable, 413 once the
    text would pass TOKENFLOW_MAX_INPUT_CHARS (checked before each piece is added)."""
    limit = settings.TOKENFLOW_MAX_INPUT_CHARS
    parts: list[str] = []
    size = 0
    for literal, name in template_parse(template):
        values = [literal]
        if name is not None:
            if name not in variables:
                raise ApiError(
                    f"prompt_template needs the variable {name!r}.",
                    code="missing_variable",
                    field="variables",
                )
            value = variables[name]
            values.append(value if isinstance(value, str) else _scalar(name, value))
        for value in values:
            size += len(value)
            if size > limit:
                raise ApiError(
                    f"The rendered prompt passes {limit} characters (TOKENFLOW_MAX_INPUT_CHARS).",
                    code="input_too_large",
                    status=413,
                    field="variables",
                    extra={"limit": limit},
                )
            parts.append(value)
    return "".join(parts)


def _scalar(name: str, value: Any) -> str:
    if isinstance(value, bool) or value is None or not isinstance(value, int | float):
        raise ApiError(
            f"variable {name!r} must be a string or a number.",
            code="invalid_type",
            field="variables",
        )
    return str(value)
