"""POST /api/models/select: classify, route, then stream like /api/generate (SSE/NDJSON)."""

from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from routing.services.classification import prompt_validate
from routing.services.generation import compress_options, messages_compress, params_parse
from routing.services.selection import (
    ROUTE_HEADER,
    model_select,
    selection_prepare,
    selection_stream,
)
from routing.streaming import event_stream_response, wants_ndjson
from tokenflow_site.errors import ApiError, error_response, parse_json_body


@csrf_exempt
async def models_select(request: HttpRequest) -> HttpResponse:
    """`{prompt, possible_categories?, temperature?, top_p?, max_tokens?, compress?}`."""
    if request.method != "POST":
        return error_response(ApiError("Use POST.", code="method_not_allowed", status=405))
    try:
        data = parse_json_body(request)
        params = params_parse(data)
        options = compress_options(data)
        prompt = prompt_validate(data.get("prompt"))
        messages = [{"role": "user", "content": prompt}]
        api_key = getattr(request, "api_key", None)
        selection = await model_select(
            messages=messages,
            possible_categories=data.get("possible_categories"),
            api_key=api_key,
        )
        compression, sent = None, None
        if options is not None:
            sent, compression = await messages_compress(
                messages=messages,
                options=options,
                api_key=api_key,
                prompt=selection.classification.prompt,
            )
        ndjson = wants_ndjson(request)
        generation = await selection_prepare(
            selection,
            params=params,
            transport="ndjson" if ndjson else "sse",
            messages=sent,
            compression=compression,
        )
    except ApiError as exc:
        return error_response(exc)
    return event_stream_response(
        selection_stream(selection, generation),
        ndjson=ndjson,
        headers={ROUTE_HEADER: selection.header()},
    )
