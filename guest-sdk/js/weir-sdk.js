// The Weir SDK for JavaScript: write flows and tasks as plain functions.
//
//   import { flow, task, log } from "weir-sdk";
//
//   export const greet = task({ retries: 2, retryDelay: "100ms" }, function greet(name) {
//     return `Hello, ${name}!`;
//   });
//
//   export const hello = flow(function hello(name = "world") {
//     log(`greeting ${name}`);
//     return greet(name); // a sandboxed, recorded task run
//   });
//
// Inside a flow, calling a task asks the host to run it in a fresh sandbox
// with its policy (retries, timeout, fuel, memory, cache) and records it;
// `greet.submit(..)` starts it concurrently and `greet.map(..)` fans out.
// Calling a flow from a flow starts a subflow.
//
// Arguments travel as one JSON object keyed by parameter name, results as
// JSON, exactly as in the Rust and Python SDKs. Parameter names (and the
// defaults of simple parameters) are read from the function's source; pass
// `params` to name them explicitly. Anything a flow or task throws becomes a
// `failed` error with its stack; nothing escapes into the sandbox.
//
// `host build` bundles the app with this module and builds a component with
// jco (QuickJS); the imports come from `wit/flow.wit`.

import * as runtime from "weir:flow/runtime@0.1.2";

export const version = "0.1.0";

const FLOWS = new Map();
const TASKS = new Map();

// --- errors -----------------------------------------------------------------

/** A task or subflow call that did not return a value. */
export class TaskError extends Error {
  /**
   * @param {string} kind failed, invalid-input, cancelled, out-of-fuel,
   *   deadline-exceeded, memory-limit, trap or invalid-output
   * @param {string} [message]
   */
  constructor(kind, message = "") {
    super(message ? `${kind}: ${message}` : kind);
    this.name = "TaskError";
    this.kind = kind;
    this.detail = message;
  }
  get isTimeout() {
    return this.kind === "deadline-exceeded";
  }
  get isOutOfFuel() {
    return this.kind === "out-of-fuel";
  }
  get isMemoryLimit() {
    return this.kind === "memory-limit";
  }
}

class InvalidInput extends Error {}

/** The task-error variant of a failed import call, as a TaskError. */
function fromWit(thrown) {
  const error = thrown && thrown.payload !== undefined ? thrown.payload : thrown;
  if (error && typeof error === "object" && typeof error.tag === "string") {
    switch (error.tag) {
      case "failed":
        return new TaskError("failed", error.val);
      case "invalid-input":
        return new TaskError("invalid-input", error.val);
      case "cancelled":
        return new TaskError("cancelled");
      case "sandbox":
        return new TaskError(error.val.kind, error.val.message);
    }
  }
  return new TaskError("failed", String(error));
}

function callImport(fn, ...args) {
  try {
    return fn(...args);
  } catch (e) {
    throw fromWit(e);
  }
}

// --- logging and run context ------------------------------------------------

const LEVELS = ["trace", "debug", "info", "warn", "error"];

/** Appends a line to the run's log (`console.log` works too, as info). */
export function log(message, level = "info") {
  if (!LEVELS.includes(level)) {
    throw new TypeError(`unknown log level '${level}'; use one of ${LEVELS.join(", ")}`);
  }
  runtime.log(level, String(message));
}
export const trace = (message) => log(message, "trace");
export const debug = (message) => log(message, "debug");
export const info = (message) => log(message, "info");
export const warn = (message) => log(message, "warn");
export const error = (message) => log(message, "error");

/** A secret granted to this run's deployment, or undefined. */
export function secret(name) {
  const value = runtime.getSecret(name);
  return value === null ? undefined : value;
}

/** Who and where this code runs: run ids, attempt (1 on the first), names. */
export function runInfo() {
  return runtime.info();
}

/**
 * A variable's value (`host variable set NAME VALUE`), or `fallback`.
 * In a flow the read is recorded: a retried or resumed run sees the value it
 * saw the first time. A task reads the current value.
 */
export function variable(name, fallback = undefined) {
  const text = runtime.getVariable(name);
  return text === null || text === undefined ? fallback : JSON.parse(text);
}

/**
 * Pauses the run until it is resumed with input matching `inputSchema` (a
 * JSON Schema; any JSON when omitted) and returns that input. The run goes
 * Paused and holds no sandbox; `host flow-run resume ID --input '{...}'`
 * continues it, replaying its finished tasks. `timeout` ("24h", or seconds)
 * bounds the wait. Only a top-level flow may pause.
 */
export function pause(timeout, inputSchema = {}) {
  const seconds = typeof timeout === "number" ? timeout : Math.floor(durationMs("timeout", timeout) / 1000);
  // The QuickJS bindings take a u64 as a plain number.
  return JSON.parse(callImport(runtime.pause, seconds, JSON.stringify(inputSchema)));
}

/**
 * Runs `fn` holding `slots` of each named server-wide limit (`host
 * concurrency-limit create NAME N`), all or none, and gives them back when it
 * returns or throws. Waits while a limit is full, at most `timeout` ("30s" or
 * seconds) when given. A name with no limit throws a TaskError.
 *
 *   const rows = limit("db", () => query(sql));
 */
export function limit(names, fn, { slots = 1, timeout } = {}) {
  const list = Array.isArray(names) ? names : [names];
  const seconds =
    timeout === undefined
      ? undefined
      : typeof timeout === "number"
        ? timeout
        : Math.floor(durationMs("timeout", timeout) / 1000);
  const handle = callImport(runtime.takeSlots, list, slots, seconds);
  try {
    return fn();
  } finally {
    runtime.releaseSlots(handle);
  }
}

/**
 * Takes one slot of the rate limit `name` (`host concurrency-limit create
 * NAME N --slot-decay-per-second R`), waiting until one is back: at most N at
 * once, then R per second, across every run on every host.
 */
export function rateLimit(name) {
  limit(name, () => undefined);
}

/**
 * Runs a deployment (any component's flow, on its own pool) with `params`
 * over its defaults: its result when `wait`, else its flow run id at once.
 * The start is recorded, so a resumed run does not start it again.
 */
export function runDeployment(name, params = {}, { wait = true } = {}) {
  return JSON.parse(callImport(runtime.runDeployment, name, JSON.stringify(params), wait));
}

/**
 * Leaves an artifact on the run and returns its id: `kind` "markdown" (text),
 * "table" (an array of rows) or "link" (a URL); with `key`, the next version
 * of that key across runs. Secrets in it are redacted by the host.
 */
export function createArtifact(kind, data, { key, description } = {}) {
  if (!["markdown", "table", "link"].includes(kind)) {
    throw new TypeError(`artifact kind must be markdown, table or link, not ${kind}`);
  }
  const text = kind === "table" ? JSON.stringify(data) : String(data);
  return callImport(runtime.createArtifact, { kind, key, description, data: text });
}

// --- policies ---------------------------------------------------------------

const DURATION_UNITS = { ms: 1, s: 1000, m: 60000, min: 60000, h: 3600000, d: 86400000 };
const MEMORY_UNITS = {
  "": 1,
  B: 1,
  KiB: 1 << 10,
  MiB: 1 << 20,
  GiB: 1 << 30,
  KB: 1e3,
  kB: 1e3,
  MB: 1e6,
  GB: 1e9,
};
const RETRY_ON = ["failed", "invalid-input", "timeout", "out-of-fuel", "memory", "trap", "invalid-output"];
const CACHE_KEYS = ["input-and-code", "input", "none"];

function withUnit(option, value, units, hint) {
  const match = typeof value === "string" && /^\s*(\d+)\s*([A-Za-z]*)\s*$/.exec(value);
  if (match && match[2] in units) return Number(match[1]) * units[match[2]];
  throw new TypeError(`${option}: invalid value ${JSON.stringify(value)}; use e.g. ${hint}`);
}

/** "250ms", "5s", "2m", "1h", or a number of milliseconds. */
function durationMs(option, value) {
  if (typeof value === "number" && value >= 0) return Math.round(value);
  return withUnit(option, value, DURATION_UNITS, '"250ms", "5s", "2m", "1h"');
}

function count(option, value) {
  if (!Number.isInteger(value) || value < 0) {
    throw new TypeError(`${option}: expected a whole number >= 0, got ${JSON.stringify(value)}`);
  }
  return value;
}

function strings(option, value, allowed) {
  if (!Array.isArray(value) || !value.every((v) => typeof v === "string")) {
    throw new TypeError(`${option}: expected a list of strings`);
  }
  const unknown = allowed && value.find((v) => !allowed.includes(v));
  if (unknown) throw new TypeError(`${option}: unknown value '${unknown}'; expected some of ${allowed.join(", ")}`);
  return value;
}

const HOOK_KEYS = {
  onCompletion: "on_completion",
  onFailure: "on_failure",
  onCancellation: "on_cancellation",
  onCrashed: "on_crashed",
};

/** State hooks: tasks of this component (or their names), one or a list; each
 * runs in its own sandbox with `run` (how the run ended) as its argument. */
function hookNames(option, value) {
  return (Array.isArray(value) ? value : [value]).map((hook) => {
    if (typeof hook === "function" && typeof hook.taskName === "string") return hook.taskName;
    if (typeof hook === "string") return hook;
    throw new TypeError(`${option}: a hook is a task() of this component or its name`);
  });
}

/** Options → the manifest's policy object (same keys as the Rust SDK). */
function policyOf(options) {
  const policy = {};
  for (const [option, value] of Object.entries(options)) {
    if (value === undefined || value === null) continue;
    switch (option) {
      case "name":
      case "description":
      case "params":
        break;
      case "retries":
        policy.retries = count(option, value);
        break;
      case "retryDelay":
        policy.retry_delay_ms = (Array.isArray(value) ? value : [value]).map((d) => durationMs(option, d));
        break;
      case "backoff":
      case "jitter":
        if (typeof value !== "number") throw new TypeError(`${option}: expected a number`);
        policy[option] = value;
        break;
      case "maxDelay":
        policy.max_delay_ms = durationMs(option, value);
        break;
      case "retryOn":
        policy.retry_on = strings(option, value, RETRY_ON);
        break;
      case "timeout":
        policy.timeout_ms = durationMs(option, value);
        break;
      case "fuel":
        policy.fuel = count(option, value);
        break;
      case "memory":
        policy.memory_bytes =
          typeof value === "number" && value > 0
            ? value
            : withUnit(option, value, MEMORY_UNITS, '"64MiB", "1GiB", "512KiB"');
        break;
      case "cacheTtl":
        policy.cache_ttl_ms = durationMs(option, value);
        break;
      case "cacheKey":
        if (!CACHE_KEYS.includes(value)) throw new TypeError(`cacheKey: expected one of ${CACHE_KEYS.join(", ")}`);
        policy.cache_key = value;
        break;
      case "tags":
        policy.tags = strings(option, value);
        break;
      case "onCompletion":
      case "onFailure":
      case "onCancellation":
      case "onCrashed":
        policy[HOOK_KEYS[option]] = hookNames(option, value);
        break;
      default:
        throw new TypeError(
          `unknown option '${option}'; expected name, description, params, retries, retryDelay, backoff, maxDelay, jitter, retryOn, timeout, fuel, memory, cacheTtl, cacheKey, tags, onCompletion, onFailure, onCancellation or onCrashed`,
        );
    }
  }
  return policy;
}

// --- parameters ---------------------------------------------------------------

/** Splits `text` at top-level commas (outside brackets and strings). */
function splitTopLevel(text) {
  const parts = [];
  let depth = 0;
  let quote = null;
  let start = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quote) {
      if (c === "\\") i++;
      else if (c === quote) quote = null;
    } else if (c === '"' || c === "'" || c === "`") quote = c;
    else if ("([{".includes(c)) depth++;
    else if (")]}".includes(c)) depth--;
    else if (c === "," && depth === 0) {
      parts.push(text.slice(start, i));
      start = i + 1;
    }
  }
  parts.push(text.slice(start));
  return parts.map((p) => p.trim()).filter((p) => p.length > 0);
}

function schemaOfValue(value) {
  if (Number.isInteger(value)) return { type: "integer", default: value };
  if (typeof value === "number") return { type: "number", default: value };
  if (typeof value === "string") return { type: "string", default: value };
  if (typeof value === "boolean") return { type: "boolean", default: value };
  if (Array.isArray(value)) return { type: "array", default: value };
  if (value === null) return { default: null };
  return { type: "object", default: value };
}

/** Parameter names and schemas, from `params` or from the function's source. */
function paramsOf(fn, params, what) {
  if (params !== undefined) {
    if (Array.isArray(params)) return params.map((name) => ({ name, schema: {}, required: true }));
    return Object.entries(params).map(([name, schema]) => ({
      name,
      schema,
      required: !(schema && "default" in schema),
    }));
  }
  const source = Function.prototype.toString.call(fn).replace(/\/\*[\s\S]*?\*\/|\/\/[^\n]*/g, "");
  const match = /^[^(]*\(([\s\S]*?)\)\s*(=>|\{)/.exec(source) || /^\s*(?:async\s+)?([A-Za-z_$][\w$]*)\s*=>/.exec(source);
  if (!match) throw new TypeError(`${what}: cannot read its parameters; pass { params: ["a", "b"] }`);
  return splitTopLevel(match[1]).map((part) => {
    const eq = part.indexOf("=");
    const name = (eq < 0 ? part : part.slice(0, eq)).trim();
    if (!/^[A-Za-z_$][\w$]*$/.test(name)) {
      throw new TypeError(`${what}: parameter '${part}' is not a plain name; pass { params: [...] } to name them`);
    }
    if (eq < 0) return { name, schema: {}, required: true };
    let schema = {};
    try {
      schema = schemaOfValue(JSON.parse(part.slice(eq + 1).trim()));
    } catch {
      // A default that is not a JSON literal still makes the parameter optional.
    }
    return { name, schema, required: false };
  });
}

// --- flows and tasks --------------------------------------------------------

function encodeArgs(entry, args) {
  if (args.length > entry.params.length) {
    throw new TaskError("invalid-input", `${entry.name} takes ${entry.params.length} argument(s), got ${args.length}`);
  }
  const input = {};
  entry.params.forEach((p, i) => {
    if (i < args.length && args[i] !== undefined) input[p.name] = args[i];
  });
  return JSON.stringify(input);
}

function decodeOutput(text) {
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new TaskError("failed", `the result is not JSON: ${e.message}`);
  }
}

function declare(kind, registry, optionsOrFn, maybeFn) {
  const [options, fn] = typeof optionsOrFn === "function" ? [{}, optionsOrFn] : [optionsOrFn || {}, maybeFn];
  if (typeof fn !== "function") throw new TypeError(`${kind}() takes a function, e.g. ${kind}(function name(a, b) { ... })`);
  const name = options.name || fn.name;
  if (!name) throw new TypeError(`${kind}(): give the function a name or pass { name: "..." }`);
  if (FLOWS.has(name) || TASKS.has(name)) throw new TypeError(`the name '${name}' is declared twice`);
  const entry = {
    kind,
    name,
    fn,
    description: options.description || "",
    policy: policyOf(options),
    params: paramsOf(fn, options.params, `${kind} ${name}`),
  };
  registry.set(name, entry);
  return entry;
}

/** A task started with `submit`; `wait()` once for its result. */
export class Handle {
  constructor(handle, taskName) {
    this.handle = handle;
    this.taskName = taskName;
  }
  /** Blocks the flow until the task ends; throws a TaskError if it failed. */
  wait() {
    return decodeOutput(callImport(runtime.awaitTask, this.handle));
  }
}

/**
 * Declares a task: `task(function name(a, b) {...})` or
 * `task({ retries: 3, retryDelay: "50ms", timeout: "30s" }, function name(a) {...})`.
 * Calling the result runs the task through the host, in a sandbox of its own.
 */
export function task(optionsOrFn, maybeFn) {
  const entry = declare("task", TASKS, optionsOrFn, maybeFn);
  const call = (...args) => decodeOutput(callImport(runtime.callTask, entry.name, encodeArgs(entry, args)));
  call.submit = (...args) => new Handle(runtime.submitTask(entry.name, encodeArgs(entry, args)), entry.name);
  // One task per item; an array item is spread over several parameters.
  call.map = (items) =>
    Array.from(items, (item) => (entry.params.length > 1 && Array.isArray(item) ? call.submit(...item) : call.submit(item)));
  call.fn = entry.fn;
  call.taskName = entry.name;
  return call;
}

/**
 * Declares a flow: `flow(function name(rows = 100) {...})`, options first if any.
 * Called from a flow, it runs as a subflow.
 */
export function flow(optionsOrFn, maybeFn) {
  const entry = declare("flow", FLOWS, optionsOrFn, maybeFn);
  const call = (...args) => decodeOutput(callImport(runtime.callFlow, entry.name, encodeArgs(entry, args)));
  call.fn = entry.fn;
  call.flowName = entry.name;
  return call;
}

/** Starts `task` with these arguments; same as `task.submit(...)`. */
export function submit(task, ...args) {
  if (typeof task !== "function" || typeof task.submit !== "function") throw new TypeError("submit() takes a task");
  return task.submit(...args);
}

/**
 * Waits for every handle, in order. Throws the first TaskError once all have
 * ended, or with `{ returnErrors: true }` puts each error in its place.
 */
export function waitAll(handles, { returnErrors = false } = {}) {
  const results = [];
  let first = null;
  for (const handle of handles) {
    try {
      results.push(handle.wait());
    } catch (e) {
      if (!(e instanceof TaskError)) throw e;
      results.push(e);
      first = first || e;
    }
  }
  if (first && !returnErrors) throw first;
  return results;
}

// --- the component's exports -------------------------------------------------

function objectSchema(entry) {
  const properties = {};
  const required = [];
  for (const p of entry.params) {
    properties[p.name] = p.schema;
    if (p.required) required.push(p.name);
  }
  const schema = { type: "object", properties, additionalProperties: false };
  if (required.length) schema.required = required;
  return schema;
}

/** The manifest: flows, tasks, parameter schemas and policies (JSON). */
export function describe() {
  const entry = (e, schemaKey) => ({
    name: e.name,
    description: e.description,
    [schemaKey]: objectSchema(e),
    policy: e.policy,
  });
  return JSON.stringify({
    sdk: { language: "javascript", version },
    flows: [...FLOWS.values()].map((e) => entry(e, "params_schema")),
    tasks: [...TASKS.values()].map((e) => entry(e, "input_schema")),
  });
}

function runHere(entry, text) {
  let args;
  try {
    args = JSON.parse(text);
  } catch (e) {
    throw new InvalidInput(`the input is not JSON: ${e.message}`);
  }
  if (args === null || typeof args !== "object" || Array.isArray(args)) {
    throw new InvalidInput(`${entry.name} expects a JSON object of arguments`);
  }
  const names = entry.params.map((p) => p.name);
  const unknown = Object.keys(args).find((k) => !names.includes(k));
  if (unknown !== undefined) {
    throw new InvalidInput(`unknown argument '${unknown}'; ${entry.name} takes: ${names.join(", ") || "nothing"}`);
  }
  const missing = entry.params.find((p) => p.required && !(p.name in args));
  if (missing) throw new InvalidInput(`missing argument '${missing.name}' for ${entry.name}`);
  const result = entry.fn(...entry.params.map((p) => args[p.name]));
  if (result && typeof result.then === "function") {
    throw new TypeError(`${entry.name} returned a Promise; flows and tasks are synchronous functions`);
  }
  const json = JSON.stringify(result === undefined ? null : result);
  if (json === undefined) throw new TypeError(`the result of ${entry.name} could not be written as JSON`);
  return json;
}

function describeThrown(thrown) {
  try {
    if (thrown instanceof Error) {
      const head = `${thrown.name}: ${thrown.message}`;
      // The user's frames only: the stack is cut where this module called in.
      const frames = [];
      for (const line of String(thrown.stack || "").split("\n")) {
        const frame = line.trim();
        if (/^at runHere\b/.test(frame)) break;
        if (frame.startsWith("at ")) frames.push(`    ${frame}`);
      }
      return frames.length ? `${head}\n${frames.join("\n")}` : head;
    }
    return `thrown: ${typeof thrown === "string" ? thrown : JSON.stringify(thrown)}`;
  } catch {
    return "thrown: a value that cannot be shown";
  }
}

/** Runs a flow or task; whatever is thrown becomes a task-error, nothing escapes. */
function dispatch(kind, registry, name, text) {
  const entry = registry.get(name);
  if (!entry) {
    const names = [...registry.keys()].join(", ") || "none";
    throw { tag: "invalid-input", val: `no ${kind} named '${name}' in this component; it has: ${names}` };
  }
  try {
    return runHere(entry, text);
  } catch (thrown) {
    if (thrown instanceof InvalidInput) throw { tag: "invalid-input", val: thrown.message };
    const message = describeThrown(thrown);
    try {
      runtime.log("error", `${kind} ${name} threw ${message}`);
    } catch {
      // Logging is best effort here; the error still goes back.
    }
    throw { tag: "failed", val: message };
  }
}

/** The `guest` export the component hands to the host. */
export const guest = {
  describe,
  runFlow: (name, params) => dispatch("flow", FLOWS, name, params),
  runTask: (name, input) => dispatch("task", TASKS, name, input),
};

/** Called at build time: the app must declare at least one flow. */
export function checkApp(file) {
  if (FLOWS.size === 0) throw new Error(`${file} declares no flow(); a Weir component needs at least one`);
  JSON.parse(describe());
}
