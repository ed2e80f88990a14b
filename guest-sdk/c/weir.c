/* The Weir SDK for C: the registry of flows and tasks, the component's
 * exports (describe, run-flow, run-task) and the host's imports as plain C
 * calls. See weir.h; the JSON helpers are in weir_json.c. The bindings
 * (`flow.h`) are generated from wit/flow.wit by `host build`.
 *
 * Ownership follows the canonical ABI as wit-bindgen's C generator lays it
 * out: an export's arguments are the callee's to free, its results are freed
 * by the generated post-return functions (so they must come from malloc and
 * never be empty), and an import's results are the caller's.
 */
#include "weir.h"
#include "flow.h"

#include <stdio.h>
#include <string.h>

/* --- the registry ----------------------------------------------------------- */

typedef struct entry {
    weir_kind kind;
    const char *name;
    weir_fn fn;
    weir_options options;
} entry;

static entry *entries;
static size_t entry_count;

void weir_register(weir_kind kind, const char *name, weir_fn fn, const weir_options *options) {
    entry *grown = (entry *)realloc(entries, (entry_count + 1) * sizeof(entry));
    if (!grown) abort();
    entries = grown;
    entry added = {kind, name, fn, *options};
    entries[entry_count++] = added;
}

static const entry *find(weir_kind kind, const char *name, size_t len) {
    for (size_t i = 0; i < entry_count; i++) {
        if (entries[i].kind == kind && strlen(entries[i].name) == len && memcmp(entries[i].name, name, len) == 0) {
            return &entries[i];
        }
    }
    return NULL;
}

/* The argument schema: the given properties, those without a default required. */
static void put_schema(weir_buf *out, const char *params) {
    if (!params) {
        weir_buf_printf(out, "{\"type\":\"object\"}");
        return;
    }
    weir_buf_printf(out, "{\"type\":\"object\",\"properties\":%s,\"additionalProperties\":false,\"required\":[", params);
    weir_json_iter it = weir_json_items(weir_json_of(params));
    weir_json name, schema;
    bool first = true;
    while (weir_json_next(&it, &name, &schema)) {
        if (name.ptr && !weir_json_get(schema, "default").ptr) {
            weir_buf_printf(out, "%s%.*s", first ? "" : ",", (int)name.len, name.ptr);
            first = false;
        }
    }
    weir_buf_append(out, "]}", 2);
}

static void put_policy(weir_buf *out, const weir_options *o) {
    const char *sep = "";
    weir_buf_append(out, "{", 1);
#define WEIR__NUMBER(field, key)                                                             \
    if (o->field) {                                                                          \
        weir_buf_printf(out, "%s\"" key "\":%llu", sep, (unsigned long long)o->field);       \
        sep = ",";                                                                           \
    }
    WEIR__NUMBER(retries, "retries")
    WEIR__NUMBER(timeout_ms, "timeout_ms")
    WEIR__NUMBER(fuel, "fuel")
    WEIR__NUMBER(memory_bytes, "memory_bytes")
    WEIR__NUMBER(cache_ttl_ms, "cache_ttl_ms")
#undef WEIR__NUMBER
    if (o->retry_delay_ms) {
        weir_buf_printf(out, "%s\"retry_delay_ms\":[%llu]", sep, (unsigned long long)o->retry_delay_ms);
        sep = ",";
    }
    if (o->policy && o->policy[0]) weir_buf_printf(out, "%s%s", sep, o->policy);
    weir_buf_append(out, "}", 1);
}

static void put_entries(weir_buf *out, weir_kind kind, const char *schema_key) {
    bool first = true;
    weir_buf_append(out, "[", 1);
    for (size_t i = 0; i < entry_count; i++) {
        const entry *e = &entries[i];
        if (e->kind != kind) continue;
        char *name = weir_json_quote(e->name);
        char *description = weir_json_quote(e->options.description ? e->options.description : "");
        weir_buf_printf(out, "%s{\"name\":%s,\"description\":%s,\"%s\":", first ? "" : ",", name, description, schema_key);
        free(name);
        free(description);
        put_schema(out, e->options.params);
        weir_buf_append(out, ",\"policy\":", 10);
        put_policy(out, &e->options);
        weir_buf_append(out, "}", 1);
        first = false;
    }
    weir_buf_append(out, "]", 1);
}

/* --- errors ------------------------------------------------------------------------ */

static weir_error last_error;
static char *last_message;
/* Set by weir_fail / weir_invalid_input for the running flow or task. */
static char *failure;
static bool failure_is_invalid_input;

static void set_last_error(weir_error_kind kind, char *message) {
    free(last_message);
    last_message = message;
    last_error.kind = kind;
    last_error.message = message;
}

const weir_error *weir_last_error(void) {
    return &last_error;
}

const char *weir_error_kind_name(weir_error_kind kind) {
    static const char *names[] = {"failed", "invalid-input", "cancelled", "out-of-fuel",
                                  "deadline-exceeded", "memory-limit", "trap", "invalid-output"};
    return (size_t)kind < sizeof(names) / sizeof(names[0]) ? names[kind] : "failed";
}

static char *vformat(const char *format, va_list args) {
    weir_buf out = {0};
    weir_buf_vprintf(&out, format, args);
    return weir_buf_take(&out);
}

char *weir_fail(const char *format, ...) {
    va_list args;
    va_start(args, format);
    free(failure);
    failure = vformat(format, args);
    failure_is_invalid_input = false;
    va_end(args);
    return NULL;
}

char *weir_invalid_input(const char *format, ...) {
    va_list args;
    va_start(args, format);
    free(failure);
    failure = vformat(format, args);
    failure_is_invalid_input = true;
    va_end(args);
    return NULL;
}

static char *copy_n(const uint8_t *ptr, size_t len) {
    char *text = (char *)malloc(len + 1);
    if (!text) abort();
    if (len) memcpy(text, ptr, len);
    text[len] = '\0';
    return text;
}

/* A task-error from the host, as the last error; frees it. */
static void take_error(weir_flow_types_task_error_t *err) {
    switch (err->tag) {
    case WEIR_FLOW_TYPES_TASK_ERROR_FAILED:
        set_last_error(WEIR_ERROR_FAILED, copy_n(err->val.failed.ptr, err->val.failed.len));
        break;
    case WEIR_FLOW_TYPES_TASK_ERROR_INVALID_INPUT:
        set_last_error(WEIR_ERROR_INVALID_INPUT, copy_n(err->val.invalid_input.ptr, err->val.invalid_input.len));
        break;
    case WEIR_FLOW_TYPES_TASK_ERROR_CANCELLED:
        set_last_error(WEIR_ERROR_CANCELLED, copy_n((const uint8_t *)"cancelled", 9));
        break;
    default:
        set_last_error((weir_error_kind)(WEIR_ERROR_OUT_OF_FUEL + err->val.sandbox.kind),
                       copy_n(err->val.sandbox.message.ptr, err->val.sandbox.message.len));
        break;
    }
    weir_flow_types_task_error_free(err);
}

/* --- the host's imports ------------------------------------------------------------- */

static flow_string_t borrow(const char *text) {
    flow_string_t s = {(uint8_t *)text, text ? strlen(text) : 0};
    return s;
}

/* The ok value (as a C string) or NULL with the error recorded. */
static char *outcome(bool ok, weir_flow_runtime_json_t *ret, weir_flow_runtime_task_error_t *err) {
    if (!ok) {
        take_error(err);
        return NULL;
    }
    char *text = copy_n(ret->ptr, ret->len);
    weir_flow_runtime_json_free(ret);
    return text;
}

char *weir_call_task(const char *name, const char *input_json) {
    flow_string_t n = borrow(name), input = borrow(input_json ? input_json : "{}");
    weir_flow_runtime_json_t ret;
    weir_flow_runtime_task_error_t err;
    bool ok = weir_flow_runtime_call_task(&n, &input, &ret, &err);
    return outcome(ok, &ret, &err);
}

uint64_t weir_submit_task(const char *name, const char *input_json) {
    flow_string_t n = borrow(name), input = borrow(input_json ? input_json : "{}");
    return weir_flow_runtime_submit_task(&n, &input);
}

char *weir_await_task(uint64_t handle) {
    weir_flow_runtime_json_t ret;
    weir_flow_runtime_task_error_t err;
    bool ok = weir_flow_runtime_await_task(handle, &ret, &err);
    return outcome(ok, &ret, &err);
}

char *weir_call_flow(const char *name, const char *params_json) {
    flow_string_t n = borrow(name), params = borrow(params_json ? params_json : "{}");
    weir_flow_runtime_json_t ret;
    weir_flow_runtime_task_error_t err;
    bool ok = weir_flow_runtime_call_flow(&n, &params, &ret, &err);
    return outcome(ok, &ret, &err);
}

void weir_log(weir_level level, const char *format, ...) {
    va_list args;
    va_start(args, format);
    char *text = vformat(format, args);
    va_end(args);
    flow_string_t message = borrow(text);
    weir_flow_runtime_log((weir_flow_runtime_log_level_t)level, &message);
    free(text);
}

uint32_t weir_attempt(void) {
    weir_flow_runtime_run_info_t info;
    weir_flow_runtime_info(&info);
    uint32_t attempt = info.attempt;
    weir_flow_runtime_run_info_free(&info);
    return attempt;
}

char *weir_secret(const char *name) {
    flow_string_t n = borrow(name), value;
    if (!weir_flow_runtime_get_secret(&n, &value)) return NULL;
    char *text = copy_n(value.ptr, value.len);
    flow_string_free(&value);
    return text;
}

char *weir_variable(const char *name) {
    flow_string_t n = borrow(name);
    weir_flow_runtime_json_t value;
    if (!weir_flow_runtime_get_variable(&n, &value)) return NULL;
    char *text = copy_n(value.ptr, value.len);
    weir_flow_runtime_json_free(&value);
    return text;
}

bool weir_take_slots(const char *const *names, size_t count, uint32_t slots, int64_t timeout_seconds,
                     uint64_t *handle) {
    flow_string_t *borrowed = (flow_string_t *)calloc(count ? count : 1, sizeof(flow_string_t));
    if (!borrowed) abort();
    for (size_t i = 0; i < count; i++) borrowed[i] = borrow(names[i]);
    flow_list_string_t list = {borrowed, count};
    uint64_t timeout = timeout_seconds < 0 ? 0 : (uint64_t)timeout_seconds;
    uint64_t taken = 0;
    weir_flow_runtime_task_error_t err;
    bool ok = weir_flow_runtime_take_slots(&list, slots, timeout_seconds < 0 ? NULL : &timeout, &taken, &err);
    free(borrowed);
    if (!ok) {
        take_error(&err);
        return false;
    }
    if (handle) *handle = taken;
    return true;
}

void weir_release_slots(uint64_t handle) {
    weir_flow_runtime_release_slots(handle);
}

static flow_option_string_t maybe(const char *text) {
    flow_option_string_t option = {text != NULL, borrow(text)};
    return option;
}

char *weir_create_artifact(weir_artifact_kind kind, const char *key, const char *description,
                           const char *data) {
    weir_flow_runtime_artifact_t artifact = {
        .kind = (weir_flow_runtime_artifact_kind_t)kind,
        .key = maybe(key),
        .description = maybe(description),
        .data = borrow(data ? data : ""),
    };
    flow_string_t id;
    weir_flow_runtime_task_error_t err;
    if (!weir_flow_runtime_create_artifact(&artifact, &id, &err)) {
        take_error(&err);
        return NULL;
    }
    char *text = copy_n(id.ptr, id.len);
    flow_string_free(&id);
    return text;
}

/* --- the component's exports --------------------------------------------------------- */

/* Hands `text` (malloc) to the host as an export's string result; the
 * generated post-return frees it, and only frees what is not empty. */
static void give(flow_string_t *out, char *text) {
    size_t len = strlen(text);
    if (len == 0) {
        free(text);
        text = copy_n((const uint8_t *)"null", 4);
        len = 4;
    }
    out->ptr = (uint8_t *)text;
    out->len = len;
}

/* `host build` says "cpp" when the project is C++ (this file is C either way). */
#ifndef WEIR_SDK_LANGUAGE
#define WEIR_SDK_LANGUAGE "c"
#endif

void exports_weir_flow_guest_describe(exports_weir_flow_guest_json_t *ret) {
    weir_buf out = {0};
    weir_buf_printf(&out, "{\"sdk\":{\"language\":\"%s\",\"version\":\"%s\"},\"flows\":", WEIR_SDK_LANGUAGE,
                    WEIR_SDK_VERSION);
    put_entries(&out, WEIR_KIND_FLOW, "params_schema");
    weir_buf_append(&out, ",\"tasks\":", 9);
    put_entries(&out, WEIR_KIND_TASK, "input_schema");
    weir_buf_append(&out, "}", 1);
    give(ret, weir_buf_take(&out));
}

static void give_error(exports_weir_flow_guest_task_error_t *err, bool invalid_input, char *message) {
    if (invalid_input) {
        err->tag = WEIR_FLOW_TYPES_TASK_ERROR_INVALID_INPUT;
        give(&err->val.invalid_input, message);
    } else {
        err->tag = WEIR_FLOW_TYPES_TASK_ERROR_FAILED;
        give(&err->val.failed, message);
    }
}

static bool run(weir_kind kind, flow_string_t *name, flow_string_t *input, flow_string_t *ret,
                exports_weir_flow_guest_task_error_t *err) {
    const char *what = kind == WEIR_KIND_FLOW ? "flow" : "task";
    const entry *e = find(kind, (const char *)name->ptr, name->len);
    bool ok = false;
    if (!e) {
        weir_buf names = {0};
        for (size_t i = 0; i < entry_count; i++) {
            if (entries[i].kind == kind) weir_buf_printf(&names, "%s%s", names.len ? ", " : "", entries[i].name);
        }
        char *listed = weir_buf_take(&names);
        give_error(err, true,
                   weir_json_printf("no %s named '%.*s' in this component; it has: %s", what, (int)name->len,
                                    (const char *)name->ptr, listed[0] ? listed : "none"));
        free(listed);
    } else {
        free(failure);
        failure = NULL;
        set_last_error(WEIR_ERROR_FAILED, NULL);
        weir_json args = {(const char *)input->ptr, input->len};
        char *result = e->fn(args);
        if (result) {
            give(ret, result);
            ok = true;
        } else if (failure) {
            give_error(err, failure_is_invalid_input, failure);
            failure = NULL;
        } else if (last_message) {
            /* NULL after a failed call: that call's error is this one's. */
            give_error(err, false, weir_json_printf("%s: %s", weir_error_kind_name(last_error.kind), last_message));
        } else {
            give_error(err, false, weir_json_printf("%s %s returned NULL without weir_fail()", what, e->name));
        }
    }
    flow_string_free(name);
    flow_string_free(input);
    return ok;
}

bool exports_weir_flow_guest_run_flow(flow_string_t *name, exports_weir_flow_guest_json_t *params,
                                      exports_weir_flow_guest_json_t *ret, exports_weir_flow_guest_task_error_t *err) {
    return run(WEIR_KIND_FLOW, name, params, ret, err);
}

bool exports_weir_flow_guest_run_task(flow_string_t *name, exports_weir_flow_guest_json_t *input,
                                      exports_weir_flow_guest_json_t *ret, exports_weir_flow_guest_task_error_t *err) {
    return run(WEIR_KIND_TASK, name, input, ret, err);
}
