"""Checks recorded HTTP exchanges against docs/openapi.yaml with openapi-core.

    check.py SPEC EXCHANGES.json

EXCHANGES.json is what tests/tests/openapi.rs records: {"exchanges": [{name, method, host,
path, query, request_headers, status, headers, body_b64, body_len, truncated}, …],
"problem_codes": [the sidecar job codes of the protocol, which no exchange may reach]}. Each response must be one the document describes for its path and method:
status (or a range such as 4XX), media type, required headers and their schemas, body
schema. On top of openapi-core's response validation:

- a path the document does not list must get the response of `x-unmatched.path`, a listed
  path with a method it does not list that of `x-unmatched.method`;
- HEAD has no body (RFC 9110 §9.3.2): its headers are checked, its Content-Type must be one
  the response's content lists, and its body must be empty;
- a response the document gives no content must have no body;
- a problem's `status` is the response's status and its `type` ends in its `code`;
- every operation of the document was exercised at least once, and every code in
  `problem_codes` is one the document's Problem lists.

Prints one line per exchange and exits 1 if anything does not match.
"""

import base64
import json
import sys

from openapi_core import Config, OpenAPI
from openapi_core.deserializing.media_types.util import json_loads, plain_loads
from openapi_core.templating.media_types.exceptions import MediaTypeNotFound
from openapi_core.templating.media_types.finders import MediaTypeFinder
from openapi_core.templating.paths.exceptions import OperationNotFound, PathNotFound
from openapi_core.templating.responses.exceptions import ResponseFinderError
from openapi_core.validation.response.exceptions import HeadersError
from werkzeug.datastructures import Headers

OPERATIONS = ("get", "head", "post", "put", "patch", "delete", "options", "trace")
PROBLEM_JSON = "application/problem+json"


class Request:
    """openapi-core's Request protocol over one recorded exchange."""

    def __init__(self, ex):
        from openapi_core.datatypes import RequestParameters

        self.host_url = "http://" + ex["host"]
        self.path = ex["path"]
        self.method = ex["method"].lower()
        self.parameters = RequestParameters(header=Headers(ex["request_headers"]))
        self.content_type = ""
        self.body = None


class Response:
    """openapi-core's Response protocol over one recorded exchange."""

    def __init__(self, ex):
        self.status_code = ex["status"]
        self.headers = Headers([tuple(h) for h in ex["headers"]])
        self.content_type = self.headers.get("content-type", "")
        self.data = base64.b64decode(ex["body_b64"]) or None


def open_spec(path):
    # Media types the stock deserializers would hand over as bytes.
    config = Config(
        extra_media_type_deserializers={
            PROBLEM_JSON: json_loads,
            "application/openmetrics-text": plain_loads,
            "text/javascript": plain_loads,
            "text/css": plain_loads,
            "image/svg+xml": plain_loads,
        }
    )
    return OpenAPI.from_file_path(path, config=config)


def operation_of(app, request):
    """(operation, key) for the request, the `x-unmatched` entry when the document has none."""
    validator = app.response_validator
    try:
        _, operation, _, path_result, _ = validator._find_path(request)
    except PathNotFound:
        return app.spec / "x-unmatched" / "path", None
    except OperationNotFound:
        return app.spec / "x-unmatched" / "method", None
    return operation, (path_result.pattern, request.method)


def check(app, ex):
    """The ways the exchange `ex` differs from the document (empty when it matches)."""
    request, response = Request(ex), Response(ex)
    validator = app.response_validator
    operation, key = operation_of(app, request)
    errors = []
    try:
        described = validator._find_operation_response(response.status_code, operation)
    except ResponseFinderError as e:
        return [f"status {response.status_code} not described: {e}"], key
    if request.method == "head":
        if response.data:
            errors.append(f"HEAD answered with a body of {len(response.data)} bytes")
        try:
            validator._get_headers(response.headers, described)
        except HeadersError as e:
            errors.extend(describe(c) for c in e.context)
        if "content" in described:
            try:
                MediaTypeFinder(described / "content").find(response.content_type or None)
            except MediaTypeNotFound as e:
                errors.append(describe(e))
    else:
        errs = validator._iter_errors(
            response.status_code,
            response.data,
            response.headers,
            response.content_type,
            operation,
        )
        errors.extend(describe(e) for e in errs)
        if "content" not in described and response.data:
            errors.append(f"a body of {len(response.data)} bytes the document does not describe")
    problem = None
    if response.content_type.startswith(PROBLEM_JSON) and request.method != "head":
        try:
            problem = json.loads(response.data or b"")
        except ValueError:
            pass  # openapi-core has said why
    if isinstance(problem, dict):
        if problem.get("status") != response.status_code:
            errors.append(f"problem status {problem.get('status')} != {response.status_code}")
        if problem.get("type") != f"urn:streamgate:problem:{problem.get('code')}":
            errors.append(f"problem type {problem.get('type')!r} does not name its code")
    return errors, key


def describe(e):
    """An exception, with the schema errors openapi-core keeps in its causes."""
    text = f"{type(e).__name__}: {e}"
    cause = e.__cause__
    while cause is not None:
        for sub in getattr(cause, "schema_errors", None) or []:
            text += f"\n       {sub.message} at {'/'.join(map(str, sub.absolute_path)) or '.'}"
        cause = cause.__cause__
    return text


def main(spec_path, exchanges_path):
    app = open_spec(spec_path)
    with open(exchanges_path) as f:
        recorded = json.load(f)
    exchanges = recorded["exchanges"]
    failed = 0
    seen = set()
    for ex in exchanges:
        errors, key = check(app, ex)
        if key:
            seen.add(key)
        line = f"{ex['method']} {ex['path']} -> {ex['status']} ({ex['name']})"
        if errors:
            failed += 1
            print(f"FAIL {line}")
            for e in errors:
                print(f"     {e}")
        else:
            print(f"ok   {line}")
    documented = {
        (path, method)
        for path, item in (app.spec / "paths").str_items()
        for method in item.str_keys()
        if method in OPERATIONS
    }
    for path, method in sorted(documented - seen):
        failed += 1
        print(f"FAIL {method.upper()} {path}: documented, never exercised")
    listed = set((app.spec / "components" / "schemas" / "Problem" / "properties" / "code" / "enum").read_value())
    for code in sorted(set(recorded["problem_codes"]) - listed):
        failed += 1
        print(f"FAIL problem code {code!r}: not in the document's Problem")
    print(f"{len(exchanges)} exchanges, {len(documented)} operations, {failed} failures")
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2]))
