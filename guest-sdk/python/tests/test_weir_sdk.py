"""Unit tests of weir_sdk in plain CPython, the host imports faked.

The committed bindings (../bindings) stand in for the ones componentize-py
generates at build time; the `runtime` functions are replaced per test.

Run with: python3 -m unittest discover -s guest-sdk/python/tests
"""

import json
import sys
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "bindings"), str(ROOT)]

import weir_sdk  # noqa: E402
from componentize_py_types import Err  # noqa: E402
from wit_world.imports import runtime  # noqa: E402
from wit_world.imports import types as wit  # noqa: E402


class FakeHost:
    """Runs called tasks in this process, like the host would in a sandbox."""

    def __init__(self):
        self.logs = []
        self.calls = []
        self.submitted = {}

    def install(self):
        runtime.log = lambda level, message: self.logs.append((level, message))
        runtime.call_task = self.call_task
        runtime.submit_task = self.submit_task
        runtime.await_task = lambda handle: self.call_task(*self.submitted.pop(handle))
        runtime.info = lambda: wit.RunInfo("run", None, 1, "f", None, None, None)

    def call_task(self, name, payload):
        self.calls.append((name, json.loads(payload)))
        return weir_sdk.Guest().run_task(name, payload)

    def submit_task(self, name, payload):
        handle = len(self.submitted) + 100
        self.submitted[handle] = (name, payload)
        return handle


@weir_sdk.task(retries=3, retry_delay="50ms", timeout=30, memory="64MiB", tags=["db"])
def double(n: int) -> int:
    """Doubles n."""
    return n * 2


@weir_sdk.task
def explode(message: str) -> None:
    raise ValueError(message)


@weir_sdk.flow
def fan_out(items: list, factor: float = 1.5, label: str | None = None) -> dict:
    """Doubles every item in parallel."""
    return {"doubled": weir_sdk.wait_all(double.map(items)), "factor": factor}


class SdkTests(unittest.TestCase):
    def setUp(self):
        self.host = FakeHost()
        self.host.install()

    def test_describe_writes_the_manifest_format(self):
        manifest = json.loads(weir_sdk.Guest().describe())
        self.assertEqual(manifest["sdk"]["language"], "python")
        flow = next(f for f in manifest["flows"] if f["name"] == "fan_out")
        self.assertEqual(flow["description"], "Doubles every item in parallel.")
        self.assertEqual(
            flow["params_schema"],
            {
                "type": "object",
                "properties": {
                    "items": {"type": "array"},
                    "factor": {"type": "number", "default": 1.5},
                    "label": {"type": ["string", "null"], "default": None},
                },
                "required": ["items"],
                "additionalProperties": False,
            },
        )
        task = next(t for t in manifest["tasks"] if t["name"] == "double")
        self.assertEqual(
            task["policy"],
            {"retries": 3, "retry_delay_ms": [50], "timeout_ms": 30000, "memory_bytes": 64 << 20, "tags": ["db"]},
        )

    def test_tasks_called_from_a_flow_go_through_the_host_with_named_arguments(self):
        out = weir_sdk.Guest().run_flow("fan_out", json.dumps({"items": [1, 2, 3]}))
        self.assertEqual(json.loads(out), {"doubled": [2, 4, 6], "factor": 1.5})
        self.assertEqual(self.host.calls, [("double", {"n": 1}), ("double", {"n": 2}), ("double", {"n": 3})])

    def test_an_exception_is_a_failed_error_with_its_traceback_and_a_log_line(self):
        with self.assertRaises(Err) as caught:
            weir_sdk.Guest().run_task("explode", '{"message": "boom"}')
        error = caught.exception.value
        self.assertIsInstance(error, wit.TaskError_Failed)
        self.assertTrue(error.value.startswith("ValueError: boom\nTraceback"), error.value)
        self.assertIn("in explode", error.value)
        self.assertNotIn("in _dispatch", error.value)
        self.assertEqual(self.host.logs[-1][0], wit.LogLevel.ERROR)

    def test_a_failed_task_raises_task_error_in_the_caller(self):
        with self.assertRaises(weir_sdk.TaskError) as caught:
            explode("bad")
        self.assertEqual(caught.exception.kind, "failed")
        self.assertIn("ValueError: bad", caught.exception.message)

    def test_bad_input_is_invalid_input_naming_the_problem(self):
        guest = weir_sdk.Guest()
        cases = {
            '{"m": 1}': "unknown argument 'm'",
            "{}": "missing argument 'n'",
            '{"n": "x"}': "expected int, got str",
            "[1]": "expects a JSON object",
            "{": "not JSON",
        }
        for payload, expected in cases.items():
            with self.assertRaises(Err) as caught:
                guest.run_task("double", payload)
            self.assertIsInstance(caught.exception.value, wit.TaskError_InvalidInput, payload)
            self.assertIn(expected, caught.exception.value.value)
        with self.assertRaises(Err) as caught:
            guest.run_flow("nope", "{}")
        self.assertIn("no flow named 'nope'", caught.exception.value.value)

    def test_wait_all_waits_for_everything_before_raising(self):
        handles = [double.submit(1), weir_sdk.submit(explode, "x"), double.submit(2)]
        results = weir_sdk.wait_all(handles, return_exceptions=True)
        self.assertEqual(results[0], 2)
        self.assertIsInstance(results[1], weir_sdk.TaskError)
        self.assertEqual(results[2], 4)
        self.assertEqual(self.host.submitted, {})

    def test_state_hooks_are_named_in_the_policy(self):
        @weir_sdk.task(name="notify_hook")
        def notify_hook(run: dict) -> str:
            return run["state"]

        @weir_sdk.flow(name="hooked", on_failure=[notify_hook], on_completion="notify_hook")
        def hooked() -> int:
            return 1

        manifest = json.loads(weir_sdk.Guest().describe())
        flow = next(f for f in manifest["flows"] if f["name"] == "hooked")
        self.assertEqual(flow["policy"], {"on_failure": ["notify_hook"], "on_completion": ["notify_hook"]})
        with self.assertRaises(TypeError):
            weir_sdk.flow(name="bad_hook", on_failure=[42])(lambda: None)

    def test_cache_policies_beyond_a_ttl(self):
        @weir_sdk.task(name="cached_forever", cache_ttl="forever", cache_key=["input", "params"])
        def cached_forever(n: int) -> int:
            return n

        manifest = json.loads(weir_sdk.Guest().describe())
        task = next(t for t in manifest["tasks"] if t["name"] == "cached_forever")
        self.assertEqual(task["policy"], {"cache_ttl_ms": 2**64 - 1, "cache_key_parts": ["input", "params"]})
        with self.assertRaises(ValueError):
            weir_sdk.task(name="bad_part", cache_key=["inputs"])(lambda: None)

    def test_persist_result_false_is_in_the_policy(self):
        @weir_sdk.task(name="unkept", persist_result=False)
        def unkept() -> str:
            return "secret"

        @weir_sdk.task(name="stored", result_storage="big")
        def stored() -> str:
            return "large"

        manifest = json.loads(weir_sdk.Guest().describe())
        task = next(t for t in manifest["tasks"] if t["name"] == "unkept")
        self.assertEqual(task["policy"], {"persist_result": False})
        task = next(t for t in manifest["tasks"] if t["name"] == "stored")
        self.assertEqual(task["policy"], {"result_storage": "big"})
        with self.assertRaises(TypeError):
            weir_sdk.task(name="bad_persist", persist_result="no")(lambda: None)

    def test_bad_options_fail_at_declaration(self):
        with self.assertRaises(ValueError):
            weir_sdk.task(retry_delay="soon")(lambda: None)
        with self.assertRaises(TypeError):
            weir_sdk.task(retries=-1)(lambda: None)
        with self.assertRaises(ValueError):
            weir_sdk.task(name="double")(lambda: None)


class ContractTests(unittest.TestCase):
    """Contract 0.1.1: variables, pause and artifacts as the host sees them."""

    def test_variable_decodes_json_and_falls_back_to_the_default(self):
        values = {"rows": "500", "nothing": "null"}
        runtime.get_variable = values.get
        self.assertEqual(weir_sdk.variable("rows"), 500)
        self.assertIsNone(weir_sdk.variable("nothing", default=7))
        self.assertEqual(weir_sdk.variable("unset", default=7), 7)

    def test_pause_sends_seconds_and_the_schema_and_returns_the_input(self):
        seen = []

        def pause(seconds, schema):
            seen.append((seconds, json.loads(schema)))
            return '{"approved": true}'

        runtime.pause = pause
        schema = {"type": "object", "required": ["approved"]}
        self.assertEqual(weir_sdk.pause("2h", schema), {"approved": True})
        self.assertEqual(seen, [(7200, schema)])

        def refused(seconds, schema):
            raise Err(wit.TaskError_Failed("only a top-level flow can pause"))

        runtime.pause = refused
        with self.assertRaises(weir_sdk.TaskError) as caught:
            weir_sdk.pause(60)
        self.assertIn("top-level", str(caught.exception))

    def test_create_artifact_encodes_tables_and_checks_the_kind(self):
        made = []
        runtime.create_artifact = lambda a: made.append(a) or "id-1"
        self.assertEqual(weir_sdk.create_artifact("table", [{"a": 1}], key="k"), "id-1")
        self.assertEqual(made[0].kind, runtime.ArtifactKind.TABLE)
        self.assertEqual(json.loads(made[0].data), [{"a": 1}])
        self.assertEqual(made[0].key, "k")
        with self.assertRaises(ValueError):
            weir_sdk.create_artifact("chart", "x")


class LimitTests(unittest.TestCase):
    """Contract 0.1.2: slots of server-wide limits."""

    def test_limit_takes_on_entry_and_gives_back_on_exit_even_when_the_block_raises(self):
        calls = []
        runtime.take_slots = lambda names, slots, timeout: calls.append(("take", names, slots, timeout)) or 7
        runtime.release_slots = lambda handle: calls.append(("release", handle))
        with weir_sdk.limit("db", "api", slots=2, timeout="1m"):
            calls.append("inside")
        with self.assertRaises(ZeroDivisionError):
            with weir_sdk.limit("db"):
                1 / 0
        self.assertEqual(
            calls,
            [("take", ["db", "api"], 2, 60), "inside", ("release", 7), ("take", ["db"], 1, None), ("release", 7)],
        )

    def test_an_unknown_limit_is_a_task_error_and_nothing_is_released(self):
        released = []

        def refused(names, slots, timeout):
            raise Err(wit.TaskError_Failed("no concurrency limit named 'nope'"))

        runtime.take_slots = refused
        runtime.release_slots = released.append
        with self.assertRaises(weir_sdk.TaskError) as caught:
            weir_sdk.rate_limit("nope")
        self.assertIn("nope", str(caught.exception))
        self.assertEqual(released, [])

if __name__ == "__main__":
    unittest.main()
