/* The canonical JSON of a record's material content, in C: pipeline/hashing.py's fast path.
 *
 * canonical(value, shape) -> (bytes, [unknown paths]) | None
 *
 * The same bytes as hashing._fast_canonical: keys the schema shape does not know are left out (their
 * dotted paths reported), object keys sorted by their UTF-8 bytes, every array's elements sorted by
 * their own canonical JSON (arrays are multisets), text and numbers written as orjson writes them.
 * It answers None whenever the record needs normalisation or holds anything unusual (an integral
 * float, text not in NFC, a subclass of dict/list/str, an int beyond 64 bits, ...): the caller then
 * takes the Python path, which is the reference (tests/test_hash_c.py compares the two).
 *
 * An object member whose value is null is left out, as if absent (JSON null = absent member). One
 * whose value is written as an empty object or array (also one emptied by leaving out unknown keys or
 * nulls) is absent too: such a record is left to the Python path (none of the registry's records has one).
 *
 * A shape is a dict: key -> the key's shape (a dict), or None for a value taken as it is (free-form:
 * its objects keep every key). Lists are transparent: a list's elements have the list's shape.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define OK 0
#define FALLBACK 1 /* not an error: the Python path must do it */
#define ERROR -1   /* a Python exception is set */

typedef struct {
    char *data;
    Py_ssize_t len, cap;
} Buffer;

typedef struct {
    Buffer out;
    PyObject *unknown;     /* list of str */
    PyObject **path;       /* the keys above the current value (borrowed) */
    Py_ssize_t depth, path_cap;
    int nesting; /* containers open around the current value */
} State;

static PyObject *float_dumps = NULL; /* orjson.dumps, for floats (its shortest round-trip form) */
static PyObject *is_nfc = NULL;      /* str -> bool: unicodedata.is_normalized("NFC", str) */

static int grow(Buffer *b, Py_ssize_t extra) {
    if (b->len + extra <= b->cap) return OK;
    Py_ssize_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + extra) cap *= 2;
    char *data = PyMem_Realloc(b->data, cap);
    if (!data) { PyErr_NoMemory(); return ERROR; }
    b->data = data;
    b->cap = cap;
    return OK;
}

static int put(Buffer *b, const char *s, Py_ssize_t n) {
    if (grow(b, n) != OK) return ERROR;
    memcpy(b->data + b->len, s, n);
    b->len += n;
    return OK;
}

static int put_char(Buffer *b, char c) {
    if (grow(b, 1) != OK) return ERROR;
    b->data[b->len++] = c;
    return OK;
}

/* Text as orjson writes it: '"' and '\\' escaped, \b \t \n \f \r, other controls as \u00xx
 * (lowercase hex), everything else (DEL, non-ASCII) as its UTF-8 bytes. Runs of bytes that need no
 * escape are copied whole. */
static unsigned char escaped[256]; /* 1 for the bytes that need an escape (filled at import) */

static int put_text(Buffer *b, const char *s, Py_ssize_t n) {
    static const char hex[] = "0123456789abcdef";
    if (put_char(b, '"') != OK) return ERROR;
    Py_ssize_t i = 0;
    while (i < n) {
        Py_ssize_t run = i;
        while (run < n && !escaped[(unsigned char)s[run]]) run++;
        if (put(b, s + i, run - i) != OK) return ERROR;
        if (run == n) break;
        unsigned char c = (unsigned char)s[run];
        i = run + 1;
        char escape[6] = {'\\', 0, 0, 0, 0, 0};
        Py_ssize_t size = 2;
        switch (c) {
            case '"': escape[1] = '"'; break;
            case '\\': escape[1] = '\\'; break;
            case '\b': escape[1] = 'b'; break;
            case '\t': escape[1] = 't'; break;
            case '\n': escape[1] = 'n'; break;
            case '\f': escape[1] = 'f'; break;
            case '\r': escape[1] = 'r'; break;
            default:
                escape[1] = 'u'; escape[2] = '0'; escape[3] = '0';
                escape[4] = hex[c >> 4]; escape[5] = hex[c & 15];
                size = 6;
        }
        if (put(b, escape, size) != OK) return ERROR;
    }
    return put_char(b, '"');
}

/* Whether a non-ASCII str may not be in NFC: every character below U+0300 (where the combining
 * marks start) is NFC on its own and composes with nothing before it, so only text with a
 * character at or above it is asked of unicodedata. */
static int may_need_nfc(PyObject *s) {
    int kind = PyUnicode_KIND(s);
    if (kind == PyUnicode_1BYTE_KIND) return 0;
    const void *data = PyUnicode_DATA(s);
    Py_ssize_t n = PyUnicode_GET_LENGTH(s);
    for (Py_ssize_t i = 0; i < n; i++)
        if (PyUnicode_READ(kind, data, i) >= 0x300) return 1;
    return 0;
}

/* A str's UTF-8 bytes if it needs no normalisation (ASCII, or non-ASCII already in NFC). */
static int text_of(PyObject *s, const char **utf8, Py_ssize_t *n) {
    if (!PyUnicode_CheckExact(s)) return FALLBACK;
    if (!PyUnicode_IS_ASCII(s) && may_need_nfc(s)) {
        PyObject *nfc = PyObject_CallOneArg(is_nfc, s);
        if (!nfc) return ERROR;
        int yes = PyObject_IsTrue(nfc);
        Py_DECREF(nfc);
        if (yes < 0) return ERROR;
        if (!yes) return FALLBACK;
    }
    *utf8 = PyUnicode_AsUTF8AndSize(s, n);
    if (!*utf8) {  /* a lone surrogate: orjson refuses it too; let the Python path say so */
        PyErr_Clear();
        return FALLBACK;
    }
    return OK;
}

static int put_scalar(Buffer *b, PyObject *v) {
    if (v == Py_None) return put(b, "null", 4);
    if (v == Py_True) return put(b, "true", 4);
    if (v == Py_False) return put(b, "false", 5);
    if (PyUnicode_CheckExact(v)) {
        const char *s;
        Py_ssize_t n;
        int status = text_of(v, &s, &n);
        return status == OK ? put_text(b, s, n) : status;
    }
    if (PyLong_CheckExact(v)) {
        char digits[32];
        int overflow = 0;
        long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (x == -1 && PyErr_Occurred()) return ERROR;
        if (overflow == 0) return put(b, digits, snprintf(digits, sizeof digits, "%lld", x));
        if (overflow > 0) {
            unsigned long long u = PyLong_AsUnsignedLongLong(v);
            if (u == (unsigned long long)-1 && PyErr_Occurred()) { PyErr_Clear(); return FALLBACK; }
            return put(b, digits, snprintf(digits, sizeof digits, "%llu", u));
        }
        return FALLBACK;
    }
    if (PyFloat_CheckExact(v)) {
        double x = PyFloat_AS_DOUBLE(v);
        if (isfinite(x) && floor(x) == x && fabs(x) < 9007199254740992.0) return FALLBACK; /* 2**53 */
        PyObject *text = PyObject_CallOneArg(float_dumps, v);
        if (!text) return ERROR;
        int status = put(b, PyBytes_AS_STRING(text), PyBytes_GET_SIZE(text));
        Py_DECREF(text);
        return status;
    }
    return FALLBACK;
}

static int put_value(State *st, PyObject *v, PyObject *shape);

typedef struct {
    const char *key; /* its UTF-8 bytes */
    Py_ssize_t len;
    PyObject *name, *value, *shape; /* borrowed */
} Member;

static int compare_members(const void *a, const void *b) {
    const Member *x = a, *y = b;
    int c = memcmp(x->key, y->key, x->len < y->len ? x->len : y->len);
    return c ? c : (x->len > y->len) - (x->len < y->len);
}

typedef struct {
    Py_ssize_t offset, len; /* where the element was written in the output buffer, and its length */
    const char *start;      /* the same, in the copy that is sorted */
} Segment;

static int compare_segments(const void *a, const void *b) {
    const Segment *x = a, *y = b;
    int c = memcmp(x->start, y->start, x->len < y->len ? x->len : y->len);
    return c ? c : (x->len > y->len) - (x->len < y->len);
}

static int push_path(State *st, PyObject *key) {
    if (st->depth == st->path_cap) {
        Py_ssize_t cap = st->path_cap ? 2 * st->path_cap : 32;
        PyObject **path = PyMem_Realloc(st->path, cap * sizeof(PyObject *));
        if (!path) { PyErr_NoMemory(); return ERROR; }
        st->path = path;
        st->path_cap = cap;
    }
    st->path[st->depth++] = key;
    return OK;
}

static int note_unknown(State *st, PyObject *key) {
    if (push_path(st, key) != OK) return ERROR;
    PyObject *parts = PyList_New(st->depth);
    if (!parts) { st->depth--; return ERROR; }
    for (Py_ssize_t i = 0; i < st->depth; i++) {
        Py_INCREF(st->path[i]);
        PyList_SET_ITEM(parts, i, st->path[i]);
    }
    st->depth--;
    PyObject *dot = PyUnicode_FromString(".");
    PyObject *joined = dot ? PyUnicode_Join(dot, parts) : NULL;
    Py_XDECREF(dot);
    Py_DECREF(parts);
    if (!joined) return ERROR;
    int status = PyList_Append(st->unknown, joined);
    Py_DECREF(joined);
    return status < 0 ? ERROR : OK;
}

static int put_object(State *st, PyObject *obj, PyObject *shape) {
    Py_ssize_t size = PyDict_GET_SIZE(obj), kept = 0, pos = 0;
    if (size == 0) return put(&st->out, "{}", 2);
    Member *members = PyMem_Malloc(size * sizeof(Member));
    if (!members) { PyErr_NoMemory(); return ERROR; }
    PyObject *key, *value;
    int status = OK;
    /* Keys and values are held by strong references: the calls below (a Python call for text that
     * may not be in NFC, allocations that may run the cyclic collector) could otherwise free them. */
    while (PyDict_Next(obj, &pos, &key, &value)) {
        PyObject *child = Py_None;
        if (!PyUnicode_CheckExact(key) || kept == size || PyDict_GET_SIZE(obj) != size) {
            status = FALLBACK;  /* a key that is not text, or the dict changed under us */
            break;
        }
        if (shape != Py_None) {
            child = PyDict_GetItemWithError(shape, key);
            if (!child) {
                if (PyErr_Occurred()) { status = ERROR; break; }
                if ((status = note_unknown(st, key)) != OK) break;
                continue;
            }
        }
        if (value == Py_None) continue;  /* a member set to null is a member absent (hashing.py) */
        members[kept].name = Py_NewRef(key);
        members[kept].value = Py_NewRef(value);
        members[kept].shape = child;  /* the shape outlives the call (the caller holds it) */
        kept++;
        if ((status = text_of(key, &members[kept - 1].key, &members[kept - 1].len)) != OK) break;
    }
    if (status == OK) {
        qsort(members, kept, sizeof(Member), compare_members);
        status = put_char(&st->out, '{');
        for (Py_ssize_t i = 0; i < kept && status == OK; i++) {
            if (i && (status = put_char(&st->out, ',')) != OK) break;
            if ((status = put_text(&st->out, members[i].key, members[i].len)) != OK) break;
            if ((status = put_char(&st->out, ':')) != OK) break;
            if ((status = push_path(st, members[i].name)) != OK) break;
            Py_ssize_t start = st->out.len;
            status = put_value(st, members[i].value, members[i].shape);
            st->depth--;
            if (status == OK && st->out.len - start == 2
                && (st->out.data[start] == '{' || st->out.data[start] == '['))
                status = FALLBACK;  /* an empty member is an absent one: the walk leaves it out */
        }
        if (status == OK) status = put_char(&st->out, '}');
    }
    for (Py_ssize_t i = 0; i < kept; i++) {
        Py_DECREF(members[i].name);
        Py_DECREF(members[i].value);
    }
    PyMem_Free(members);
    return status;
}

static int put_array(State *st, PyObject *list, PyObject *shape) {
    if (PyList_GET_SIZE(list) == 0) return put(&st->out, "[]", 2);
    /* A snapshot holds the elements (see put_object: nothing may free them while we write). */
    PyObject *elements = PyList_AsTuple(list);
    if (!elements) return ERROR;
    Py_ssize_t n = PyTuple_GET_SIZE(elements);
    Segment *items = PyMem_Malloc((n ? n : 1) * sizeof(Segment));
    if (!items) { Py_DECREF(elements); PyErr_NoMemory(); return ERROR; }
    /* The elements are written in list order, comma-separated, each one's place noted (offsets, not
     * pointers: the buffer may move while it grows). Most arrays are already in canonical order;
     * the others are sorted in a copy and written back over the same bytes (same length). */
    int status = put_char(&st->out, '[');
    for (Py_ssize_t i = 0; i < n && status == OK; i++) {
        if (i && (status = put_char(&st->out, ',')) != OK) break;
        items[i].offset = st->out.len;
        status = put_value(st, PyTuple_GET_ITEM(elements, i), shape);
        items[i].len = st->out.len - items[i].offset;
    }
    if (status == OK) status = put_char(&st->out, ']');
    if (status == OK && n > 1) {
        const char *data = st->out.data;
        int in_order = 1;
        for (Py_ssize_t i = 1; i < n && in_order; i++) {
            Segment a = {items[i - 1].offset, items[i - 1].len, data + items[i - 1].offset};
            Segment b = {items[i].offset, items[i].len, data + items[i].offset};
            in_order = compare_segments(&a, &b) <= 0;
        }
        if (!in_order) {
            Py_ssize_t begin = items[0].offset, total = items[n - 1].offset + items[n - 1].len - begin;
            char *copy = PyMem_Malloc(total);
            if (!copy) { PyErr_NoMemory(); status = ERROR; }
            else {
                memcpy(copy, st->out.data + begin, total);
                for (Py_ssize_t i = 0; i < n; i++) items[i].start = copy + (items[i].offset - begin);
                qsort(items, n, sizeof(Segment), compare_segments);
                char *o = st->out.data + begin;
                for (Py_ssize_t i = 0; i < n; i++) {
                    if (i) *o++ = ',';
                    memcpy(o, items[i].start, items[i].len);
                    o += items[i].len;
                }
                PyMem_Free(copy);
            }
        }
    }
    PyMem_Free(items);
    Py_DECREF(elements);
    return status;
}

/* Containers deeper than this go to the Python path (orjson refuses more than 254 levels; the
 * Python path then decides, as it would without this module). */
#define MAX_NESTING 200

static int put_value(State *st, PyObject *v, PyObject *shape) {
    int status;
    int is_object = PyDict_CheckExact(v);
    if (!is_object && !PyList_CheckExact(v)) return put_scalar(&st->out, v);
    if (st->nesting >= MAX_NESTING) return FALLBACK;
    st->nesting++;
    status = is_object ? put_object(st, v, shape) : put_array(st, v, shape);
    st->nesting--;
    return status;
}

static PyObject *canonical(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "canonical(value, shape) takes 2 arguments");
        return NULL;
    }
    PyObject *value = args[0], *shape = args[1];
    if (!PyDict_CheckExact(value)) Py_RETURN_NONE;
    if (shape != Py_None && !PyDict_CheckExact(shape)) {
        PyErr_SetString(PyExc_TypeError, "shape must be a dict or None");
        return NULL;
    }
    State st = {{NULL, 0, 0}, PyList_New(0), NULL, 0, 0, 0};
    if (!st.unknown) return NULL;
    int status = put_value(&st, value, shape);
    PyObject *result = NULL;
    if (status == OK) {
        PyObject *bytes = PyBytes_FromStringAndSize(st.out.data, st.out.len);
        if (bytes) result = PyTuple_Pack(2, bytes, st.unknown);
        Py_XDECREF(bytes);
    } else if (status == FALLBACK) {
        result = Py_NewRef(Py_None);
    }
    PyMem_Free(st.out.data);
    PyMem_Free(st.path);
    Py_DECREF(st.unknown);
    return result;
}

static PyMethodDef methods[] = {
    {"canonical", (PyCFunction)(void (*)(void))canonical, METH_FASTCALL,
     "canonical(value, shape) -> (bytes, unknown paths) or None (see pipeline/_canonical.c)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_canonical", NULL, -1, methods};

PyMODINIT_FUNC PyInit__canonical(void) {
    for (int c = 0; c < 0x20; c++) escaped[c] = 1;
    escaped['"'] = escaped['\\'] = 1;
    PyObject *orjson = PyImport_ImportModule("orjson");
    if (!orjson) return NULL;
    float_dumps = PyObject_GetAttrString(orjson, "dumps");
    Py_DECREF(orjson);
    if (!float_dumps) return NULL;
    PyObject *unicodedata = PyImport_ImportModule("unicodedata");
    if (!unicodedata) return NULL;
    PyObject *is_normalized = PyObject_GetAttrString(unicodedata, "is_normalized");
    Py_DECREF(unicodedata);
    if (!is_normalized) return NULL;
    PyObject *functools = PyImport_ImportModule("functools");
    if (!functools) { Py_DECREF(is_normalized); return NULL; }
    is_nfc = PyObject_CallMethod(functools, "partial", "Os", is_normalized, "NFC");
    Py_DECREF(functools);
    Py_DECREF(is_normalized);
    if (!is_nfc) return NULL;
    PyObject *module = PyModule_Create(&module_def);
    /* The canonical form this file writes (hashing.HASH_RULE_VERSION): an extension built from an older
     * file (a stale .so) is not used. */
    if (module && PyModule_AddStringConstant(module, "RULE", "4") < 0) { Py_DECREF(module); return NULL; }
    return module;
}
