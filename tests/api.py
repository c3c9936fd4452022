"""The worker's HTTP API as its clients see it: every answer checked against ``streams/openapi.yaml``."""

from __future__ import annotations

import functools
import json
import random
import re
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote, urlencode

import jsonschema
import yaml

OPENAPI = yaml.safe_load((Path(__file__).resolve().parent.parent / "streams" / "openapi.yaml").read_text())


def check_shape(body: dict, schema_name: str) -> None:
    """Validate an answer against a schema of the OpenAPI file (references resolved in it)."""
    jsonschema.validate(body, {**OPENAPI["components"]["schemas"][schema_name], "components": OPENAPI["components"]})


def documented_responses(method: str, path: str) -> tuple[str, dict]:
    """(path template, responses) of the OpenAPI file's operation that ``method path`` (query allowed) calls."""
    bare = path.split("?", 1)[0]
    templates = [bare] if bare in OPENAPI["paths"] else [
        t for t in OPENAPI["paths"] if re.fullmatch(re.sub(r"\{[^/}]+\}", "[^/]+", t), bare)]
    operations = [(t, OPENAPI["paths"][t][method.lower()]["responses"])
                  for t in templates if method.lower() in OPENAPI["paths"][t]]
    assert operations, f"streams/openapi.yaml documents no {method} operation for {bare}"
    return operations[0]


@functools.cache
def response_validator(method: str, template: str, status: int, content_type: str):
    """A validator of the body the OpenAPI file lists for this status of the operation."""
    response = OPENAPI["paths"][template][method.lower()]["responses"][str(status)]
    if "$ref" in response:
        response = OPENAPI["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
    content = response.get("content", {})
    assert content_type in content, (
        f"{method} {template} answered HTTP {status} as {content_type}; streams/openapi.yaml lists {sorted(content)}")
    schema = {**content[content_type]["schema"], "components": OPENAPI["components"]}
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def check_answer(method: str, path: str, status: int, content_type: str, body) -> None:
    """Fail unless the OpenAPI file lists this status for the path and method, with a schema the body matches."""
    template, responses = documented_responses(method, path)
    assert str(status) in responses, (
        f"{method} {path} answered HTTP {status}, a status streams/openapi.yaml does not list for {method} "
        f"{template} (it lists {', '.join(sorted(responses))})")
    error = jsonschema.exceptions.best_match(response_validator(method, template, status, content_type).iter_errors(body))
    assert error is None, f"{method} {path} answered HTTP {status} with a body unlike streams/openapi.yaml's: {error}"


class Client:
    """Every request of this test goes through :meth:`call`, which checks the answer with :func:`check_answer`."""

    def __init__(self, port: int):
        self.base = f"http://127.0.0.1:{port}"

    def call(self, method: str, path: str, body=None, token: str | None = None) -> tuple[int, dict]:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                status, content_type, raw = response.status, response.headers.get_content_type(), response.read()
        except urllib.error.HTTPError as error:
            status, content_type, raw = error.code, error.headers.get_content_type(), error.read()
        answer = json.loads(raw) if content_type == "application/json" else raw.decode(errors="replace")
        check_answer(method, path, status, content_type, answer)
        return status, answer

    def get(self, path: str) -> tuple[int, dict]:
        return self.call("GET", path)


ODD_VALUES = ["", "0", "-1", "201", "abc", "1.5", "true", "maybe", "nope", "a" * 501, "<script>",
              "'; DROP TABLE items;--", "ümlaut-🛒", "%00", "../../etc", "\u202e"]


def fuzzed_gets(seed: int, n: int, known: dict[str, list[str]]) -> list[str]:
    """``n`` GET paths drawn from every GET operation of the OpenAPI file: path parameters from
    ``known`` values (by parameter name) or odd strings, query parameters left out, valid by
    their schema, or odd (wrong type, out of range, too long, hostile text)."""
    rnd = random.Random(seed)
    operations = [(path, op["get"].get("parameters", [])) for path, op in OPENAPI["paths"].items() if "get" in op]

    def value(parameter: dict) -> str:
        schema = parameter.get("schema", {})
        if rnd.random() < 0.5 and parameter["name"] in known:
            return rnd.choice(known[parameter["name"]])
        if rnd.random() < 0.4:
            if schema.get("type") == "integer":
                return str(rnd.randint(schema.get("minimum", 0), schema.get("maximum", 1000)))
            if schema.get("type") == "boolean":
                return rnd.choice(["true", "false"])
        return rnd.choice(ODD_VALUES)

    out = []
    for _ in range(n):
        path, parameters = rnd.choice(operations)
        query = {}
        for parameter in parameters:
            if parameter["in"] == "path":
                path = path.replace("{%s}" % parameter["name"], quote(value(parameter) or "x", safe=""))
            elif parameter.get("required") or rnd.random() < 0.6:
                query[parameter["name"]] = value(parameter)
        out.append(path + ("?" + urlencode(query) if query else ""))
    return out
