/* The Weir SDK for C (and C++): write flows and tasks as plain functions.
 *
 *   #include "weir.h"
 *
 *   static char *greet(weir_json input) {
 *       char *name = weir_json_string(weir_json_get(input, "name"));
 *       if (!name) return weir_invalid_input("name must be a string");
 *       char *greeting = weir_json_printf("Hello, %s!", name);
 *       char *out = weir_json_quote(greeting);   // as a JSON string
 *       free(greeting);
 *       free(name);
 *       return out;
 *   }
 *   WEIR_TASK(greet, .retries = 2, .retry_delay_ms = 100,
 *             .params = "{\"name\": {\"type\": \"string\"}}");
 *
 *   static char *hello(weir_json params) {
 *       weir_info("greeting the world");
 *       return weir_call_task("greet", "{\"name\": \"world\"}");  // sandboxed, recorded
 *   }
 *   WEIR_FLOW(hello, .description = "Greets the world.");
 *
 * A flow or task takes its arguments as one JSON object keyed by parameter
 * name (a `weir_json` view, valid for the call) and returns its result as
 * JSON text in memory from malloc (the SDK frees it), exactly as the Rust,
 * Python and JavaScript SDKs pass them. It fails by returning
 * `weir_fail("why %d", n)` (or NULL after a failed call: the call's error
 * is passed on). WEIR_FLOW and WEIR_TASK register the function, its name
 * and its policy before the first call; the host reads them as the
 * component's manifest.
 *
 * Inside a flow, weir_call_task asks the host to run a task in a fresh
 * sandbox with its policy (retries, timeout, fuel, memory, cache) and records
 * it; weir_submit_task starts one concurrently and weir_await_task waits for
 * it. A failed call returns NULL and weir_last_error() says why.
 *
 * `host build` compiles this SDK (weir.c, weir_json.c) and the bindings generated from
 * wit/flow.wit with the project's own files; include "weir.h" and nothing
 * else is needed.
 *
 * From C++ (`language = "cpp"`) the same header is used as is; give the
 * WEIR_FLOW/WEIR_TASK options in the order weir_options declares them (C++
 * designated initializers), and return a std::string as
 * `strdup(s.c_str())`. C++ guests are built without exceptions.
 */
#ifndef WEIR_H
#define WEIR_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#ifdef __cplusplus
extern "C" {
#endif

#define WEIR_SDK_VERSION "0.1.0"

/* --- JSON ---------------------------------------------------------------- */

/* A view of JSON text (not NUL-terminated; not owned). `ptr` is NULL for a
 * value that is not there (a missing key, an array's end). */
typedef struct weir_json {
    const char *ptr;
    size_t len;
} weir_json;

/* A view of a whole NUL-terminated JSON text. */
weir_json weir_json_of(const char *text);
/* The value of `key` in an object, or a view with a NULL ptr. */
weir_json weir_json_get(weir_json object, const char *key);
bool weir_json_present(weir_json value); /* there, and not `null` */
/* The number as an integer (truncated), or `fallback` when it is not a number. */
int64_t weir_json_int(weir_json value, int64_t fallback);
double weir_json_number(weir_json value, double fallback);
bool weir_json_bool(weir_json value, bool fallback);
/* A JSON string's text, unescaped, in memory from malloc; NULL when not a string. */
char *weir_json_string(weir_json value);
/* The value as a NUL-terminated copy of its JSON text (malloc). */
char *weir_json_copy(weir_json value);
/* The number of elements of an array (0 when not an array). */
size_t weir_json_length(weir_json array);

/* Walks an array's elements or an object's members:
 *   weir_json_iter it = weir_json_items(array); weir_json row;
 *   while (weir_json_next(&it, NULL, &row)) { ... }
 * For an object, `key` (when not NULL) receives each member's key as JSON. */
typedef struct weir_json_iter {
    const char *at;
    const char *end;
} weir_json_iter;
weir_json_iter weir_json_items(weir_json array_or_object);
bool weir_json_next(weir_json_iter *it, weir_json *key, weir_json *value);

/* printf into memory from malloc; `%s` is copied as is, so quote strings
 * with weir_json_quote. Returns NULL only when out of memory. */
char *weir_json_printf(const char *format, ...) __attribute__((format(printf, 1, 2)));
/* `text` as a JSON string literal (quoted and escaped), from malloc. */
char *weir_json_quote(const char *text);

/* A growing text buffer for building JSON piece by piece. */
typedef struct weir_buf {
    char *data;
    size_t len;
    size_t cap;
} weir_buf;
void weir_buf_printf(weir_buf *buf, const char *format, ...) __attribute__((format(printf, 2, 3)));
void weir_buf_vprintf(weir_buf *buf, const char *format, va_list args);
void weir_buf_append(weir_buf *buf, const char *text, size_t len);
/* Hands over the text (malloc, NUL-terminated; "" when empty) and empties the buffer. */
char *weir_buf_take(weir_buf *buf);

/* --- flows and tasks --------------------------------------------------------- */

/* A flow or task: `input` is the JSON object of its arguments. Returns JSON
 * text from malloc, or NULL to fail (see weir_fail). */
typedef char *(*weir_fn)(weir_json input);

/* Policy and description of a flow or task. Zero means "the host's default"
 * for every number. */
typedef struct weir_options {
    const char *description;
    /* JSON Schema of each argument, as the members of an object:
     * "{\"rows\": {\"type\": \"integer\", \"default\": 100}}". An argument with
     * no "default" is required; with no `params` any object is taken. */
    const char *params;
    uint32_t retries;
    uint64_t retry_delay_ms;
    uint64_t timeout_ms;
    uint64_t fuel;
    uint64_t memory_bytes;
    uint64_t cache_ttl_ms;
    /* Any other policy keys, as the members of a JSON object (the same keys
     * as the Rust SDK's manifest): "\"retry_on\": [\"failed\"], \"tags\": [\"db\"]". */
    const char *policy;
} weir_options;

typedef enum weir_kind { WEIR_KIND_FLOW, WEIR_KIND_TASK } weir_kind;

/* Called by WEIR_FLOW / WEIR_TASK; `options` is copied. */
void weir_register(weir_kind kind, const char *name, weir_fn fn, const weir_options *options);

#define WEIR__REGISTER(kind, fn, ...)                                          \
    static const weir_options weir__options_##fn = {__VA_ARGS__};            \
    __attribute__((constructor)) static void weir__register_##fn(void) {     \
        weir_register(kind, #fn, fn, &weir__options_##fn);                   \
    }                                                                        \
    typedef int weir__registered_##fn
/* Declares `fn` (a weir_fn) a flow named after it: WEIR_FLOW(etl, .description = "..."). */
#define WEIR_FLOW(fn, ...) WEIR__REGISTER(WEIR_KIND_FLOW, fn, __VA_ARGS__)
/* Declares `fn` a task: WEIR_TASK(load, .retries = 3, .retry_delay_ms = 50). */
#define WEIR_TASK(fn, ...) WEIR__REGISTER(WEIR_KIND_TASK, fn, __VA_ARGS__)

/* Fails the running flow or task with this message; returns NULL so that
 * `return weir_fail("...")` ends it. */
char *weir_fail(const char *format, ...) __attribute__((format(printf, 1, 2)));
/* Fails it as invalid input (not retried by default). */
char *weir_invalid_input(const char *format, ...) __attribute__((format(printf, 1, 2)));

/* --- calling the host ------------------------------------------------------------ */

/* Why the last call that returned NULL failed. */
typedef enum weir_error_kind {
    WEIR_ERROR_FAILED,
    WEIR_ERROR_INVALID_INPUT,
    WEIR_ERROR_CANCELLED,
    WEIR_ERROR_OUT_OF_FUEL,
    WEIR_ERROR_DEADLINE_EXCEEDED,
    WEIR_ERROR_MEMORY_LIMIT,
    WEIR_ERROR_TRAP,
    WEIR_ERROR_INVALID_OUTPUT,
} weir_error_kind;
typedef struct weir_error {
    weir_error_kind kind;
    const char *message; /* valid until the next failed call; NULL when none failed */
} weir_error;
const weir_error *weir_last_error(void);
const char *weir_error_kind_name(weir_error_kind kind);

/* Runs a task in its own sandbox with its policy; its result (malloc) or NULL. */
char *weir_call_task(const char *name, const char *input_json);
/* Starts a task that runs concurrently; wait for it with weir_await_task (once). */
uint64_t weir_submit_task(const char *name, const char *input_json);
char *weir_await_task(uint64_t handle);
/* Runs another flow of this component as a child flow run. */
char *weir_call_flow(const char *name, const char *params_json);

typedef enum weir_level { WEIR_TRACE, WEIR_DEBUG, WEIR_INFO, WEIR_WARN, WEIR_ERROR } weir_level;
/* Appends a line to the run's log (printf format). */
void weir_log(weir_level level, const char *format, ...) __attribute__((format(printf, 2, 3)));
#define weir_info(...) weir_log(WEIR_INFO, __VA_ARGS__)
#define weir_warn(...) weir_log(WEIR_WARN, __VA_ARGS__)
#define weir_debug(...) weir_log(WEIR_DEBUG, __VA_ARGS__)

/* This run's attempt number: 1 on the first try. */
uint32_t weir_attempt(void);
/* A secret granted to this run, or NULL (malloc). */
char *weir_secret(const char *name);
/* A variable's JSON value (`host variable set`), or NULL (malloc). */
char *weir_variable(const char *name);

/* Takes `slots` of each of the `count` limits named (`host concurrency-limit
 * create NAME N`), waiting while one is full: at most `timeout_seconds`, or
 * as long as it takes when that is negative. The limits hold for every run
 * on every host. On success sets *handle (for weir_release_slots) and
 * returns true; false with weir_last_error() set (a name with no limit, the
 * timeout). Slots still held are given back when the task or flow that took
 * them ends, so a failure cannot leak them. */
bool weir_take_slots(const char *const *names, size_t count, uint32_t slots, int64_t timeout_seconds,
                     uint64_t *handle);
/* Gives back the slots a weir_take_slots handle holds (a second time does nothing). */
void weir_release_slots(uint64_t handle);

typedef enum weir_artifact_kind { WEIR_ARTIFACT_MARKDOWN, WEIR_ARTIFACT_TABLE, WEIR_ARTIFACT_LINK } weir_artifact_kind;
/* Leaves an artifact on the run for people to read: Markdown text, a JSON
 * table (an array of objects or of arrays) or a URL in `data`. With a `key`
 * (lowercase letters, digits, dashes; NULL for none) it is also the next
 * version of that key's artifact across runs. Its id (malloc), or NULL with
 * weir_last_error() set. */
char *weir_create_artifact(weir_artifact_kind kind, const char *key, const char *description,
                           const char *data);

#ifdef __cplusplus
}
#endif
#endif /* WEIR_H */
