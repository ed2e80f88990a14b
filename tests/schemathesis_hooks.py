"""Schemathesis hooks for Weir's API (loaded through SCHEMATHESIS_HOOKS).

Components travel as raw `application/wasm` bytes: sent as they are, like
any octet stream.
"""

import schemathesis

schemathesis.serializer.alias("application/wasm", "application/octet-stream")

# Hypothesis names each filter by parsing its lambda's source. With
# `--workers 2`, two threads can do that at once, and neither CPython 3.11's
# ast conversion (it keeps its recursion depth in shared state: "SystemError:
# AST constructor recursion depth mismatch") nor hypothesis's cache of parsed
# sources (a KeyError) is safe for that; the run then ends with a runtime
# error that says nothing about the API. A lock around the naming was not
# enough (CI saw the SystemError again: other threads parse too). The name
# is only a description, so it is taken from the function, never parsed.
from hypothesis.internal import lambda_sources


def _describe_without_parsing(f):
    return getattr(f, "__qualname__", None) or "<lambda>"


lambda_sources.lambda_description = _describe_without_parsing
