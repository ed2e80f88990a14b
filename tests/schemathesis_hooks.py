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
# error that says nothing about the API. The name is only a description, so
# one thread at a time makes it.
import threading

from hypothesis.internal import lambda_sources

_naming = threading.RLock()
_describe = lambda_sources.lambda_description


def _describe_one_at_a_time(f):
    with _naming:
        return _describe(f)


lambda_sources.lambda_description = _describe_one_at_a_time
