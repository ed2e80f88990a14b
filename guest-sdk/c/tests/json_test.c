/* Native tests of the C SDK's JSON helpers (weir_json.c), run under
 * AddressSanitizer and UndefinedBehaviorSanitizer by tests/tests/c_sdk.rs.
 *
 * Every text is copied into a heap block of exactly its length, with no NUL
 * after it, so a read one byte past a view is an ASan error, not luck. */
#include "weir.h"

#include <stdio.h>
#include <string.h>

static int failures;

#define CHECK(cond)                                                              \
    do {                                                                         \
        if (!(cond)) {                                                           \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            failures++;                                                          \
        }                                                                        \
    } while (0)

/* `text` in a block of exactly its length (no terminator). */
static weir_json exact(const char *text, char **block) {
    size_t len = strlen(text);
    *block = (char *)malloc(len ? len : 1);
    memcpy(*block, text, len);
    weir_json view = {*block, len};
    return view;
}

static bool str_is(char *got, const char *want) {
    bool same = got && strcmp(got, want) == 0;
    free(got);
    return same;
}

static void reads_what_the_host_sends(void) {
    char *b;
    weir_json v = exact("{\"rows\": 500, \"name\": \"a\\\"b\\\\c\\n\\u00e9\\ud83d\\ude00\", \"chunk\": [{\"id\":1,\"value\":7},"
                        " {\"id\":2,\"value\":9}], \"nested\": {\"rows\": 1}, \"ok\": true, \"none\": null, \"x\": -2.5e1}",
                        &b);
    CHECK(weir_json_int(weir_json_get(v, "rows"), 0) == 500);
    CHECK(str_is(weir_json_string(weir_json_get(v, "name")), "a\"b\\c\n\xc3\xa9\xf0\x9f\x98\x80"));
    weir_json chunk = weir_json_get(v, "chunk");
    CHECK(weir_json_length(chunk) == 2);
    weir_json_iter it = weir_json_items(chunk);
    weir_json row;
    int64_t sum = 0;
    while (weir_json_next(&it, NULL, &row)) sum += weir_json_int(weir_json_get(row, "value"), 0);
    CHECK(sum == 16);
    /* Only top-level keys: "rows" inside "nested" is not v's. */
    CHECK(weir_json_int(weir_json_get(weir_json_get(v, "nested"), "rows"), 0) == 1);
    CHECK(weir_json_bool(weir_json_get(v, "ok"), false));
    CHECK(!weir_json_present(weir_json_get(v, "none")));
    CHECK(weir_json_get(v, "missing").ptr == NULL);
    CHECK(weir_json_int(weir_json_get(v, "x"), 0) == -25);
    CHECK(weir_json_int(weir_json_get(v, "name"), 42) == 42); /* not a number */
    CHECK(weir_json_string(weir_json_get(v, "rows")) == NULL);
    free(b);
}

static void builds_json_that_reads_back(void) {
    char *quoted = weir_json_quote("tab\there \"q\" \\ \x01 é");
    CHECK(strcmp(quoted, "\"tab\\there \\\"q\\\" \\\\ \\u0001 é\"") == 0);
    CHECK(str_is(weir_json_string(weir_json_of(quoted)), "tab\there \"q\" \\ \x01 é"));
    free(quoted);
    weir_buf buf = {0};
    for (int i = 0; i < 1000; i++) weir_buf_printf(&buf, "%s%d", i ? "," : "[", i);
    weir_buf_append(&buf, "]", 1);
    char *array = weir_buf_take(&buf);
    CHECK(weir_json_length(weir_json_of(array)) == 1000);
    CHECK(buf.data == NULL && buf.len == 0);
    free(array);
    CHECK(str_is(weir_buf_take(&buf), ""));
}

/* Malformed and truncated texts: every call ends, inside the view. */
static void malformed_text_never_overruns(void) {
    const char *cases[] = {
        "", "{", "[", "\"", "\"\\", "\"abc\\", "\"\\u12", "\"\\ud83d\\u", "{\"a\"", "{\"a\":", "{\"a\":}",
        "[1,2,", "[,,,]", "{\"a\" \"b\"}", "]", "}", "{\"a\":[1,{\"b\":\"}\"]", "-", "1e999999",
        "99999999999999999999999999999999999999999999999999999999999999999999", "nul", "tru",
        "{\"\\\"\":1}", "[\"\\\\\"]",
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *b;
        weir_json v = exact(cases[i], &b);
        (void)weir_json_get(v, "a");
        (void)weir_json_int(v, 0);
        (void)weir_json_number(v, 0);
        (void)weir_json_bool(v, false);
        free(weir_json_string(v));
        free(weir_json_copy(v));
        size_t n = 0;
        weir_json_iter it = weir_json_items(v);
        weir_json key, value;
        while (weir_json_next(&it, &key, &value)) {
            CHECK(value.ptr >= v.ptr && value.ptr + value.len <= v.ptr + v.len);
            CHECK(++n <= v.len);
            free(weir_json_string(value));
        }
        free(b);
    }
    char *b;
    CHECK(weir_json_int(exact("1e999999", &b), 7) == 7);
    free(b);
    CHECK(weir_json_int(weir_json_of("99999999999999999999"), 7) == 7);
    /* Deep nesting is counted, not recursed. */
    size_t depth = 200000;
    char *deep = (char *)malloc(depth * 2);
    memset(deep, '[', depth);
    memset(deep + depth, ']', depth);
    weir_json deep_view = {deep, depth * 2};
    CHECK(weir_json_length(deep_view) == 1);
    free(deep);
}

/* Random JSON-ish bytes (a fixed seed): the same promise, many times. */
static void random_text_never_overruns(void) {
    const char alphabet[] = "{}[]\":,\\u0123456789abcdeE.-+ tnrfl\xc3\xa9";
    uint32_t state = 12345;
    for (int round = 0; round < 20000; round++) {
        state = state * 1103515245u + 12345u;
        size_t len = (state >> 16) % 48;
        char *b = (char *)malloc(len ? len : 1);
        for (size_t i = 0; i < len; i++) {
            state = state * 1103515245u + 12345u;
            b[i] = alphabet[(state >> 16) % (sizeof alphabet - 1)];
        }
        weir_json v = {b, len};
        weir_json_iter it = weir_json_items(v);
        weir_json key, value;
        size_t n = 0;
        while (weir_json_next(&it, &key, &value)) {
            CHECK(++n <= len);
            (void)weir_json_get(value, "k");
            free(weir_json_string(key));
            free(weir_json_string(value));
        }
        (void)weir_json_get(v, "a");
        (void)weir_json_int(v, 0);
        free(weir_json_string(v));
        free(b);
    }
}

int main(void) {
    reads_what_the_host_sends();
    builds_json_that_reads_back();
    malformed_text_never_overruns();
    random_text_never_overruns();
    if (failures) {
        fprintf(stderr, "%d checks failed\n", failures);
        return 1;
    }
    printf("all checks passed\n");
    return 0;
}
