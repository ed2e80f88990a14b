/* Extract → fan-out transform → load, with a load that fails once and is retried.
 *
 * The C twin of examples/etl: the same parameters, tasks, policies and result.
 * Arguments arrive as a JSON object (a weir_json view); results go back as
 * JSON text from malloc. */
#include "weir.h"

#include <stdio.h>

/* Reads `rows` rows from the source. */
static char *extract(weir_json input) {
    int64_t rows = weir_json_int(weir_json_get(input, "rows"), -1);
    if (rows < 0) return weir_invalid_input("rows must be a whole number >= 0");
    weir_buf out = {0};
    weir_buf_append(&out, "[", 1);
    for (int64_t i = 0; i < rows; i++) {
        weir_buf_printf(&out, "%s{\"id\":%lld,\"value\":%lld}", i ? "," : "", (long long)i,
                        (long long)((i * 7919) % 1000));
    }
    weir_buf_append(&out, "]", 1);
    return weir_buf_take(&out);
}
WEIR_TASK(extract, .timeout_ms = 30000, .description = "Reads `rows` rows from the source.",
          .params = "{\"rows\": {\"type\": \"integer\", \"minimum\": 0}}");

/* Cleans one chunk of rows and sums it. */
static char *transform(weir_json input) {
    weir_json_iter rows = weir_json_items(weir_json_get(input, "chunk"));
    weir_json row;
    int64_t count = 0, sum = 0;
    while (weir_json_next(&rows, NULL, &row)) {
        count++;
        sum += weir_json_int(weir_json_get(row, "value"), 0) * 2;
    }
    return weir_json_printf("{\"count\":%lld,\"sum\":%lld}", (long long)count, (long long)sum);
}
WEIR_TASK(transform, .retries = 2, .retry_delay_ms = 10, .description = "Cleans one chunk of rows and sums it.",
          .params = "{\"chunk\": {\"type\": \"array\"}}");

/* Writes the totals to the warehouse, whose connection drops on the first try. */
static char *load(weir_json input) {
    if (weir_attempt() == 1) return weir_fail("warehouse connection reset (simulated)");
    weir_json_iter summaries = weir_json_items(weir_json_get(input, "summaries"));
    weir_json summary;
    int64_t total = 0;
    while (weir_json_next(&summaries, NULL, &summary)) total += weir_json_int(weir_json_get(summary, "sum"), 0);
    return weir_json_printf("%lld", (long long)total);
}
WEIR_TASK(load, .retries = 3, .retry_delay_ms = 50,
          .description = "Writes the totals to the warehouse, whose connection drops on the first try.",
          .params = "{\"summaries\": {\"type\": \"array\"}}");

/* 1234567 → "1,234,567" (the other twins use a package for this). */
static void with_thousands_separators(int64_t n, char out[32]) {
    char digits[24];
    int len = snprintf(digits, sizeof digits, "%lld", (long long)n), at = 0;
    for (int i = 0; i < len; i++) {
        if (i > 0 && digits[i - 1] != '-' && (len - i) % 3 == 0) out[at++] = ',';
        out[at++] = digits[i];
    }
    out[at] = '\0';
}

/* Extracts `rows` rows, transforms them in parallel chunks and loads the totals. */
static char *etl(weir_json params) {
    int64_t rows = weir_json_int(weir_json_get(params, "rows"), 100);
    int64_t chunk_size = weir_json_int(weir_json_get(params, "chunk_size"), 100);
    if (chunk_size < 1) return weir_fail("chunk_size must be at least 1");

    weir_info("extracting %lld rows", (long long)rows);
    char *input = weir_json_printf("{\"rows\":%lld}", (long long)rows);
    char *data = weir_call_task("extract", input);
    free(input);
    if (!data) return NULL; /* the task's error is the flow's */

    /* One transform per chunk, all submitted before any is awaited. */
    size_t count = weir_json_length(weir_json_of(data));
    size_t chunks = (count + (size_t)chunk_size - 1) / (size_t)chunk_size;
    weir_info("transforming %zu chunks of up to %lld rows", chunks, (long long)chunk_size);
    uint64_t *handles = (uint64_t *)calloc(chunks ? chunks : 1, sizeof(uint64_t));
    weir_json_iter it = weir_json_items(weir_json_of(data));
    weir_json row;
    for (size_t c = 0; c < chunks; c++) {
        weir_buf chunk = {0};
        weir_buf_append(&chunk, "{\"chunk\":[", 10);
        for (int64_t i = 0; i < chunk_size && weir_json_next(&it, NULL, &row); i++) {
            if (i) weir_buf_append(&chunk, ",", 1);
            weir_buf_append(&chunk, row.ptr, row.len);
        }
        weir_buf_append(&chunk, "]}", 2);
        char *text = weir_buf_take(&chunk);
        handles[c] = weir_submit_task("transform", text);
        free(text);
    }
    free(data);

    weir_buf summaries = {0};
    weir_buf_append(&summaries, "{\"summaries\":[", 14);
    bool failed = false;
    for (size_t c = 0; c < chunks; c++) {
        char *summary = weir_await_task(handles[c]); /* each handle once, even after a failure */
        if (!summary) {
            failed = true;
            continue;
        }
        weir_buf_printf(&summaries, "%s%s", c ? "," : "", summary);
        free(summary);
    }
    free(handles);
    weir_buf_append(&summaries, "]}", 2);
    char *loaded = NULL;
    if (!failed) {
        weir_info("loading %zu summaries", chunks);
        loaded = weir_call_task("load", summaries.data);
    }
    free(weir_buf_take(&summaries));
    if (!loaded) return NULL;

    int64_t total = weir_json_int(weir_json_of(loaded), 0);
    free(loaded);
    char shown[32];
    with_thousands_separators(total, shown);
    weir_info("loaded: total %s", shown);
    return weir_json_printf("{\"rows\":%lld,\"chunks\":%zu,\"total\":%lld}", (long long)rows, chunks, (long long)total);
}
WEIR_FLOW(etl, .description = "Extracts `rows` rows, transforms them in parallel chunks and loads the totals.",
          .params = "{\"rows\": {\"type\": \"integer\", \"minimum\": 0, \"default\": 100},"
                    " \"chunk_size\": {\"type\": \"integer\", \"minimum\": 1, \"default\": 100}}");
