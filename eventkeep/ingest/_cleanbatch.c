/* The clean-batch path of event validation, compiled.
 *
 * One pass over an NDJSON body (or a JSON array of events) that either accepts every event
 * and builds the stored columns directly as Arrow buffers, or gives up (returns None) and
 * leaves the batch to the Python validator, which defines the rules
 * (eventkeep/ingest/validate.py). It accepts only what the Python path accepts as a clean
 * batch, and produces the same bytes: a property test holds the two together
 * (tests/ingest/test_fastpath.py). Anything unusual (an escape that decodes to a lone
 * surrogate, a duplicate key, a number msgspec would not hold, a missing $insert_id, a
 * value past a limit) means "not clean": correctness never depends on this file being
 * complete, only on it being right about what it accepts.
 *
 * The re-encoding follows msgspec's compact JSON: strings escape '"', '\\' and control
 * characters only (\b \t \n \f \r, else \u00xx), floats print their shortest round-trip
 * digits, in fixed notation for decimal exponents -5 to 15 and otherwise as 1.5e300.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#define MAX_EVENTS 2000
#define MAX_STRING_CHARS 255
#define MAX_ITEMS 254 /* fewer than 255 properties, keys and elements */
#define MAX_EVENT_BYTES (1024 * 1024)
#define MIN_TIME_MS 31536000000LL
#define MS_THRESHOLD 10000000000.0
#define TRACK_MAX_AGE_MS (5LL * 24 * 3600 * 1000)
#define EXACT_INT_LIMIT 9007199254740992.0 /* 2**53 */

enum { OK = 0, NOT_CLEAN = -1, FAILED = -2 }; /* FAILED: a Python exception is set */

/* ---- growable byte buffers ---- */

typedef struct {
    char *data;
    Py_ssize_t len, cap;
} Buf;

static int buf_grow(Buf *b, Py_ssize_t extra)
{
    Py_ssize_t need = b->len + extra;
    if (need <= b->cap)
        return OK;
    Py_ssize_t cap = b->cap ? b->cap : 4096;
    while (cap < need)
        cap *= 2;
    char *data = PyMem_Realloc(b->data, (size_t)cap);
    if (data == NULL) {
        PyErr_NoMemory();
        return FAILED;
    }
    b->data = data;
    b->cap = cap;
    return OK;
}

static inline int buf_put(Buf *b, const void *src, Py_ssize_t n)
{
    if (b->len + n > b->cap && buf_grow(b, n) != OK)
        return FAILED;
    memcpy(b->data + b->len, src, (size_t)n);
    b->len += n;
    return OK;
}

/* buf_put for a string's run of plain text, read from a body that ends at `src_end`: a
 * short run (most are) is moved as one 16-byte load and store, not a call to memcpy,
 * which cost more than the copy for a handful of bytes. */
static inline int buf_put_run(Buf *b, const unsigned char *src, Py_ssize_t n, const unsigned char *src_end)
{
#if defined(__SSE2__)
    if (n <= 16 && src_end - src >= 16) {
        if (b->len + 16 > b->cap && buf_grow(b, 16) != OK)
            return FAILED;
        _mm_storeu_si128((__m128i *)(b->data + b->len), _mm_loadu_si128((const __m128i *)src));
        b->len += n;
        return OK;
    }
#endif
    (void)src_end;
    return buf_put(b, src, n);
}

static inline int buf_byte(Buf *b, char c)
{
    if (b->len + 1 > b->cap && buf_grow(b, 1) != OK)
        return FAILED;
    b->data[b->len++] = c;
    return OK;
}

static void buf_free(Buf *b)
{
    PyMem_Free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

/* An Arrow string column: int32 offsets and the bytes. */
typedef struct {
    Buf offsets, data;
} Column;

static int column_start(Column *c, Py_ssize_t rows)
{
    if (buf_grow(&c->offsets, (rows + 1) * 4) != OK)
        return FAILED;
    int32_t zero = 0;
    return buf_put(&c->offsets, &zero, 4);
}

static int column_end_row(Column *c)
{
    int32_t end = (int32_t)c->data.len;
    return buf_put(&c->offsets, &end, 4);
}

static int column_add(Column *c, const char *src, Py_ssize_t n)
{
    if (buf_put(&c->data, src, n) != OK)
        return FAILED;
    return column_end_row(c);
}

static void column_free(Column *c)
{
    buf_free(&c->offsets);
    buf_free(&c->data);
}

/* ---- scanning ---- */

typedef struct {
    const unsigned char *p, *end;
    int newline_ok; /* NDJSON: an event must not span lines */
} Scan;

static inline void skip_ws(Scan *s)
{
    while (s->p < s->end) {
        unsigned char c = *s->p;
        if (c == ' ' || c == '\t' || c == '\r' || (c == '\n' && s->newline_ok))
            s->p++;
        else
            break;
    }
}

static int expect(Scan *s, unsigned char c)
{
    skip_ws(s);
    if (s->p < s->end && *s->p == c) {
        s->p++;
        return OK;
    }
    return NOT_CLEAN;
}

/* After a member or an element: 1 if another follows (its ',' read), 0 if `close` ended
 * the container (read), NOT_CLEAN for anything else. */
static inline int after_item(Scan *s, unsigned char close)
{
    skip_ws(s);
    if (s->p < s->end) {
        unsigned char c = *s->p++;
        if (c == ',')
            return 1;
        if (c == close)
            return 0;
    }
    return NOT_CLEAN;
}

static const char HEX[] = "0123456789abcdef";

/* Append code point `cp` (already known valid) to `enc`, escaped as msgspec writes it. */
static int encode_ascii_char(Buf *enc, unsigned char c)
{
    if (c == '"')
        return buf_put(enc, "\\\"", 2);
    if (c == '\\')
        return buf_put(enc, "\\\\", 2);
    if (c >= 0x20)
        return buf_byte(enc, (char)c);
    switch (c) {
    case '\b': return buf_put(enc, "\\b", 2);
    case '\t': return buf_put(enc, "\\t", 2);
    case '\n': return buf_put(enc, "\\n", 2);
    case '\f': return buf_put(enc, "\\f", 2);
    case '\r': return buf_put(enc, "\\r", 2);
    default: {
        char esc[6] = {'\\', 'u', '0', '0', HEX[c >> 4], HEX[c & 15]};
        return buf_put(enc, esc, 6);
    }
    }
}

static int put_utf8(Buf *dec, Buf *enc, uint32_t cp)
{
    char out[4];
    Py_ssize_t n;
    if (cp < 0x80) {
        if (dec && buf_byte(dec, (char)cp) != OK)
            return FAILED;
        return enc ? encode_ascii_char(enc, (unsigned char)cp) : OK;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        n = 2;
    } else if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        n = 3;
    } else {
        out[0] = (char)(0xF0 | (cp >> 18));
        out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[3] = (char)(0x80 | (cp & 0x3F));
        n = 4;
    }
    if (dec && buf_put(dec, out, n) != OK)
        return FAILED;
    if (enc && buf_put(enc, out, n) != OK)
        return FAILED;
    return OK;
}

/* Length of a valid UTF-8 sequence starting at p (strict: no overlongs, no surrogates,
 * nothing above U+10FFFF), or 0. */
static inline int utf8_length(const unsigned char *p, const unsigned char *end)
{
    unsigned char c = p[0];
    if (c >= 0xC2 && c <= 0xDF) {
        if (end - p >= 2 && (p[1] & 0xC0) == 0x80)
            return 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        if (end - p >= 3 && (p[1] & 0xC0) == 0x80 && (p[2] & 0xC0) == 0x80) {
            if (c == 0xE0 && p[1] < 0xA0)
                return 0;
            if (c == 0xED && p[1] >= 0xA0)
                return 0;
            return 3;
        }
    } else if (c >= 0xF0 && c <= 0xF4) {
        if (end - p >= 4 && (p[1] & 0xC0) == 0x80 && (p[2] & 0xC0) == 0x80 && (p[3] & 0xC0) == 0x80) {
            if (c == 0xF0 && p[1] < 0x90)
                return 0;
            if (c == 0xF4 && p[1] >= 0x90)
                return 0;
            return 4;
        }
    }
    return 0;
}

static int hex4(const unsigned char *p, uint32_t *out)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= (uint32_t)(c - '0');
        else if (c >= 'a' && c <= 'f')
            v |= (uint32_t)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            v |= (uint32_t)(c - 'A' + 10);
        else
            return NOT_CLEAN;
    }
    *out = v;
    return OK;
}

/* The end of the run of plain characters from p (printable ASCII but '"' and '\\'), which
 * a string's text and its encoding share: sixteen bytes at a time where SSE2 is, as it is
 * on every x86-64. Most strings of an event are plain, so this loop is most of a scan. */
static inline const unsigned char *plain_run(const unsigned char *p, const unsigned char *end)
{
#if defined(__SSE2__)
    const __m128i quote = _mm_set1_epi8('"'), backslash = _mm_set1_epi8('\\'), space = _mm_set1_epi8(0x20);
    while (end - p >= 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)p);
        /* as signed bytes, both controls (below 0x20) and non-ASCII (0x80 up) are < 0x20 */
        __m128i stop = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, backslash)),
                                    _mm_cmplt_epi8(v, space));
        unsigned mask = (unsigned)_mm_movemask_epi8(stop);
        if (mask)
            return p + __builtin_ctz(mask);
        p += 16;
    }
#endif
    while (p < end && *p >= 0x20 && *p < 0x80 && *p != '"' && *p != '\\')
        p++;
    return p;
}

/* A JSON string at s->p (which must be '"'): its decoded UTF-8 into `dec`, its msgspec
 * encoding (with quotes) into `enc` (either may be NULL), its length in characters. */
static int scan_string(Scan *s, Buf *dec, Buf *enc, Py_ssize_t *chars)
{
    if (s->p >= s->end || *s->p != '"')
        return NOT_CLEAN;
    s->p++;
    if (enc && buf_byte(enc, '"') != OK)
        return FAILED;
    Py_ssize_t count = 0;
    const unsigned char *p = s->p, *end = s->end;
    for (;;) {
        const unsigned char *run = p;
        p = plain_run(p, end);
        if (p > run) {
            Py_ssize_t n = p - run;
            count += n;
            if (dec && buf_put_run(dec, run, n, end) != OK)
                return FAILED;
            if (enc && buf_put_run(enc, run, n, end) != OK)
                return FAILED;
        }
        if (p >= end)
            return NOT_CLEAN;
        unsigned char c = *p;
        if (c == '"') {
            p++;
            break;
        }
        if (c < 0x20)
            return NOT_CLEAN; /* raw control characters are not JSON */
        if (c >= 0x80) {
            int n = utf8_length(p, end);
            if (n == 0)
                return NOT_CLEAN;
            if (dec && buf_put(dec, p, n) != OK)
                return FAILED;
            if (enc && buf_put(enc, p, n) != OK)
                return FAILED;
            p += n;
            count++;
            continue;
        }
        /* an escape */
        if (end - p < 2)
            return NOT_CLEAN;
        uint32_t cp;
        switch (p[1]) {
        case '"': cp = '"'; p += 2; break;
        case '\\': cp = '\\'; p += 2; break;
        case '/': cp = '/'; p += 2; break;
        case 'b': cp = '\b'; p += 2; break;
        case 'f': cp = '\f'; p += 2; break;
        case 'n': cp = '\n'; p += 2; break;
        case 'r': cp = '\r'; p += 2; break;
        case 't': cp = '\t'; p += 2; break;
        case 'u':
            if (end - p < 6 || hex4(p + 2, &cp) != OK)
                return NOT_CLEAN;
            p += 6;
            if (cp >= 0xDC00 && cp <= 0xDFFF)
                return NOT_CLEAN; /* a lone low surrogate */
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                uint32_t low;
                if (end - p < 6 || p[0] != '\\' || p[1] != 'u' || hex4(p + 2, &low) != OK)
                    return NOT_CLEAN;
                if (low < 0xDC00 || low > 0xDFFF)
                    return NOT_CLEAN;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
                p += 6;
            }
            break;
        default:
            return NOT_CLEAN;
        }
        int r = put_utf8(dec, enc, cp);
        if (r != OK)
            return r;
        count++;
    }
    s->p = p;
    if (enc && buf_byte(enc, '"') != OK)
        return FAILED;
    *chars = count;
    return OK;
}

/* The msgspec form of a finite double: repr's digits, fixed notation for decimal
 * exponents -5..15, else "1.5e300" / "2.5e-7". */
static int encode_double(Buf *enc, double value)
{
    char *text = PyOS_double_to_string(value, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
    if (text == NULL)
        return FAILED;
    int r = OK;
    char *e = strchr(text, 'e');
    if (e == NULL) {
        r = buf_put(enc, text, (Py_ssize_t)strlen(text));
    } else {
        long exponent = strtol(e + 1, NULL, 10);
        if (exponent == -5) {
            /* repr writes 1.25e-05; msgspec writes 0.0000125 */
            char *m = text;
            if (*m == '-') {
                r = buf_byte(enc, '-');
                m++;
            }
            if (r == OK)
                r = buf_put(enc, "0.0000", 6);
            for (; r == OK && m < e; m++)
                if (*m != '.')
                    r = buf_byte(enc, *m);
        } else {
            char digits[24];
            int n = snprintf(digits, sizeof digits, "e%ld", exponent);
            r = buf_put(enc, text, e - text);
            if (r == OK)
                r = buf_put(enc, digits, n);
        }
    }
    PyMem_Free(text);
    return r;
}

typedef struct {
    int is_float;
    int64_t integer;
    double real;
} Number;

/* Whether a fraction's text (-?D+.D+, no exponent) is already its msgspec encoding: at
 * most 15 significant digits (which a double holds exactly: the shortest digits that
 * round-trip are these), no trailing zero but in "1.0", and a decimal exponent from -5 to
 * 15 (fixed notation). Most prices and ratios are; they are copied, not re-formatted. */
static int canonical_fixed(const unsigned char *p, const unsigned char *end)
{
    if (*p == '-')
        p++;
    const unsigned char *dot = memchr(p, '.', (size_t)(end - p));
    if (dot == NULL || memchr(dot, 'e', (size_t)(end - dot)) || memchr(dot, 'E', (size_t)(end - dot)))
        return 0;
    const unsigned char *frac = dot + 1;
    Py_ssize_t frac_len = end - frac;
    if (frac_len > 1 && end[-1] == '0')
        return 0;
    if (frac_len == 1 && frac[0] == '0')
        return dot - p <= 15; /* 1.0, 0.0 */
    Py_ssize_t significant;
    if (dot - p == 1 && p[0] == '0') {
        const unsigned char *q = frac;
        while (q < end && *q == '0')
            q++;
        if (q - frac > 4)
            return 0; /* 0.000001 is written 1e-6 */
        significant = end - q;
    } else {
        significant = (dot - p) + frac_len;
    }
    return significant <= 15;
}

/* A JSON number (strict grammar), re-encoded into `enc` (may be NULL); `want_value`: the
 * caller needs `out` filled even for a float. */
static int scan_number(Scan *s, Buf *enc, Number *out, int want_value)
{
    const unsigned char *start = s->p, *p = s->p, *end = s->end;
    int negative = 0, is_float = 0;
    if (p < end && *p == '-') {
        negative = 1;
        p++;
    }
    if (p >= end)
        return NOT_CLEAN;
    const unsigned char *digits = p;
    if (*p == '0') {
        p++;
    } else if (*p >= '1' && *p <= '9') {
        while (p < end && *p >= '0' && *p <= '9')
            p++;
    } else {
        return NOT_CLEAN;
    }
    Py_ssize_t int_digits = p - digits;
    if (p < end && *p == '.') {
        is_float = 1;
        p++;
        const unsigned char *frac = p;
        while (p < end && *p >= '0' && *p <= '9')
            p++;
        if (p == frac)
            return NOT_CLEAN;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        is_float = 1;
        p++;
        if (p < end && (*p == '+' || *p == '-'))
            p++;
        const unsigned char *exp = p;
        while (p < end && *p >= '0' && *p <= '9')
            p++;
        if (p == exp)
            return NOT_CLEAN;
    }
    s->p = p;
    out->is_float = is_float;
    Py_ssize_t len = p - start;
    if (!is_float) {
        if (int_digits > 15)
            return NOT_CLEAN; /* keep integers exact as doubles; longer ones go the slow way */
        int64_t v = 0;
        for (const unsigned char *d = digits; d < digits + int_digits; d++)
            v = v * 10 + (*d - '0');
        out->integer = negative ? -v : v;
        out->real = (double)out->integer;
        if (enc == NULL)
            return OK;
        /* JSON allows no leading zeros, so the text is the encoding, but for -0 */
        return v == 0 ? buf_byte(enc, '0') : buf_put(enc, start, len);
    }
    if (enc != NULL && !want_value && canonical_fixed(start, p))
        return buf_put(enc, start, len);
    char text[64];
    if (len >= (Py_ssize_t)sizeof text)
        return NOT_CLEAN;
    memcpy(text, start, (size_t)len);
    text[len] = '\0';
    char *stop;
    double value = PyOS_string_to_double(text, &stop, NULL);
    if (value == -1.0 && PyErr_Occurred()) {
        PyErr_Clear();
        return NOT_CLEAN;
    }
    if (stop != text + len || !isfinite(value))
        return NOT_CLEAN;
    out->real = value;
    return enc ? encode_double(enc, value) : OK;
}

/* Decoded keys of one object, to find duplicates (the Python path keeps the last value at
 * the first key's place; this path does not, so it gives up). */
typedef struct {
    Buf text;
    Py_ssize_t starts[MAX_ITEMS + 1], lens[MAX_ITEMS + 1];
    int count;
    uint64_t seen;
} Keys;

static int keys_add(Keys *k, const char *key, Py_ssize_t len)
{
    /* A 64-bit filter of what the keys look like: most keys are compared with none. */
    unsigned bit = (unsigned)(len * 7 + (len ? (unsigned char)key[0] * 3 + (unsigned char)key[len - 1] : 0)) & 63;
    if (k->count == 0)
        k->seen = 0;
    if (k->seen & (UINT64_C(1) << bit)) {
        for (int i = 0; i < k->count; i++)
            if (k->lens[i] == len && memcmp(k->text.data + k->starts[i], key, (size_t)len) == 0)
                return NOT_CLEAN;
    }
    k->seen |= UINT64_C(1) << bit;
    if (k->count > MAX_ITEMS)
        return NOT_CLEAN;
    Py_ssize_t start = k->text.len;
    if (buf_put(&k->text, key, len) != OK)
        return FAILED;
    k->starts[k->count] = start;
    k->lens[k->count] = len;
    k->count++;
    return OK;
}

/* An object's key and its ':': decoded into `key`, encoded into `enc` (may be NULL), at
 * most 255 characters and not seen before in the object. */
static int scan_key(Scan *s, Buf *key, Keys *keys, Buf *enc)
{
    Py_ssize_t chars;
    skip_ws(s);
    key->len = 0;
    int r = scan_string(s, key, enc, &chars);
    if (r != OK)
        return r;
    if (chars > MAX_STRING_CHARS)
        return NOT_CLEAN;
    r = keys_add(keys, key->data, key->len);
    if (r != OK)
        return r;
    return expect(s, ':');
}

typedef struct {
    Buf scratch;  /* one decoded string */
    Keys keys[3]; /* per nesting level: properties, and two levels of containers */
} Work;

/* A value below the properties object, within the decoder's limits: depth 0 is a
 * property's value (scalar, or a container of depth-1 values), depth 1 a container's
 * element (scalar, or a container of scalars), depth 2 a scalar. */
static int scan_value(Scan *s, Work *w, Buf *enc, int depth)
{
    skip_ws(s);
    if (s->p >= s->end)
        return NOT_CLEAN;
    unsigned char c = *s->p;
    int r;
    if (c == '"') {
        Py_ssize_t chars;
        r = scan_string(s, NULL, enc, &chars);
        if (r != OK)
            return r;
        return chars <= MAX_STRING_CHARS ? OK : NOT_CLEAN;
    }
    if (c == '-' || (c >= '0' && c <= '9')) {
        Number number;
        return scan_number(s, enc, &number, 0);
    }
    if (c == 't' || c == 'f' || c == 'n') {
        const char *word = c == 't' ? "true" : c == 'f' ? "false" : "null";
        Py_ssize_t n = c == 'f' ? 5 : 4;
        if (s->end - s->p < n || memcmp(s->p, word, (size_t)n) != 0)
            return NOT_CLEAN;
        s->p += n;
        return enc ? buf_put(enc, word, n) : OK;
    }
    if (depth >= 2 || (c != '[' && c != '{'))
        return NOT_CLEAN;
    s->p++;
    if (enc && buf_byte(enc, (char)c) != OK)
        return FAILED;
    unsigned char close = c == '[' ? ']' : '}';
    skip_ws(s);
    if (s->p < s->end && *s->p == close) {
        s->p++;
        return enc ? buf_byte(enc, (char)close) : OK;
    }
    Keys *keys = &w->keys[depth + 1];
    keys->count = 0;
    keys->text.len = 0;
    int items = 0;
    for (;;) {
        if (++items > MAX_ITEMS)
            return NOT_CLEAN;
        if (close == '}') {
            r = scan_key(s, &w->scratch, keys, enc);
            if (r != OK)
                return r;
            if (enc && buf_byte(enc, ':') != OK)
                return FAILED;
        }
        r = scan_value(s, w, enc, depth + 1);
        if (r != OK)
            return r;
        r = after_item(s, close);
        if (r == NOT_CLEAN)
            return r;
        if (enc && buf_byte(enc, r ? ',' : (char)close) != OK)
            return FAILED;
        if (r == 0)
            return OK;
    }
}

/* ---- one event ---- */

static const char *DISALLOWED[] = {
    "00000000-0000-0000-0000-000000000000", "anon", "anonymous", "nil", "none", "null",
    "n/a", "na", "undefined", "unknown", "<nil>", "0", "-1", "true", "false", "[]", "{}",
    NULL,
};

static inline int is_py_space(unsigned char c)
{
    /* str.isspace() / str.strip() over ASCII */
    return c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1c && c <= 0x1f);
}

/* Bit n set: some placeholder is n bytes long (set at import; all are under 64). */
static uint64_t disallowed_lengths;

/* Whether an ASCII id, lower-cased, is a placeholder Mixpanel refuses. */
static int disallowed(const char *text, Py_ssize_t len)
{
    if (len > 36 || !(disallowed_lengths & (UINT64_C(1) << len)))
        return 0;
    char lower[37];
    for (Py_ssize_t i = 0; i < len; i++) {
        char c = text[i];
        lower[i] = (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c;
    }
    for (const char **d = DISALLOWED; *d; d++)
        if ((Py_ssize_t)strlen(*d) == len && memcmp(*d, lower, (size_t)len) == 0)
            return 1;
    return 0;
}

/* str.isspace() of one code point. */
static int is_space(uint32_t cp)
{
    if (cp < 0x80)
        return is_py_space((unsigned char)cp);
    return cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 ||
           cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

/* The code point at text[*at] (valid UTF-8), moving *at past it. */
static uint32_t next_code_point(const char *text, Py_ssize_t *at)
{
    const unsigned char *p = (const unsigned char *)text + *at;
    if (p[0] < 0x80) {
        *at += 1;
        return p[0];
    }
    if (p[0] < 0xE0) {
        *at += 2;
        return ((uint32_t)(p[0] & 0x1F) << 6) | (p[1] & 0x3F);
    }
    if (p[0] < 0xF0) {
        *at += 3;
        return ((uint32_t)(p[0] & 0x0F) << 12) | ((uint32_t)(p[1] & 0x3F) << 6) | (p[2] & 0x3F);
    }
    *at += 4;
    return ((uint32_t)(p[0] & 0x07) << 18) | ((uint32_t)(p[1] & 0x3F) << 12) | ((uint32_t)(p[2] & 0x3F) << 6) |
           (p[3] & 0x3F);
}

/* Whether text is all white space (str.isspace() of a non-empty string, or empty). */
static int blank(const char *text, Py_ssize_t len)
{
    for (Py_ssize_t at = 0; at < len;)
        if (!is_space(next_code_point(text, &at)))
            return 0;
    return 1;
}

/* Whether a distinct_id of at most 255 characters is a placeholder: `id.strip().lower()`
 * in DISALLOWED. Of all non-ASCII characters only the Kelvin sign lower-cases to ASCII. */
static int placeholder_id(const char *text, Py_ssize_t len)
{
    uint32_t points[MAX_STRING_CHARS];
    Py_ssize_t count = 0, first = 0;
    for (Py_ssize_t at = 0; at < len && count < MAX_STRING_CHARS;)
        points[count++] = next_code_point(text, &at);
    while (first < count && is_space(points[first]))
        first++;
    while (count > first && is_space(points[count - 1]))
        count--;
    if (count - first > 36)
        return 0;
    char ascii[36];
    for (Py_ssize_t i = first; i < count; i++) {
        uint32_t cp = points[i] == 0x212A ? 'k' : points[i];
        if (cp >= 0x80)
            return 0;
        ascii[i - first] = (char)cp;
    }
    return disallowed(ascii, count - first);
}

typedef struct {
    const char *reserved[6]; /* keys the server adds: an event that has one goes the slow way */
    Py_ssize_t reserved_len[6];
    int reserved_count;
} Rules;

typedef struct {
    Column events, distinct_ids, insert_ids;
    Column properties; /* the stored properties: each core, the tail, the size */
    Buf core;          /* the current event's properties, re-encoded without the taken keys */
    Buf tokens;        /* the current token, decoded */
    const char *tail;  /* the properties the server adds, and '"$mp_event_size":' */
    Py_ssize_t tail_len;
    int columns;       /* 0: only the verdict, no stored properties */
    Number times[MAX_EVENTS];
    int32_t sizes[MAX_EVENTS];
    PyObject *token_list; /* None until an event has a token */
    Py_ssize_t count;
} Out;

/* Whether a decoded key is the literal `name` (its length known when compiled). */
#define match_key(key, name) \
    ((key)->len == (Py_ssize_t)sizeof(name) - 1 && memcmp((key)->data, name, sizeof(name) - 1) == 0)

static int scan_properties(Scan *s, Work *w, Out *o, const Rules *rules, Py_ssize_t row)
{
    Buf *core = &o->core;
    Keys *keys = &w->keys[0];
    keys->count = 0;
    keys->text.len = 0;
    core->len = 0;
    int r = buf_byte(core, '{');
    if (r != OK)
        return r;
    if (expect(s, '{') != OK)
        return NOT_CLEAN;
    int have_time = 0, have_id = 0, have_insert = 0, have_token = 0, pairs = 0;
    Py_ssize_t time_len = 0, id_len = 0, token_len = 0;
    skip_ws(s);
    if (s->p < s->end && *s->p == '}') {
        return NOT_CLEAN; /* no time, no distinct_id */
    }
    for (;;) {
        Py_ssize_t chars;
        Py_ssize_t key_start = core->len + (pairs ? 1 : 0);
        if (pairs && buf_byte(core, ',') != OK)
            return FAILED;
        r = scan_key(s, &w->scratch, keys, core);
        if (r != OK)
            return r;
        skip_ws(s);
        const Buf *key = &w->scratch;
        if (match_key(key, "time")) {
            core->len = key_start - (pairs ? 1 : 0);
            Py_ssize_t before = core->len;
            if (s->p >= s->end || !(*s->p == '-' || (*s->p >= '0' && *s->p <= '9')))
                return NOT_CLEAN;
            r = scan_number(s, core, &o->times[row], 1);
            if (r != OK)
                return r;
            if (!o->times[row].is_float && fabs(o->times[row].real) >= EXACT_INT_LIMIT)
                return NOT_CLEAN;
            time_len = core->len - before;
            core->len = before;
            have_time = 1;
        } else if (match_key(key, "distinct_id")) {
            core->len = key_start - (pairs ? 1 : 0);
            Py_ssize_t before = core->len, start = o->distinct_ids.data.len;
            if (s->p >= s->end || *s->p != '"')
                return NOT_CLEAN;
            r = scan_string(s, &o->distinct_ids.data, core, &chars);
            if (r != OK)
                return r;
            Py_ssize_t len = o->distinct_ids.data.len - start;
            const char *text = o->distinct_ids.data.data + start;
            if (chars > MAX_STRING_CHARS)
                return NOT_CLEAN;
            if (placeholder_id(text, len))
                return NOT_CLEAN;
            r = column_end_row(&o->distinct_ids);
            if (r != OK)
                return r;
            id_len = core->len - before;
            core->len = before;
            have_id = 1;
        } else if (match_key(key, "token")) {
            core->len = key_start - (pairs ? 1 : 0);
            Py_ssize_t before = core->len;
            const unsigned char *value = s->p;
            r = scan_value(s, w, core, 0);
            if (r != OK)
                return r;
            token_len = core->len - before;
            core->len = before;
            have_token = 1;
            if (*value == '"') {
                Scan again = {value, s->end, s->newline_ok};
                o->tokens.len = 0;
                r = scan_string(&again, &o->tokens, NULL, &chars);
                if (r != OK)
                    return r;
                if (o->token_list == NULL) {
                    o->token_list = PyList_New(0);
                    if (o->token_list == NULL)
                        return FAILED;
                }
                while (PyList_GET_SIZE(o->token_list) < row)
                    if (PyList_Append(o->token_list, Py_None) < 0)
                        return FAILED;
                PyObject *token = PyUnicode_DecodeUTF8(o->tokens.data, o->tokens.len, NULL);
                if (token == NULL)
                    return FAILED;
                r = PyList_Append(o->token_list, token);
                Py_DECREF(token);
                if (r < 0)
                    return FAILED;
            }
        } else {
            if (match_key(key, "$ignore"))
                return NOT_CLEAN;
            for (int i = 0; i < rules->reserved_count; i++)
                if (key->len == rules->reserved_len[i] &&
                    memcmp(key->data, rules->reserved[i], (size_t)key->len) == 0)
                    return NOT_CLEAN;
            if (buf_byte(core, ':') != OK)
                return FAILED;
            if (match_key(key, "$insert_id")) {
                if (s->p >= s->end || *s->p != '"')
                    return NOT_CLEAN; /* null or missing: generated by the Python path */
                Py_ssize_t start = o->insert_ids.data.len;
                r = scan_string(s, &o->insert_ids.data, core, &chars);
                if (r != OK)
                    return r;
                Py_ssize_t len = o->insert_ids.data.len - start;
                const char *text = o->insert_ids.data.data + start;
                if (len == 0 || len > 36)
                    return NOT_CLEAN;
                for (Py_ssize_t i = 0; i < len; i++) {
                    char c = text[i];
                    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-'))
                        return NOT_CLEAN;
                }
                if (disallowed(text, len))
                    return NOT_CLEAN;
                r = column_end_row(&o->insert_ids);
                if (r != OK)
                    return r;
                have_insert = 1;
            } else {
                r = scan_value(s, w, core, 0);
                if (r != OK)
                    return r;
            }
            pairs++;
        }
        r = after_item(s, '}');
        if (r == NOT_CLEAN)
            return r;
        if (r == 0)
            break;
    }
    if (!have_time || !have_id || !have_insert)
        return NOT_CLEAN;
    if (keys->count > MAX_ITEMS)
        return NOT_CLEAN;
    if (buf_byte(core, '}') != OK)
        return FAILED;
    /* {"event":NAME,"properties":{...}}: the event's size as compact JSON, with the
     * name's length added by the caller. */
    Py_ssize_t size = 24 + core->len + 8 + time_len + 15 + id_len + (have_token ? 9 + token_len : 0);
    o->sizes[row] = (int32_t)(size > MAX_EVENT_BYTES ? MAX_EVENT_BYTES : size);
    return OK;
}

/* The event's stored properties, now that its size is known: its core without the
 * closing brace, the tail, the size, '}'. */
static int store_properties(Out *o, int32_t size)
{
    char digits[12];
    int n_digits = 0;
    for (int32_t v = size; v > 0 || n_digits == 0; v /= 10)
        digits[n_digits++] = (char)('0' + v % 10);
    Column *c = &o->properties;
    if (buf_grow(&c->data, o->core.len - 1 + o->tail_len + n_digits + 1) != OK)
        return FAILED;
    char *out = c->data.data + c->data.len;
    memcpy(out, o->core.data, (size_t)(o->core.len - 1));
    out += o->core.len - 1;
    memcpy(out, o->tail, (size_t)o->tail_len);
    out += o->tail_len;
    while (n_digits)
        *out++ = digits[--n_digits];
    *out++ = '}';
    c->data.len = out - c->data.data;
    return column_end_row(c);
}

static int scan_event(Scan *s, Work *w, Out *o, const Rules *rules)
{
    Py_ssize_t row = o->count;
    if (row >= MAX_EVENTS)
        return NOT_CLEAN;
    if (expect(s, '{') != OK)
        return NOT_CLEAN;
    int have_event = 0, have_properties = 0, r;
    Py_ssize_t name_len = 0;
    for (;;) {
        skip_ws(s);
        Py_ssize_t chars;
        w->scratch.len = 0;
        r = scan_string(s, &w->scratch, NULL, &chars);
        if (r != OK)
            return r;
        if (expect(s, ':') != OK)
            return NOT_CLEAN;
        skip_ws(s);
        if (match_key(&w->scratch, "event") && !have_event) {
            if (s->p >= s->end || *s->p != '"')
                return NOT_CLEAN;
            Py_ssize_t start = o->events.data.len;
            w->scratch.len = 0; /* the name's encoding, only measured */
            r = scan_string(s, &o->events.data, &w->scratch, &chars);
            name_len = w->scratch.len;
            if (r != OK)
                return r;
            const char *text = o->events.data.data + start;
            Py_ssize_t len = o->events.data.len - start;
            if (chars == 0 || chars > MAX_STRING_CHARS)
                return NOT_CLEAN;
            if (blank(text, len))
                return NOT_CLEAN;
            r = column_end_row(&o->events);
            if (r != OK)
                return r;
            have_event = 1;
        } else if (match_key(&w->scratch, "properties") && !have_properties) {
            r = scan_properties(s, w, o, rules, row);
            if (r != OK)
                return r;
            have_properties = 1;
        } else {
            return NOT_CLEAN; /* another field, or one given twice */
        }
        r = after_item(s, '}');
        if (r == NOT_CLEAN)
            return r;
        if (r == 0)
            break;
    }
    if (!have_event || !have_properties)
        return NOT_CLEAN;
    Py_ssize_t size = (Py_ssize_t)o->sizes[row] + name_len;
    if (size >= MAX_EVENT_BYTES)
        return NOT_CLEAN;
    o->sizes[row] = (int32_t)size;
    o->count++;
    return o->columns ? store_properties(o, (int32_t)size) : OK;
}

static int scan_body(Scan *s, Work *w, Out *o, const Rules *rules, int array)
{
    int r;
    if (array) {
        s->newline_ok = 1;
        if (expect(s, '[') != OK)
            return NOT_CLEAN;
        skip_ws(s);
        if (s->p < s->end && *s->p == ']')
            return NOT_CLEAN; /* empty: nothing to gain */
        for (;;) {
            r = scan_event(s, w, o, rules);
            if (r != OK)
                return r;
            skip_ws(s);
            if (s->p < s->end && *s->p == ',') {
                s->p++;
                continue;
            }
            if (expect(s, ']') != OK)
                return NOT_CLEAN;
            skip_ws(s);
            return s->p == s->end ? OK : NOT_CLEAN;
        }
    }
    for (;;) {
        s->newline_ok = 1;
        skip_ws(s);
        if (s->p >= s->end)
            return o->count ? OK : NOT_CLEAN;
        s->newline_ok = 0;
        r = scan_event(s, w, o, rules);
        if (r != OK)
            return r;
        skip_ws(s);
        if (s->p < s->end && *s->p != '\n')
            return NOT_CLEAN; /* more than one value on a line */
    }
}

/* ---- the module ---- */

static PyObject *bytes_of(Buf *b)
{
    return PyBytes_FromStringAndSize(b->data ? b->data : "", b->len);
}

PyDoc_STRVAR(check_doc,
"check(body, array, track, now_ms, tail, reserved, columns=True) -> tuple | int | None\n\n"
"Accept a whole batch of clean events and build its stored columns, or None.\n"
"With columns=False, only the number of events accepted (or None).");

static PyObject *check(PyObject *self, PyObject *args)
{
    Py_buffer body, tail;
    int array, track, columns = 1;
    long long now_ms;
    PyObject *reserved;
    if (!PyArg_ParseTuple(args, "y*ppLy*O!|p", &body, &array, &track, &now_ms, &tail, &PyTuple_Type, &reserved,
                          &columns))
        return NULL;
    PyObject *result = NULL;
    Rules rules = {0};
    Work *w = PyMem_Calloc(1, sizeof(Work));
    Out *o = PyMem_Calloc(1, sizeof(Out));
    Buf times = {0};
    if (w == NULL || o == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t n_reserved = PyTuple_GET_SIZE(reserved);
    for (Py_ssize_t i = 0; i < n_reserved && i < 6; i++) {
        PyObject *key = PyTuple_GET_ITEM(reserved, i);
        if (!PyBytes_Check(key)) {
            PyErr_SetString(PyExc_TypeError, "reserved keys must be bytes");
            goto done;
        }
        rules.reserved[i] = PyBytes_AS_STRING(key);
        rules.reserved_len[i] = PyBytes_GET_SIZE(key);
        rules.reserved_count++;
    }
    if (body.len > INT32_MAX / 4) { /* the columns' int32 offsets must hold the body and more */
        Py_INCREF(Py_None);
        result = Py_None;
        goto done;
    }
    Py_ssize_t guess = body.len / 200 + 1;
    if (guess > MAX_EVENTS)
        guess = MAX_EVENTS;
    if (column_start(&o->events, guess) != OK || column_start(&o->distinct_ids, guess) != OK ||
        column_start(&o->insert_ids, guess) != OK)
        goto done;
    o->columns = columns;
    o->tail = tail.buf;
    o->tail_len = tail.len;
    /* room for the usual batch at once: growing by doubling would copy it several times */
    if (columns && (column_start(&o->properties, guess) != OK ||
                    buf_grow(&o->properties.data, body.len + guess * (tail.len + 12)) != OK ||
                    buf_grow(&o->core, 4096) != OK))
        goto done;
    Scan s = {(const unsigned char *)body.buf, (const unsigned char *)body.buf + body.len, 1};
    int r = scan_body(&s, w, o, &rules, array);
    if (r == FAILED)
        goto done;
    if (r == NOT_CLEAN) {
        Py_INCREF(Py_None);
        result = Py_None;
        goto done;
    }
    Py_ssize_t n = o->count;

    /* The batch's time scale, from its oldest and newest event, as the Python path. */
    double low = o->times[0].real, high = o->times[0].real;
    for (Py_ssize_t i = 1; i < n; i++) {
        if (o->times[i].real < low)
            low = o->times[i].real;
        if (o->times[i].real > high)
            high = o->times[i].real;
    }
    int64_t scale;
    if (low > 0 && high <= MS_THRESHOLD)
        scale = 1000;
    else if (low > MS_THRESHOLD)
        scale = 1;
    else {
        Py_INCREF(Py_None);
        result = Py_None;
        goto done;
    }
    int64_t oldest = track ? now_ms - TRACK_MAX_AGE_MS : MIN_TIME_MS;
    if (oldest < MIN_TIME_MS)
        oldest = MIN_TIME_MS;
    if (buf_grow(&times, n * 8) != OK)
        goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        int64_t ms;
        if (o->times[i].is_float) {
            double scaled = nearbyint(o->times[i].real * (double)scale);
            if (!(scaled >= (double)oldest && scaled <= (double)now_ms)) {
                Py_INCREF(Py_None);
                result = Py_None;
                goto done;
            }
            ms = (int64_t)scaled;
        } else {
            ms = o->times[i].integer * scale;
        }
        if (ms < oldest || ms > now_ms) {
            Py_INCREF(Py_None);
            result = Py_None;
            goto done;
        }
        memcpy(times.data + i * 8, &ms, 8);
    }
    times.len = n * 8;
    if (!columns) { /* only the verdict: the import tool's check of what it sends as read */
        result = PyLong_FromSsize_t(n);
        goto done;
    }

    if (o->token_list != NULL)
        while (PyList_GET_SIZE(o->token_list) < n)
            if (PyList_Append(o->token_list, Py_None) < 0)
                goto done;
    result = Py_BuildValue(
        "nNNNNNNNNNO", n,
        bytes_of(&o->events.offsets), bytes_of(&o->events.data),
        bytes_of(&o->distinct_ids.offsets), bytes_of(&o->distinct_ids.data),
        bytes_of(&times),
        bytes_of(&o->insert_ids.offsets), bytes_of(&o->insert_ids.data),
        bytes_of(&o->properties.offsets), bytes_of(&o->properties.data),
        o->token_list ? o->token_list : Py_None);
done:
    if (o != NULL) {
        column_free(&o->events);
        column_free(&o->distinct_ids);
        column_free(&o->insert_ids);
        column_free(&o->properties);
        buf_free(&o->core);
        buf_free(&o->tokens);
        Py_XDECREF(o->token_list);
        PyMem_Free(o);
    }
    if (w != NULL) {
        buf_free(&w->scratch);
        for (int i = 0; i < 3; i++)
            buf_free(&w->keys[i].text);
        PyMem_Free(w);
    }
    buf_free(&times);
    PyBuffer_Release(&body);
    PyBuffer_Release(&tail);
    return result;
}

PyDoc_STRVAR(next_records_doc,
"next_records(data, start, wanted) -> (records, lines, end)\n\n"
"The whole lines of NDJSON `data` from offset `start` through its `wanted`-th record (a\n"
"line with more than ASCII white space), or through its last newline if it holds fewer:\n"
"the records and lines counted, and the offset just after the last newline counted.");

/* The import tool's NDJSON reader cuts its input into chunks of records with this, so that
 * a chunk is one slice of what was read rather than a list of lines split and joined. */
static PyObject *next_records(PyObject *self, PyObject *args)
{
    Py_buffer data;
    Py_ssize_t start, wanted;
    if (!PyArg_ParseTuple(args, "y*nn", &data, &start, &wanted))
        return NULL;
    if (start < 0 || start > data.len) {
        PyBuffer_Release(&data);
        PyErr_SetString(PyExc_ValueError, "start is outside the data");
        return NULL;
    }
    const char *base = data.buf, *p = base + start, *end = base + data.len;
    Py_ssize_t records = 0, lines = 0;
    while (records < wanted) {
        const char *newline = memchr(p, '\n', (size_t)(end - p));
        if (newline == NULL)
            break;
        lines++;
        const char *q = p;
        while (q < newline && (*q == ' ' || (*q >= '\t' && *q <= '\r')))
            q++;
        if (q < newline)
            records++;
        p = newline + 1;
    }
    PyBuffer_Release(&data);
    return Py_BuildValue("nnn", records, lines, (Py_ssize_t)(p - base));
}

PyDoc_STRVAR(encode_float_doc, "encode_float(value) -> bytes\n\nA float as msgspec encodes it.");

static PyObject *encode_float(PyObject *self, PyObject *arg)
{
    double value = PyFloat_AsDouble(arg);
    if (value == -1.0 && PyErr_Occurred())
        return NULL;
    if (!isfinite(value)) {
        PyErr_SetString(PyExc_ValueError, "not a finite float");
        return NULL;
    }
    Buf out = {0};
    PyObject *result = NULL;
    if (encode_double(&out, value) == OK)
        result = bytes_of(&out);
    buf_free(&out);
    return result;
}

static PyMethodDef methods[] = {
    {"check", check, METH_VARARGS, check_doc},
    {"encode_float", encode_float, METH_O, encode_float_doc},
    {"next_records", next_records, METH_VARARGS, next_records_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_cleanbatch", "The clean-batch path of event validation, compiled.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__cleanbatch(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    for (const char **d = DISALLOWED; *d; d++)
        disallowed_lengths |= UINT64_C(1) << strlen(*d);
    /* The limits this file holds, for the tests to compare with eventkeep.ingest.limits. */
    if (PyModule_AddIntConstant(m, "MAX_EVENTS", MAX_EVENTS) < 0 ||
        PyModule_AddIntConstant(m, "MAX_STRING_CHARS", MAX_STRING_CHARS) < 0 ||
        PyModule_AddIntConstant(m, "MAX_ITEMS", MAX_ITEMS) < 0 ||
        PyModule_AddIntConstant(m, "MAX_EVENT_BYTES", MAX_EVENT_BYTES) < 0 ||
        PyModule_AddIntConstant(m, "MIN_TIME_MS", (long)MIN_TIME_MS) < 0 ||
        PyModule_AddIntConstant(m, "MS_THRESHOLD", (long)MS_THRESHOLD) < 0 ||
        PyModule_AddIntConstant(m, "TRACK_MAX_AGE_MS", (long)TRACK_MAX_AGE_MS) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
