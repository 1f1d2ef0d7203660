"""An HTTP request to the Ray Serve route turned into a GenerationRequest, or a refusal.

Kept apart from ray_app.py (and free of ray and starlette imports) so that every refusal can be
tested without a server: the method, a body over the size cap (by its Content-Length or while
it streams in, so an oversized body is never held whole), and whatever request.py refuses.
"""

from __future__ import annotations

from stagevar.runtime.errors import StagevarError

from .request import GenerationRequest, RequestDefaults, parse_json_request

#: Default cap of a request body. The largest valid body is a 4096-character prompt written as
#: \uXXXX escapes (~25 KB) plus the other fields; 64 KiB leaves room and bounds the parser.
DEFAULT_MAX_BODY_BYTES = 64 * 1024


class HttpRefusal(Exception):
    """A request answered with `status` and the one-sentence `message` as {"error": message}."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


async def read_generation_request(request, defaults: RequestDefaults,
                                  max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> list[GenerationRequest]:
    """Parse a starlette-like request (`method`, `headers`, async `stream()`) into its image
    requests (one; one per class of a VAR request's class list), or raise HttpRefusal."""
    if request.method != "POST":
        body = '{"class": 207, "seed": 0}' if defaults.family == "var" else '{"prompt": "...", "seed": 0}'
        raise HttpRefusal(405, f"POST a JSON body {body}.")
    too_large = HttpRefusal(413, f"The request body is over {max_body_bytes} bytes; a valid request is "
                                 f"far smaller (the prompt is at most 4096 characters).")
    declared = request.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > max_body_bytes:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_body_bytes:  # chunked bodies declare no length: count while reading
            raise too_large
        chunks.append(chunk)
    try:
        return parse_json_request(b"".join(chunks), defaults)
    except StagevarError as exc:
        raise HttpRefusal(400, str(exc)) from None
