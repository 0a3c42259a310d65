/* The key index's probing loop, compiled (see eventkeep/store/key_index.py).
 *
 * Linear probing one key at a time: numpy's vectorised rounds touch every still-looking
 * key's arrays again each round, and allocate as they go; this loop touches one slot per
 * probe. Same table, same result: the numpy version stays as the fallback and as the
 * model the tests hold this one to.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

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

static PyMethodDef methods[] = {
    {"place", place, METH_VARARGS, "Upsert keys into the open-addressing table; the number of new keys."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_keyindex", NULL, -1, methods};

PyMODINIT_FUNC PyInit__keyindex(void)
{
    return PyModule_Create(&module);
}
