/* The key index's probing loop and its keys, compiled (see eventkeep/store/key_index.py).
 *
 * Linear probing one key at a time: numpy's vectorised rounds touch every still-looking
 * key's arrays again each round, and allocate as they go; this loop touches one slot per
 * probe. Same table, same result: the numpy version stays as the fallback and as the
 * model the tests hold this one to.
 *
 * Keys: the MD5 of each event's key fields, exactly as DuckDB's md5_number computes it
 * from the store's KEY_SQL (the tests hold the two together), straight from a batch's
 * Arrow buffers, without the GIL: in DuckDB, joining the fields as text and hashing them
 * cost the writer half a second per million events.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define PREFETCH_AHEAD 16

static int get(PyObject *obj, Py_buffer *view, int writable, Py_ssize_t itemsize, const char *what)
{
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0)) != 0)
        return -1;
    if (view->len % itemsize != 0) {
        PyBuffer_Release(view);
        PyErr_Format(PyExc_ValueError, "%s: expected %zd-byte items", what, itemsize);
        return -1;
    }
    return 0;
}

/* place(high, low, seq, table_high, table_low, table_seq, replaced, count) -> new keys
 *
 * For each key: find its slot (MD5 bits are uniform: the low half masked is the first
 * slot), point it at its seq, and record the seq it held in `replaced` (0 if new). The
 * table's length is a power of two, and `count` of its slots are used: the caller grows it
 * first so that it never fills. */
static PyObject *place(PyObject *self, PyObject *args)
{
    PyObject *objs[7];
    Py_ssize_t used;
    if (!PyArg_ParseTuple(args, "OOOOOOOn", &objs[0], &objs[1], &objs[2], &objs[3], &objs[4], &objs[5], &objs[6], &used))
        return NULL;
    static const int writable[7] = {0, 0, 0, 1, 1, 1, 1};
    static const char *names[7] = {"high", "low", "seq", "table_high", "table_low", "table_seq", "replaced"};
    Py_buffer views[7];
    int got = 0;
    PyObject *result = NULL;
    for (; got < 7; got++)
        if (get(objs[got], &views[got], writable[got], 8, names[got]) != 0)
            goto done;
    Py_ssize_t n = views[2].len / 8, slots = views[5].len / 8;
    if (views[0].len / 8 != n || views[1].len / 8 != n || views[6].len / 8 != n
        || views[3].len / 8 != slots || views[4].len / 8 != slots || slots == 0 || (slots & (slots - 1)) != 0) {
        PyErr_SetString(PyExc_ValueError, "place: mismatched lengths, or a table that is not a power of two");
        goto done;
    }
    const uint64_t *high = views[0].buf, *low = views[1].buf;
    const int64_t *seq = views[2].buf;
    uint64_t *t_high = views[3].buf, *t_low = views[4].buf;
    int64_t *t_seq = views[5].buf, *replaced = views[6].buf;
    uint64_t mask = (uint64_t)slots - 1;
    Py_ssize_t added = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        if (i + PREFETCH_AHEAD < n) {
            /* the slots a later key will probe: their cache misses overlap this key's */
            uint64_t ahead = low[i + PREFETCH_AHEAD] & mask;
            __builtin_prefetch(&t_seq[ahead], 1);
            __builtin_prefetch(&t_low[ahead], 0);
            __builtin_prefetch(&t_high[ahead], 0);
        }
        uint64_t at = low[i] & mask;
        for (;;) {
            int64_t held = t_seq[at];
            if (held == 0) {
                t_high[at] = high[i];
                t_low[at] = low[i];
                t_seq[at] = seq[i];
                replaced[i] = 0;
                added++;
                break;
            }
            if (t_low[at] == low[i] && t_high[at] == high[i]) {
                t_seq[at] = seq[i];
                replaced[i] = held;
                break;
            }
            at = (at + 1) & mask;
        }
        if (used + added >= slots)
            break; /* full: cannot happen when the caller grew the table first */
    }
    Py_END_ALLOW_THREADS
    if (used + added >= slots && n) {
        PyErr_SetString(PyExc_RuntimeError, "place: the table is full");
        goto done;
    }
    result = PyLong_FromSsize_t(added);
done:
    for (int i = 0; i < got; i++)
        PyBuffer_Release(&views[i]);
    return result;
}

/* ---- MD5 (RFC 1321) ---- */

static uint32_t md5_k[64]; /* floor(|sin(i + 1)| * 2^32), set at import */
static const uint8_t md5_s[64] = {
    7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 5, 9,  14, 20, 5, 9,  14, 20, 5, 9,  14, 20, 5, 9,  14, 20,
    4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21,
};

static void md5_block(uint32_t h[4], const unsigned char *p)
{
    uint32_t m[16];
    for (int i = 0; i < 16; i++)
        m[i] = (uint32_t)p[4 * i] | ((uint32_t)p[4 * i + 1] << 8) | ((uint32_t)p[4 * i + 2] << 16) |
               ((uint32_t)p[4 * i + 3] << 24);
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3];
#pragma GCC unroll 64
    for (int i = 0; i < 64; i++) {
        uint32_t f;
        int g;
        if (i < 16) {
            f = d ^ (b & (c ^ d));
            g = i;
        } else if (i < 32) {
            f = c ^ (d & (b ^ c));
            g = (5 * i + 1) & 15;
        } else if (i < 48) {
            f = b ^ c ^ d;
            g = (3 * i + 5) & 15;
        } else {
            f = c ^ (b | ~d);
            g = (7 * i) & 15;
        }
        f += a + md5_k[i] + m[g];
        a = d;
        d = c;
        c = b;
        b += (f << md5_s[i]) | (f >> (32 - md5_s[i]));
    }
    h[0] += a;
    h[1] += b;
    h[2] += c;
    h[3] += d;
}

/* The digest of text[0..n) as the two halves of md5_number (the digest read as a
 * little-endian 128-bit number). `text` must have room for 72 more bytes: the padding is
 * written in place. */
static void md5_halves(unsigned char *text, size_t n, uint64_t *high, uint64_t *low)
{
    uint32_t h[4] = {0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476};
    size_t padded = (n + 8) / 64 * 64 + 64;
    text[n] = 0x80;
    memset(text + n + 1, 0, padded - n - 1 - 8);
    uint64_t bits = (uint64_t)n * 8;
    for (int i = 0; i < 8; i++)
        text[padded - 8 + i] = (unsigned char)(bits >> (8 * i));
    for (size_t at = 0; at < padded; at += 64)
        md5_block(h, text + at);
    *low = (uint64_t)h[0] | ((uint64_t)h[1] << 32);
    *high = (uint64_t)h[2] | ((uint64_t)h[3] << 32);
}

/* ---- keys of a batch ---- */

#define MAX_KEY_TEXT 4096 /* on the stack; event and distinct_id are at most 255 characters, insert ids 36 */

static char *put_number(char *out, int64_t value)
{
    char digits[24];
    int n = 0;
    uint64_t v = value < 0 ? (uint64_t)0 - (uint64_t)value : (uint64_t)value;
    do {
        digits[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    if (value < 0)
        *out++ = '-';
    while (n)
        *out++ = digits[--n];
    return out;
}

/* keys(project_ids, event_offsets, events, id_offsets, ids, times_ms, insert_offsets,
 *      insert_ids, high, low) -> None
 *
 * Arrow buffers of one batch (int32 ids, int32 offsets into UTF-8 data, int64 times):
 * each row's key text, project_id NUL len(event) NUL event NUL len(distinct_id) NUL
 * distinct_id NUL time_ms NUL insert_id (lengths in bytes), hashed into high/low. */
static PyObject *keys(PyObject *self, PyObject *args)
{
    PyObject *objs[10];
    if (!PyArg_ParseTuple(args, "OOOOOOOOOO", &objs[0], &objs[1], &objs[2], &objs[3], &objs[4], &objs[5], &objs[6],
                          &objs[7], &objs[8], &objs[9]))
        return NULL;
    static const int writable[10] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1};
    static const Py_ssize_t sizes[10] = {4, 4, 1, 4, 1, 8, 4, 1, 8, 8};
    static const char *names[10] = {"project_ids", "event_offsets", "events", "id_offsets", "ids",
                                    "times_ms", "insert_offsets", "insert_ids", "high", "low"};
    Py_buffer views[10];
    int got = 0;
    PyObject *result = NULL;
    for (; got < 10; got++)
        if (get(objs[got], &views[got], writable[got], sizes[got], names[got]) != 0)
            goto done;
    Py_ssize_t n = views[0].len / 4;
    if (views[1].len / 4 != n + 1 || views[3].len / 4 != n + 1 || views[6].len / 4 != n + 1 ||
        views[5].len / 8 != n || views[8].len / 8 != n || views[9].len / 8 != n) {
        PyErr_SetString(PyExc_ValueError, "keys: mismatched lengths");
        goto done;
    }
    const int32_t *project = views[0].buf, *event_at = views[1].buf, *id_at = views[3].buf, *insert_at = views[6].buf;
    const char *events = views[2].buf, *ids = views[4].buf, *inserts = views[7].buf;
    const int64_t *times = views[5].buf;
    uint64_t *high = views[8].buf, *low = views[9].buf;
    /* every offset must lie within its data: a bad batch must not read outside it */
    for (Py_ssize_t i = 0; i < n; i++)
        if (event_at[i] < 0 || event_at[i] > event_at[i + 1] || id_at[i] < 0 || id_at[i] > id_at[i + 1] ||
            insert_at[i] < 0 || insert_at[i] > insert_at[i + 1]) {
            PyErr_SetString(PyExc_ValueError, "keys: offsets out of order");
            goto done;
        }
    if ((n && (event_at[n] > views[2].len || id_at[n] > views[4].len || insert_at[n] > views[7].len))) {
        PyErr_SetString(PyExc_ValueError, "keys: offsets past the data");
        goto done;
    }
    int out_of_memory = 0;
    Py_BEGIN_ALLOW_THREADS
    unsigned char stack[MAX_KEY_TEXT + 72];
    for (Py_ssize_t i = 0; i < n; i++) {
        size_t event_len = (size_t)(event_at[i + 1] - event_at[i]), id_len = (size_t)(id_at[i + 1] - id_at[i]);
        size_t insert_len = (size_t)(insert_at[i + 1] - insert_at[i]);
        size_t most = event_len + id_len + insert_len + 4 * 24 + 6; /* four numbers, six NULs */
        unsigned char *text = stack;
        if (most > MAX_KEY_TEXT && (text = malloc(most + 72)) == NULL) { /* never for valid events */
            out_of_memory = 1;
            break;
        }
        char *out = (char *)text;
        out = put_number(out, project[i]);
        *out++ = '\0';
        out = put_number(out, (int64_t)event_len);
        *out++ = '\0';
        memcpy(out, events + event_at[i], event_len);
        out += event_len;
        *out++ = '\0';
        out = put_number(out, (int64_t)id_len);
        *out++ = '\0';
        memcpy(out, ids + id_at[i], id_len);
        out += id_len;
        *out++ = '\0';
        out = put_number(out, times[i]);
        *out++ = '\0';
        memcpy(out, inserts + insert_at[i], insert_len);
        out += insert_len;
        md5_halves(text, (size_t)(out - (char *)text), &high[i], &low[i]);
        if (text != stack)
            free(text);
    }
    Py_END_ALLOW_THREADS
    if (out_of_memory) {
        PyErr_NoMemory();
        goto done;
    }
    Py_INCREF(Py_None);
    result = Py_None;
done:
    for (int i = 0; i < got; i++)
        PyBuffer_Release(&views[i]);
    return result;
}

static PyMethodDef methods[] = {
    {"place", place, METH_VARARGS, "Upsert keys into the open-addressing table; the number of new keys."},
    {"keys", keys, METH_VARARGS, "Each row's event key, hashed as the store's KEY_SQL does, into high and low."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_keyindex", NULL, -1, methods};

PyMODINIT_FUNC PyInit__keyindex(void)
{
    for (int i = 0; i < 64; i++)
        md5_k[i] = (uint32_t)(fabs(sin((double)i + 1.0)) * 4294967296.0);
    return PyModule_Create(&module);
}
