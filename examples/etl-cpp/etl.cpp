// Extract → fan-out transform → load, with a load that fails once and is retried.
//
// The C++ twin of examples/etl: the same parameters, tasks, policies and
// result, written with the standard library (std::string, std::vector,
// std::map, <algorithm>, <numeric>). Arguments arrive as a JSON object (a
// weir_json view); results go back as JSON text from malloc (strdup).
#include "weir.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <map>
#include <numeric>
#include <string>
#include <vector>

namespace {

struct Row {
    int64_t id;
    int64_t value;
};

// The JSON text of `rows`, as the other twins write it.
std::string rows_json(const std::vector<Row> &rows) {
    std::string out = "[";
    for (const Row &row : rows) {
        if (out.size() > 1) out += ',';
        out += "{\"id\":" + std::to_string(row.id) + ",\"value\":" + std::to_string(row.value) + "}";
    }
    return out + "]";
}

// Every element of a JSON array.
std::vector<weir_json> items(weir_json array) {
    std::vector<weir_json> out;
    weir_json_iter it = weir_json_items(array);
    weir_json item;
    while (weir_json_next(&it, nullptr, &item)) out.push_back(item);
    return out;
}

// The result handed to the SDK, which frees it.
char *give(const std::string &json) { return strdup(json.c_str()); }

// 1234567 → "1,234,567" (the Python and JavaScript twins use a package for this).
std::string with_thousands_separators(int64_t n) {
    std::string digits = std::to_string(n < 0 ? -n : n);
    std::string out;
    for (size_t i = 0; i < digits.size(); i++) {
        if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
        out += digits[i];
    }
    return n < 0 ? "-" + out : out;
}

} // namespace

// Reads `rows` rows from the source.
static char *extract(weir_json input) {
    int64_t count = weir_json_int(weir_json_get(input, "rows"), -1);
    if (count < 0) return weir_invalid_input("rows must be a whole number >= 0");
    std::vector<Row> rows(static_cast<size_t>(count));
    int64_t next_id = 0;
    std::generate(rows.begin(), rows.end(), [&next_id] {
        Row row{next_id, (next_id * 7919) % 1000};
        next_id++;
        return row;
    });
    return give(rows_json(rows));
}
WEIR_TASK(extract, .description = "Reads `rows` rows from the source.",
          .params = "{\"rows\": {\"type\": \"integer\", \"minimum\": 0}}", .timeout_ms = 30000);

// Cleans one chunk of rows and sums it.
static char *transform(weir_json input) {
    std::vector<weir_json> chunk = items(weir_json_get(input, "chunk"));
    std::vector<int64_t> doubled(chunk.size());
    std::transform(chunk.begin(), chunk.end(), doubled.begin(),
                   [](weir_json row) { return weir_json_int(weir_json_get(row, "value"), 0) * 2; });
    int64_t sum = std::accumulate(doubled.begin(), doubled.end(), int64_t{0});
    return give("{\"count\":" + std::to_string(doubled.size()) + ",\"sum\":" + std::to_string(sum) + "}");
}
WEIR_TASK(transform, .description = "Cleans one chunk of rows and sums it.",
          .params = "{\"chunk\": {\"type\": \"array\"}}", .retries = 2, .retry_delay_ms = 10);

// Writes the totals to the warehouse, whose connection drops on the first try.
static char *load(weir_json input) {
    if (weir_attempt() == 1) return weir_fail("warehouse connection reset (simulated)");
    std::vector<weir_json> summaries = items(weir_json_get(input, "summaries"));
    int64_t total = std::accumulate(summaries.begin(), summaries.end(), int64_t{0}, [](int64_t sum, weir_json s) {
        return sum + weir_json_int(weir_json_get(s, "sum"), 0);
    });
    return give(std::to_string(total));
}
WEIR_TASK(load, .description = "Writes the totals to the warehouse, whose connection drops on the first try.",
          .params = "{\"summaries\": {\"type\": \"array\"}}", .retries = 3, .retry_delay_ms = 50);

// Extracts `rows` rows, transforms them in parallel chunks and loads the totals.
static char *etl(weir_json params) {
    int64_t rows = weir_json_int(weir_json_get(params, "rows"), 100);
    int64_t chunk_size = weir_json_int(weir_json_get(params, "chunk_size"), 100);
    if (chunk_size < 1) return weir_fail("chunk_size must be at least 1");

    weir_info("extracting %lld rows", static_cast<long long>(rows));
    char *data = weir_call_task("extract", ("{\"rows\":" + std::to_string(rows) + "}").c_str());
    if (data == nullptr) return nullptr; // the task's error is the flow's
    std::vector<weir_json> all = items(weir_json_of(data));

    // One transform per chunk, all submitted before any is awaited; the
    // handles are kept by chunk number, the order the summaries go back in.
    std::map<size_t, uint64_t> handles;
    size_t size = static_cast<size_t>(chunk_size);
    size_t chunks = (all.size() + size - 1) / size;
    weir_info("transforming %zu chunks of up to %lld rows", chunks, static_cast<long long>(chunk_size));
    for (size_t c = 0; c < chunks; c++) {
        auto first = all.begin() + static_cast<std::ptrdiff_t>(c * size);
        auto last = all.begin() + static_cast<std::ptrdiff_t>(std::min(all.size(), (c + 1) * size));
        std::string chunk = "{\"chunk\":[";
        for (auto row = first; row != last; ++row) {
            if (row != first) chunk += ',';
            chunk.append(row->ptr, row->len);
        }
        handles[c] = weir_submit_task("transform", (chunk + "]}").c_str());
    }
    free(data);

    std::vector<std::string> summaries;
    bool failed = false;
    for (const auto &[c, handle] : handles) {
        char *summary = weir_await_task(handle); // each handle once, even after a failure
        if (summary == nullptr) {
            failed = true;
            continue;
        }
        summaries.emplace_back(summary);
        free(summary);
    }
    if (failed) return nullptr;
    std::string input = "{\"summaries\":[";
    for (size_t i = 0; i < summaries.size(); i++) input += (i ? "," : "") + summaries[i];
    weir_info("loading %zu summaries", summaries.size());
    char *loaded = weir_call_task("load", (input + "]}").c_str());
    if (loaded == nullptr) return nullptr;

    int64_t total = weir_json_int(weir_json_of(loaded), 0);
    free(loaded);
    weir_info("loaded: total %s", with_thousands_separators(total).c_str());
    return give("{\"rows\":" + std::to_string(rows) + ",\"chunks\":" + std::to_string(chunks) +
                ",\"total\":" + std::to_string(total) + "}");
}
WEIR_FLOW(etl, .description = "Extracts `rows` rows, transforms them in parallel chunks and loads the totals.",
          .params = "{\"rows\": {\"type\": \"integer\", \"minimum\": 0, \"default\": 100},"
                    " \"chunk_size\": {\"type\": \"integer\", \"minimum\": 1, \"default\": 100}}");
