"""Checks the hub's OpenAPI description with independent tools (tests/openapi.rs).

usage: openapi_validate.py SPEC.json SAMPLES.json

1. SPEC.json (what the hub served at /v1/openapi.json) must be a valid OpenAPI
   document: openapi-spec-validator, with the validator for its declared version.
2. Each sample in SAMPLES.json is a real exchange with the hub:
   {"method", "path" (the spec's path template), "status", "content_type", "body",
    optional "request" (the JSON body sent), optional "expect_invalid": true}.
   Its status must be documented for that operation, its content type must be one
   the response documents, and its body (and request body) must validate against
   the documented schema (openapi-schema-validator, the dialect of OpenAPI 3.1).
   A sample marked expect_invalid must be REJECTED: it proves the check can fail.

Prints one JSON object {"operations": N, "samples": N, "errors": [...]} and exits 1
when there is any error.
"""

import json
import sys

from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import (
    OpenAPIV30SpecValidator,
    OpenAPIV31SpecValidator,
    OpenAPIV32SpecValidator,
    validate,
)

METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace", "query")


def validator_for(spec):
    version = str(spec.get("openapi", ""))
    if version.startswith("3.0"):
        return OpenAPIV30SpecValidator
    if version.startswith("3.1"):
        return OpenAPIV31SpecValidator
    if version.startswith("3.2"):
        return OpenAPIV32SpecValidator
    raise SystemExit(f"unexpected openapi version {version!r}")


def schema_errors(spec, schema, instance):
    """Why `instance` does not match `schema` (refs resolve into the spec)."""
    rooted = dict(schema)
    rooted["components"] = spec.get("components", {})
    validator = OAS31Validator(rooted)
    try:
        return [
            f"{'/'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}"
            for e in validator.iter_errors(instance)
        ]
    except Exception as e:  # an unresolvable $ref, a schema that is not one
        return [f"the documented schema cannot be used: {type(e).__name__}: {e}"[:500]]


def media(content, content_type):
    """The documented media type entry a sent Content-Type matches, if any."""
    sent = content_type.split(";")[0].strip().lower()
    for key, value in content.items():
        if key.split(";")[0].strip().lower() == sent:
            return value
    return None


def check(spec, sample):
    """The problems with one sample (empty when it matches the description)."""
    where = f"{sample['method']} {sample['path']} -> {sample['status']}"
    item = spec.get("paths", {}).get(sample["path"])
    op = item and item.get(sample["method"].lower())
    if not op:
        return [f"{where}: no such operation in the description"]
    problems = []
    request = sample.get("request")
    if request is not None:
        body = op.get("requestBody", {}).get("content", {}).get("application/json")
        if body is None:
            problems.append(f"{where}: the operation documents no JSON request body")
        else:
            problems += [
                f"{where}: request {e}" for e in schema_errors(spec, body["schema"], request)
            ]
    response = op.get("responses", {}).get(str(sample["status"]))
    if response is None:
        return problems + [f"{where}: status not documented"]
    content = response.get("content")
    if not content:
        if sample.get("body") not in (None, ""):
            problems.append(f"{where}: a body where none is documented")
        return problems
    entry = media(content, sample["content_type"])
    if entry is None:
        return problems + [
            f"{where}: content type {sample['content_type']!r} not in {list(content)}"
        ]
    if "schema" in entry:
        problems += [
            f"{where}: {e}" for e in schema_errors(spec, entry["schema"], sample["body"])
        ]
    return problems


def main():
    spec_path, samples_path = sys.argv[1], sys.argv[2]
    with open(spec_path) as f:
        spec = json.load(f)
    with open(samples_path) as f:
        samples = json.load(f)
    errors = []
    try:
        validate(spec, cls=validator_for(spec))
    except Exception as e:  # the validator's own error types, whichever it raised
        errors.append(f"invalid OpenAPI document: {type(e).__name__}: {e}"[:1000])
    operations = sum(
        1 for item in spec.get("paths", {}).values() for m in METHODS if m in item
    )
    for sample in samples:
        problems = check(spec, sample)
        if sample.get("expect_invalid"):
            if not problems:
                errors.append(
                    f"{sample['method']} {sample['path']}: a wrong body was accepted: "
                    f"{json.dumps(sample['body'])}"
                )
        else:
            errors += problems
    print(json.dumps({"operations": operations, "samples": len(samples), "errors": errors}))
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
