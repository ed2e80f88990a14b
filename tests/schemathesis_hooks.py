"""Schemathesis hooks for Weir's API (loaded through SCHEMATHESIS_HOOKS).

Components travel as raw `application/wasm` bytes: sent as they are, like
any octet stream.
"""

import schemathesis

schemathesis.serializer.alias("application/wasm", "application/octet-stream")
