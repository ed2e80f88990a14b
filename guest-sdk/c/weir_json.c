/* The Weir SDK for C: JSON views, iteration, unescaping and building (see
 * weir.h). Pure C over the text it is given: it needs nothing from the host,
 * so its tests run natively (tests/tests/c_sdk.rs, under the sanitizers).
 *
 * Every read is bounded by the view's length: the host hands over valid JSON
 * only, but a malformed or truncated text stops a scan, never overruns it. */
#include "weir.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

static const char *skip_space(const char *at, const char *end) {
    while (at < end && (*at == ' ' || *at == '\t' || *at == '\n' || *at == '\r')) at++;
    return at;
}

/* The end of the JSON value starting at `at`, never past `end`. The host
 * hands over valid JSON only; on anything else this stops, it never overruns. */
static const char *skip_value(const char *at, const char *end) {
    if (at >= end) return end;
    if (*at == '"') {
        for (at++; at < end; at++) {
            if (*at == '\\') at++;
            else if (*at == '"') return at + 1;
        }
        return end;
    }
    if (*at == '{' || *at == '[') {
        int depth = 0;
        for (; at < end; at++) {
            if (*at == '"') {
                at = skip_value(at, end) - 1;
            } else if (*at == '{' || *at == '[') {
                depth++;
            } else if (*at == '}' || *at == ']') {
                if (--depth == 0) return at + 1;
            }
        }
        return end;
    }
    while (at < end && !strchr(",]} \t\r\n", *at)) at++;
    return at;
}

weir_json weir_json_of(const char *text) {
    weir_json value = {text, text ? strlen(text) : 0};
    return value;
}

weir_json_iter weir_json_items(weir_json value) {
    weir_json_iter it = {NULL, NULL};
    if (!value.ptr) return it;
    const char *end = value.ptr + value.len;
    const char *at = skip_space(value.ptr, end);
    if (at < end && (*at == '[' || *at == '{')) {
        it.at = at + 1;
        it.end = end;
    }
    return it;
}

bool weir_json_next(weir_json_iter *it, weir_json *key, weir_json *value) {
    if (!it->at) return false;
    const char *at = skip_space(it->at, it->end);
    if (at < it->end && *at == ',') at = skip_space(at + 1, it->end);
    if (at >= it->end || *at == ']' || *at == '}') {
        it->at = NULL;
        return false;
    }
    const char *start = at;
    at = skip_value(at, it->end);
    at = skip_space(at, it->end);
    if (at < it->end && *at == ':') {
        /* An object member: what came first was its key. */
        if (key) {
            key->ptr = start;
            key->len = (size_t)(skip_value(start, it->end) - start);
        }
        start = skip_space(at + 1, it->end);
        at = skip_value(start, it->end);
    } else if (key) {
        key->ptr = NULL;
        key->len = 0;
    }
    value->ptr = start;
    value->len = (size_t)(at - start);
    it->at = at;
    return value->len > 0;
}

/* Does the JSON string literal `literal` hold exactly `text`? */
static bool string_equals(weir_json literal, const char *text) {
    char *unescaped = weir_json_string(literal);
    bool same = unescaped && strcmp(unescaped, text) == 0;
    free(unescaped);
    return same;
}

weir_json weir_json_get(weir_json object, const char *key) {
    weir_json_iter it = weir_json_items(object);
    weir_json name, value;
    while (weir_json_next(&it, &name, &value)) {
        if (name.ptr && string_equals(name, key)) return value;
    }
    weir_json missing = {NULL, 0};
    return missing;
}

bool weir_json_present(weir_json value) {
    return value.ptr && !(value.len == 4 && memcmp(value.ptr, "null", 4) == 0);
}

static bool is_number(weir_json value) {
    return value.ptr && value.len > 0 && (value.ptr[0] == '-' || (value.ptr[0] >= '0' && value.ptr[0] <= '9'));
}

double weir_json_number(weir_json value, double fallback) {
    if (!is_number(value) || value.len > 63) return fallback;
    char text[64];
    memcpy(text, value.ptr, value.len);
    text[value.len] = '\0';
    return strtod(text, NULL);
}

int64_t weir_json_int(weir_json value, int64_t fallback) {
    if (!is_number(value) || value.len > 63) return fallback;
    char text[64];
    memcpy(text, value.ptr, value.len);
    text[value.len] = '\0';
    if (strpbrk(text, ".eE")) {
        double number = strtod(text, NULL);
        /* Out of range (or inf) has no int64_t: converting it is undefined. */
        if (!(number > -9.2e18 && number < 9.2e18)) return fallback;
        return (int64_t)number;
    }
    errno = 0;
    long long number = strtoll(text, NULL, 10);
    return errno == ERANGE ? fallback : (int64_t)number;
}

bool weir_json_bool(weir_json value, bool fallback) {
    if (value.ptr && value.len == 4 && memcmp(value.ptr, "true", 4) == 0) return true;
    if (value.ptr && value.len == 5 && memcmp(value.ptr, "false", 5) == 0) return false;
    return fallback;
}

static int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static void put_utf8(weir_buf *out, uint32_t code) {
    char bytes[4];
    size_t n;
    if (code < 0x80) {
        bytes[0] = (char)code;
        n = 1;
    } else if (code < 0x800) {
        bytes[0] = (char)(0xC0 | (code >> 6));
        bytes[1] = (char)(0x80 | (code & 0x3F));
        n = 2;
    } else if (code < 0x10000) {
        bytes[0] = (char)(0xE0 | (code >> 12));
        bytes[1] = (char)(0x80 | ((code >> 6) & 0x3F));
        bytes[2] = (char)(0x80 | (code & 0x3F));
        n = 3;
    } else {
        bytes[0] = (char)(0xF0 | (code >> 18));
        bytes[1] = (char)(0x80 | ((code >> 12) & 0x3F));
        bytes[2] = (char)(0x80 | ((code >> 6) & 0x3F));
        bytes[3] = (char)(0x80 | (code & 0x3F));
        n = 4;
    }
    weir_buf_append(out, bytes, n);
}

static int32_t read_hex4(const char *at, const char *end) {
    if (end - at < 4) return -1;
    int32_t code = 0;
    for (int i = 0; i < 4; i++) {
        int digit = hex_digit(at[i]);
        if (digit < 0) return -1;
        code = code * 16 + digit;
    }
    return code;
}

char *weir_json_string(weir_json value) {
    if (!value.ptr || value.len < 2 || value.ptr[0] != '"' || value.ptr[value.len - 1] != '"') return NULL;
    weir_buf out = {0};
    const char *at = value.ptr + 1, *end = value.ptr + value.len - 1;
    while (at < end) {
        if (*at != '\\') {
            weir_buf_append(&out, at++, 1);
            continue;
        }
        if (++at >= end) break;
        char c = *at++;
        switch (c) {
        case 'n': weir_buf_append(&out, "\n", 1); break;
        case 't': weir_buf_append(&out, "\t", 1); break;
        case 'r': weir_buf_append(&out, "\r", 1); break;
        case 'b': weir_buf_append(&out, "\b", 1); break;
        case 'f': weir_buf_append(&out, "\f", 1); break;
        case 'u': {
            int32_t code = read_hex4(at, end);
            if (code < 0) break;
            at += 4;
            if (code >= 0xD800 && code < 0xDC00 && end - at >= 6 && at[0] == '\\' && at[1] == 'u') {
                int32_t low = read_hex4(at + 2, end);
                if (low >= 0xDC00 && low < 0xE000) {
                    code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
                    at += 6;
                }
            }
            put_utf8(&out, (uint32_t)code);
            break;
        }
        default: weir_buf_append(&out, &c, 1); break; /* \" \\ \/ */
        }
    }
    return weir_buf_take(&out);
}

char *weir_json_copy(weir_json value) {
    weir_buf out = {0};
    if (value.ptr) weir_buf_append(&out, value.ptr, value.len);
    return weir_buf_take(&out);
}

size_t weir_json_length(weir_json array) {
    size_t count = 0;
    weir_json_iter it = weir_json_items(array);
    weir_json item;
    while (weir_json_next(&it, NULL, &item)) count++;
    return count;
}

void weir_buf_vprintf(weir_buf *buf, const char *format, va_list args) {
    va_list again;
    va_copy(again, args);
    int needed = vsnprintf(NULL, 0, format, again);
    va_end(again);
    if (needed < 0) return;
    if (buf->len + (size_t)needed + 1 > buf->cap) {
        size_t cap = buf->cap ? buf->cap : 64;
        while (cap < buf->len + (size_t)needed + 1) cap *= 2;
        char *grown = (char *)realloc(buf->data, cap);
        if (!grown) abort();
        buf->data = grown;
        buf->cap = cap;
    }
    vsnprintf(buf->data + buf->len, (size_t)needed + 1, format, args);
    buf->len += (size_t)needed;
}

void weir_buf_printf(weir_buf *buf, const char *format, ...) {
    va_list args;
    va_start(args, format);
    weir_buf_vprintf(buf, format, args);
    va_end(args);
}

void weir_buf_append(weir_buf *buf, const char *text, size_t len) {
    if (buf->len + len + 1 > buf->cap) {
        size_t cap = buf->cap ? buf->cap : 64;
        while (cap < buf->len + len + 1) cap *= 2;
        char *grown = (char *)realloc(buf->data, cap);
        if (!grown) abort();
        buf->data = grown;
        buf->cap = cap;
    }
    memcpy(buf->data + buf->len, text, len);
    buf->len += len;
    buf->data[buf->len] = '\0';
}

char *weir_buf_take(weir_buf *buf) {
    char *data = buf->data;
    if (!data) {
        data = (char *)malloc(1);
        if (!data) abort();
        data[0] = '\0';
    }
    buf->data = NULL;
    buf->len = buf->cap = 0;
    return data;
}

char *weir_json_printf(const char *format, ...) {
    weir_buf out = {0};
    va_list args;
    va_start(args, format);
    weir_buf_vprintf(&out, format, args);
    va_end(args);
    return weir_buf_take(&out);
}

char *weir_json_quote(const char *text) {
    weir_buf out = {0};
    weir_buf_append(&out, "\"", 1);
    for (const unsigned char *at = (const unsigned char *)text; at && *at; at++) {
        switch (*at) {
        case '"': weir_buf_append(&out, "\\\"", 2); break;
        case '\\': weir_buf_append(&out, "\\\\", 2); break;
        case '\n': weir_buf_append(&out, "\\n", 2); break;
        case '\r': weir_buf_append(&out, "\\r", 2); break;
        case '\t': weir_buf_append(&out, "\\t", 2); break;
        default:
            if (*at < 0x20) weir_buf_printf(&out, "\\u%04x", *at);
            else weir_buf_append(&out, (const char *)at, 1);
        }
    }
    weir_buf_append(&out, "\"", 1);
    return weir_buf_take(&out);
}
