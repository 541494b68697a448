/* flota_codec.c: the protocol's messages: a strict JSON reader for the down
 * messages (offer, cancel), a writer for the up ones (hello, report, ack),
 * the chunk frame, CRC-32C, base64, the signed bytes and the version order.
 * No allocation, no libc beyond string.h. */
#include <string.h>

#include "flota.h"

/* ---- CRC-32C (§6.2), 16-entry table: 64 bytes of flash ----------------- */

static const uint32_t crc_nibble[16] = {
    0x00000000u, 0x105EC76Fu, 0x20BD8EDEu, 0x30E349B1u, 0x417B1DBCu, 0x5125DAD3u,
    0x61C69362u, 0x7198540Du, 0x82F63B78u, 0x92A8FC17u, 0xA24BB5A6u, 0xB21572C9u,
    0xC38D26C4u, 0xD3D3E1ABu, 0xE330A81Au, 0xF36E6F75u,
};

uint32_t flota_crc32c(uint32_t crc, const uint8_t *p, size_t n)
{
    crc = ~crc;
    while (n--) {
        crc ^= *p++;
        crc = (crc >> 4) ^ crc_nibble[crc & 15];
        crc = (crc >> 4) ^ crc_nibble[crc & 15];
    }
    return ~crc;
}

/* ---- the chunk frame (§6) ---------------------------------------------- */

static uint32_t be32(const uint8_t *b)
{
    return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
}

bool flota_decode_frame(const uint8_t *p, size_t n, flota_frame *out)
{
    if (n < FLOTA_FRAME_HEADER || p[0] != 1)
        return false;
    uint32_t len = be32(p + 12);
    if (len > 65536 || (size_t)len != n - FLOTA_FRAME_HEADER)
        return false;
    if (flota_crc32c(0, p + FLOTA_FRAME_HEADER, len) != be32(p + 16))
        return false;
    out->flags = p[1];
    out->handle = be32(p + 4);
    out->offset = be32(p + 8);
    out->length = len;
    out->payload = p + FLOTA_FRAME_HEADER;
    return true;
}

/* ---- strict JSON reader -------------------------------------------------- */

#define JSON_MAX_DEPTH 16

typedef struct {
    const uint8_t *p, *end;
    int depth;
} jr;

static void ws(jr *r)
{
    while (r->p < r->end && (*r->p == ' ' || *r->p == '\t' || *r->p == '\n' || *r->p == '\r'))
        r->p++;
}

static bool lit(jr *r, const char *s)
{
    size_t n = strlen(s);
    if ((size_t)(r->end - r->p) < n || memcmp(r->p, s, n) != 0)
        return false;
    r->p += n;
    return true;
}

static int hexval(uint8_t c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static bool hex4(jr *r, uint32_t *u)
{
    if (r->end - r->p < 4)
        return false;
    *u = 0;
    for (int i = 0; i < 4; i++) {
        int h = hexval(*r->p++);
        if (h < 0)
            return false;
        *u = *u << 4 | (uint32_t)h;
    }
    return true;
}

/* utf8_len: length of the valid UTF-8 sequence at p (RFC 3629), 0 if none. */
static size_t utf8_len(const uint8_t *p, const uint8_t *end)
{
    uint8_t c = p[0];
    size_t n;
    uint32_t min, u;
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        n = 2, min = 0x80, u = c & 0x1F;
    else if (c >= 0xE0 && c <= 0xEF)
        n = 3, min = 0x800, u = c & 0x0F;
    else if (c >= 0xF0 && c <= 0xF4)
        n = 4, min = 0x10000, u = c & 0x07;
    else
        return 0;
    if ((size_t)(end - p) < n)
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((p[i] & 0xC0) != 0x80)
            return 0;
        u = u << 6 | (p[i] & 0x3F);
    }
    if (u < min || u > 0x10FFFF || (u >= 0xD800 && u <= 0xDFFF))
        return 0;
    return n;
}

/* put: append byte c to out (cap bytes, NUL kept); *len counts every byte,
 * so *len >= cap means the string did not fit. */
static void put(char *out, size_t cap, size_t *len, uint8_t c)
{
    if (out && *len + 1 < cap)
        out[*len] = (char)c;
    (*len)++;
}

static void put_utf8(char *out, size_t cap, size_t *len, uint32_t u)
{
    if (u < 0x80) {
        put(out, cap, len, (uint8_t)u);
    } else if (u < 0x800) {
        put(out, cap, len, (uint8_t)(0xC0 | u >> 6));
        put(out, cap, len, (uint8_t)(0x80 | (u & 0x3F)));
    } else if (u < 0x10000) {
        put(out, cap, len, (uint8_t)(0xE0 | u >> 12));
        put(out, cap, len, (uint8_t)(0x80 | (u >> 6 & 0x3F)));
        put(out, cap, len, (uint8_t)(0x80 | (u & 0x3F)));
    } else {
        put(out, cap, len, (uint8_t)(0xF0 | u >> 18));
        put(out, cap, len, (uint8_t)(0x80 | (u >> 12 & 0x3F)));
        put(out, cap, len, (uint8_t)(0x80 | (u >> 6 & 0x3F)));
        put(out, cap, len, (uint8_t)(0x80 | (u & 0x3F)));
    }
}

/* jstr reads a string into out (NUL-terminated when it fits; out may be
 * NULL to skip); *len is its decoded length. False on bad syntax. */
static bool jstr(jr *r, char *out, size_t cap, size_t *len)
{
    *len = 0;
    if (r->p >= r->end || *r->p != '"')
        return false;
    r->p++;
    for (;;) {
        if (r->p >= r->end)
            return false;
        uint8_t c = *r->p;
        if (c == '"') {
            r->p++;
            break;
        }
        if (c < 0x20)
            return false;
        if (c == '\\') {
            r->p++;
            if (r->p >= r->end)
                return false;
            uint8_t e = *r->p++;
            uint32_t u;
            switch (e) {
            case '"': case '\\': case '/': put(out, cap, len, e); break;
            case 'b': put(out, cap, len, '\b'); break;
            case 'f': put(out, cap, len, '\f'); break;
            case 'n': put(out, cap, len, '\n'); break;
            case 'r': put(out, cap, len, '\r'); break;
            case 't': put(out, cap, len, '\t'); break;
            case 'u':
                if (!hex4(r, &u))
                    return false;
                if (u >= 0xD800 && u <= 0xDBFF) {
                    uint32_t lo;
                    if (!lit(r, "\\u") || !hex4(r, &lo) || lo < 0xDC00 || lo > 0xDFFF)
                        return false;
                    u = 0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00);
                } else if (u >= 0xDC00 && u <= 0xDFFF) {
                    return false;
                }
                put_utf8(out, cap, len, u);
                break;
            default:
                return false;
            }
            continue;
        }
        size_t n = utf8_len(r->p, r->end);
        if (n == 0)
            return false;
        for (size_t i = 0; i < n; i++)
            put(out, cap, len, r->p[i]);
        r->p += n;
    }
    if (out && cap)
        out[*len < cap ? *len : cap - 1] = 0;
    return true;
}

/* jnum reads a number. *isint: no sign, fraction or exponent, and fits
 * 64 bits (then *u holds it). False on bad syntax. */
static bool jnum(jr *r, bool *isint, uint64_t *u)
{
    bool neg = false, frac = false, over = false;
    *u = 0;
    if (r->p < r->end && *r->p == '-')
        neg = true, r->p++;
    if (r->p >= r->end || *r->p < '0' || *r->p > '9')
        return false;
    if (*r->p == '0') {
        r->p++;
    } else {
        while (r->p < r->end && *r->p >= '0' && *r->p <= '9') {
            uint64_t d = (uint64_t)(*r->p++ - '0');
            if (*u > (UINT64_MAX - d) / 10)
                over = true;
            *u = *u * 10 + d;
        }
    }
    if (r->p < r->end && *r->p == '.') {
        frac = true, r->p++;
        if (r->p >= r->end || *r->p < '0' || *r->p > '9')
            return false;
        while (r->p < r->end && *r->p >= '0' && *r->p <= '9')
            r->p++;
    }
    if (r->p < r->end && (*r->p == 'e' || *r->p == 'E')) {
        frac = true, r->p++;
        if (r->p < r->end && (*r->p == '+' || *r->p == '-'))
            r->p++;
        if (r->p >= r->end || *r->p < '0' || *r->p > '9')
            return false;
        while (r->p < r->end && *r->p >= '0' && *r->p <= '9')
            r->p++;
    }
    *isint = !neg && !frac && !over;
    return true;
}

typedef bool (*jfield)(jr *r, const char *key, size_t klen, void *ctx);

static bool jskip(jr *r);

/* jseq reads a sequence between open and close, items separated by
 * commas, calling item for each (depth-bounded). */
static bool jseq(jr *r, char open, char close, bool (*item)(jr *r, void *ctx), void *ctx)
{
    if (r->p >= r->end || *r->p != open || ++r->depth > JSON_MAX_DEPTH)
        return false;
    r->p++;
    ws(r);
    if (r->p < r->end && *r->p == close) {
        r->p++;
        r->depth--;
        return true;
    }
    for (;;) {
        ws(r);
        if (!item(r, ctx))
            return false;
        ws(r);
        if (r->p >= r->end)
            return false;
        if (*r->p == ',') {
            r->p++;
            continue;
        }
        if (*r->p != close)
            return false;
        r->p++;
        r->depth--;
        return true;
    }
}

typedef struct {
    jfield field;
    void *ctx;
} member_ctx;

/* member reads "key": value, calling field with the reader on the value. */
static bool member(jr *r, void *ctx)
{
    member_ctx *m = ctx;
    char key[24];
    size_t klen;
    if (!jstr(r, key, sizeof key, &klen))
        return false;
    if (klen >= sizeof key)
        key[0] = 0, klen = 0; /* longer than any key we know: unknown */
    ws(r);
    if (!lit(r, ":"))
        return false;
    ws(r);
    return m->field(r, key, klen, m->ctx);
}

/* jobject reads an object, calling field for each member with the reader
 * on its value; field must consume the value. */
static bool jobject(jr *r, jfield field, void *ctx)
{
    member_ctx m = {field, ctx};
    return jseq(r, '{', '}', member, &m);
}

static bool skip_field(jr *r, const char *key, size_t klen, void *ctx)
{
    (void)key, (void)klen, (void)ctx;
    return jskip(r);
}

static bool skip_item(jr *r, void *ctx)
{
    (void)ctx;
    return jskip(r);
}

static bool jskip(jr *r)
{
    size_t len;
    bool isint;
    uint64_t u;
    if (r->p >= r->end)
        return false;
    switch (*r->p) {
    case '{':
        return jobject(r, skip_field, NULL);
    case '[':
        return jseq(r, '[', ']', skip_item, NULL);
    case '"':
        return jstr(r, NULL, 0, &len);
    case 't':
        return lit(r, "true");
    case 'f':
        return lit(r, "false");
    case 'n':
        return lit(r, "null");
    default:
        return jnum(r, &isint, &u);
    }
}

/* jdoc reads a whole message: one object, nothing but whitespace after. */
static bool jdoc(const uint8_t *p, size_t n, jfield field, void *ctx)
{
    if (n > FLOTA_MAX_CONTROL)
        return false;
    jr r = {p, p + n, 0};
    ws(&r);
    if (!jobject(&r, field, ctx))
        return false;
    ws(&r);
    return r.p == r.end;
}

/* Typed values of known fields. */

static bool juint(jr *r, uint64_t max, uint64_t *v)
{
    bool isint;
    if (r->p >= r->end || *r->p == '"' || !jnum(r, &isint, v))
        return false;
    return isint && *v <= max;
}

static bool jbool(jr *r, bool *v)
{
    if (lit(r, "true"))
        return *v = true, true;
    if (lit(r, "false"))
        return *v = false, true;
    return false;
}

/* printable: every byte of s is printable ASCII (§4). */
static bool printable(const char *s)
{
    for (; *s; s++)
        if ((uint8_t)*s < 0x20 || (uint8_t)*s > 0x7E)
            return false;
    return true;
}

static bool reason_ok(const char *s)
{
    if (!*s)
        return false;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '_'))
            return false;
    return true;
}

/* jtext reads a string of at most FLOTA_MAX_STR bytes; with ascii, of
 * printable ASCII only. */
static bool jtext(jr *r, char *out, bool ascii)
{
    size_t len;
    if (!jstr(r, out, FLOTA_MAX_STR + 1, &len) || len > FLOTA_MAX_STR || strlen(out) != len)
        return false;
    return !ascii || printable(out);
}

static bool hex32(const char *s, size_t len, uint8_t out[32])
{
    if (len != 64)
        return false;
    for (int i = 0; i < 32; i++) {
        int hi = hexval((uint8_t)s[2 * i]), lo = hexval((uint8_t)s[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return false;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return true;
}

/* seen bits, so that a key sent twice is refused (§4: each key once). */
enum {
    K_V = 1 << 0, K_UPDATE = 1 << 1, K_HANDLE = 1 << 2, K_FIRMWARE = 1 << 3,
    K_CHUNK = 1 << 4, K_WINDOW = 1 << 5, K_REASON = 1 << 6,
    F_NAME = 1 << 8, F_VERSION = 1 << 9, F_MODEL = 1 << 10, F_SIZE = 1 << 11,
    F_SHA = 1 << 12, F_DOWN = 1 << 13, F_SIG = 1 << 14,
};

typedef struct {
    flota_offer *o;
    flota_cancel *c;
    uint32_t seen;
} dec;

static bool once(dec *d, uint32_t bit)
{
    if (d->seen & bit)
        return false;
    d->seen |= bit;
    return true;
}

static bool key_is(const char *key, size_t klen, const char *name)
{
    return klen == strlen(name) && memcmp(key, name, klen) == 0;
}

static bool version_field(jr *r, dec *d)
{
    uint64_t v;
    return once(d, K_V) && juint(r, UINT64_MAX, &v) && v == FLOTA_PROTOCOL_V;
}

/* id_field reads the fields every down message has: v, update, handle.
 * Returns 1 when key was one of them and read, 0 when it was one and is
 * invalid, -1 when key is another. */
static int id_field(jr *r, const char *key, size_t klen, dec *d, char *update, uint32_t *handle)
{
    uint64_t u;
    if (key_is(key, klen, "v"))
        return version_field(r, d);
    if (key_is(key, klen, "update"))
        return once(d, K_UPDATE) && jtext(r, update, true) && update[0];
    if (key_is(key, klen, "handle")) {
        if (!once(d, K_HANDLE) || !juint(r, UINT32_MAX, &u))
            return 0;
        *handle = (uint32_t)u;
        return 1;
    }
    return -1;
}

static bool firmware_field(jr *r, const char *key, size_t klen, void *ctx)
{
    dec *d = ctx;
    flota_firmware *fw = &d->o->fw;
    uint64_t u;
    size_t len;
    if (key_is(key, klen, "name"))
        return once(d, F_NAME) && jtext(r, fw->name, false);
    if (key_is(key, klen, "version"))
        return once(d, F_VERSION) && jtext(r, fw->version, true) && fw->version[0];
    if (key_is(key, klen, "model"))
        return once(d, F_MODEL) && jtext(r, fw->model, true);
    if (key_is(key, klen, "size")) {
        /* The frame's offsets are 32 bits: an image is smaller than 4 GiB. */
        if (!once(d, F_SIZE) || !juint(r, UINT32_MAX, &u))
            return false;
        fw->size = (uint32_t)u;
        return true;
    }
    if (key_is(key, klen, "sha256")) {
        char hex[65];
        return once(d, F_SHA) && jstr(r, hex, sizeof hex, &len) && hex32(hex, len, fw->sha256);
    }
    if (key_is(key, klen, "allow_downgrade"))
        return once(d, F_DOWN) && jbool(r, &fw->allow_downgrade);
    if (key_is(key, klen, "signature")) {
        /* A malformed signature is not a malformed offer: the device
         * answers it with bad_signature (§5.4 rule 3). */
        if (!once(d, F_SIG) || !jstr(r, fw->signature, sizeof fw->signature, &len))
            return false;
        fw->has_signature = true;
        fw->signature_too_long = len > FLOTA_SIG_B64;
        return true;
    }
    return jskip(r);
}

static bool offer_field(jr *r, const char *key, size_t klen, void *ctx)
{
    dec *d = ctx;
    uint64_t u;
    int id = id_field(r, key, klen, d, d->o->update, &d->o->handle);
    if (id >= 0)
        return id == 1;
    if (key_is(key, klen, "firmware"))
        return once(d, K_FIRMWARE) && jobject(r, firmware_field, d);
    if (key_is(key, klen, "chunk_size")) {
        if (!once(d, K_CHUNK) || !juint(r, 65536, &u) || u == 0)
            return false;
        d->o->chunk_size = (uint32_t)u;
        return true;
    }
    if (key_is(key, klen, "window")) {
        if (!once(d, K_WINDOW) || !juint(r, 64, &u) || u == 0)
            return false;
        d->o->window = (uint32_t)u;
        return true;
    }
    return jskip(r);
}

bool flota_decode_offer(const uint8_t *p, size_t n, flota_offer *out)
{
    memset(out, 0, sizeof *out);
    dec d = {out, NULL, 0};
    const uint32_t need = K_V | K_UPDATE | K_HANDLE | K_FIRMWARE | K_CHUNK | K_WINDOW |
                          F_VERSION | F_SIZE | F_SHA;
    return jdoc(p, n, offer_field, &d) && (d.seen & need) == need;
}

static bool cancel_field(jr *r, const char *key, size_t klen, void *ctx)
{
    dec *d = ctx;
    int id = id_field(r, key, klen, d, d->c->update, &d->c->handle);
    if (id >= 0)
        return id == 1;
    if (key_is(key, klen, "reason"))
        return once(d, K_REASON) && jtext(r, d->c->reason, true) &&
               (!d->c->reason[0] || reason_ok(d->c->reason));
    return jskip(r);
}

bool flota_decode_cancel(const uint8_t *p, size_t n, flota_cancel *out)
{
    memset(out, 0, sizeof *out);
    dec d = {NULL, out, 0};
    return jdoc(p, n, cancel_field, &d) && (d.seen & (K_V | K_UPDATE)) == (K_V | K_UPDATE);
}

static bool any_field(jr *r, const char *key, size_t klen, void *ctx)
{
    if (key_is(key, klen, "v"))
        return version_field(r, ctx);
    return jskip(r);
}

bool flota_json_valid(const uint8_t *p, size_t n)
{
    dec d = {NULL, NULL, 0};
    return jdoc(p, n, any_field, &d) && (d.seen & K_V);
}

/* ---- base64 (RFC 4648 §4, padded) ---------------------------------------- */

static int b64val(char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

int flota_base64_decode(const char *s, uint8_t *out, size_t cap)
{
    size_t n = strlen(s), o = 0;
    if (n % 4)
        return -1;
    for (size_t i = 0; i < n; i += 4) {
        int v[4], pad = 0;
        for (int k = 0; k < 4; k++) {
            if (s[i + k] == '=' && i + 4 == n && k >= 2 && (k == 3 || s[i + 3] == '=')) {
                v[k] = 0, pad++;
                continue;
            }
            if ((v[k] = b64val(s[i + k])) < 0)
                return -1;
        }
        uint32_t w = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | (uint32_t)v[3];
        /* Canonical: the bits a pad discards are zero. */
        if ((pad == 1 && (w & 0xFF)) || (pad == 2 && (w & 0xFFFF)))
            return -1;
        for (int k = 0; k < 3 - pad; k++) {
            if (o >= cap)
                return -1;
            out[o++] = (uint8_t)(w >> (16 - 8 * k));
        }
    }
    return (int)o;
}

/* ---- the signed bytes (§5.7) ----------------------------------------------- */

static uint8_t *put_str16(uint8_t *q, const char *s)
{
    size_t n = strlen(s);
    *q++ = (uint8_t)(n >> 8);
    *q++ = (uint8_t)n;
    memcpy(q, s, n);
    return q + n;
}

size_t flota_signed_bytes(const flota_firmware *fw, uint8_t *buf, size_t cap)
{
    size_t need = 16 + 1 + 6 + strlen(fw->name) + strlen(fw->version) + strlen(fw->model) + 8 + 32;
    if (cap < need)
        return 0;
    uint8_t *q = buf;
    memcpy(q, "flota-fw-sig-v1\n", 16);
    q += 16;
    *q++ = fw->allow_downgrade ? 1 : 0;
    q = put_str16(q, fw->name);
    q = put_str16(q, fw->version);
    q = put_str16(q, fw->model);
    for (int i = 7; i >= 0; i--)
        *q++ = i >= 4 ? 0 : (uint8_t)(fw->size >> (8 * i));
    memcpy(q, fw->sha256, 32);
    return need;
}

/* ---- version order (§5.4) -------------------------------------------------- */

typedef struct {
    uint64_t n[3];
    const char *pre; /* after '-', up to '+' or end; NULL: none */
    size_t prelen;
} semver;

static bool isdigit_(char c) { return c >= '0' && c <= '9'; }

static bool ident_char(char c)
{
    return isdigit_(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '-';
}

/* dotted: s[0..len) is identifiers of [0-9A-Za-z-] separated by dots. */
static bool dotted(const char *s, size_t len)
{
    if (len == 0 || s[0] == '.' || s[len - 1] == '.')
        return false;
    for (size_t i = 0; i < len; i++)
        if (!(ident_char(s[i]) || (s[i] == '.' && s[i + 1] != '.')))
            return false;
    return true;
}

static bool parse_semver(const char *s, semver *v)
{
    memset(v, 0, sizeof *v);
    if (*s == 'v')
        s++;
    for (int i = 0; i < 3; i++) {
        if (!isdigit_(*s))
            return false;
        while (isdigit_(*s)) {
            if (v->n[i] > (UINT64_MAX - 9) / 10)
                return false;
            v->n[i] = v->n[i] * 10 + (uint64_t)(*s++ - '0');
        }
        if (*s != '.' || i == 2)
            break;
        s++;
    }
    if (*s == '-') {
        s++;
        v->pre = s;
        while (*s && *s != '+')
            s++;
        v->prelen = (size_t)(s - v->pre);
        if (!dotted(v->pre, v->prelen))
            return false;
    }
    if (*s == '+') {
        s++;
        if (!dotted(s, strlen(s)))
            return false;
        s += strlen(s);
    }
    return *s == 0;
}

static int cmp_u64(uint64_t a, uint64_t b) { return a < b ? -1 : a > b; }

/* cmp_pre compares two pre-release strings (semver.org §11.4). */
static int cmp_pre(const char *a, size_t an, const char *b, size_t bn)
{
    size_t i = 0, j = 0;
    for (;;) {
        size_t ie = i, je = j;
        bool anum = true, bnum = true;
        while (ie < an && a[ie] != '.')
            anum &= isdigit_(a[ie++]);
        while (je < bn && b[je] != '.')
            bnum &= isdigit_(b[je++]);
        int c;
        if (anum && bnum) {
            /* numeric identifiers: longer (without leading zeros) is larger */
            while (i < ie - 1 && a[i] == '0')
                i++;
            while (j < je - 1 && b[j] == '0')
                j++;
            c = cmp_u64(ie - i, je - j);
            if (!c)
                c = memcmp(a + i, b + j, ie - i);
        } else if (anum != bnum) {
            c = anum ? -1 : 1;
        } else {
            size_t m = ie - i < je - j ? ie - i : je - j;
            c = memcmp(a + i, b + j, m);
            if (!c)
                c = cmp_u64(ie - i, je - j);
        }
        if (c)
            return c < 0 ? -1 : 1;
        bool aend = ie >= an, bend = je >= bn;
        if (aend || bend)
            return aend && bend ? 0 : aend ? -1 : 1;
        i = ie + 1, j = je + 1;
    }
}

int flota_version_cmp(const char *a, const char *b)
{
    semver va, vb;
    if (!parse_semver(a, &va) || !parse_semver(b, &vb))
        return 2;
    for (int i = 0; i < 3; i++) {
        int c = cmp_u64(va.n[i], vb.n[i]);
        if (c)
            return c;
    }
    if (!va.pre || !vb.pre)
        return va.pre ? -1 : vb.pre ? 1 : 0;
    return cmp_pre(va.pre, va.prelen, vb.pre, vb.prelen);
}

/* ---- writer ------------------------------------------------------------------ */

typedef struct {
    char *buf;
    size_t cap, len;
} jw;

static void w_raw(jw *w, const char *s)
{
    for (; *s; s++)
        put(w->buf, w->cap, &w->len, (uint8_t)*s);
}

static void w_u32(jw *w, uint32_t v)
{
    char d[11];
    int i = 10;
    d[i] = 0;
    do {
        d[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    w_raw(w, d + i);
}

static void w_str(jw *w, const char *s)
{
    static const char hexd[] = "0123456789abcdef";
    put(w->buf, w->cap, &w->len, '"');
    for (; *s; s++) {
        uint8_t c = (uint8_t)*s;
        if (c == '"' || c == '\\') {
            put(w->buf, w->cap, &w->len, '\\');
            put(w->buf, w->cap, &w->len, c);
        } else if (c < 0x20) {
            w_raw(w, "\\u00");
            put(w->buf, w->cap, &w->len, (uint8_t)hexd[c >> 4]);
            put(w->buf, w->cap, &w->len, (uint8_t)hexd[c & 15]);
        } else {
            put(w->buf, w->cap, &w->len, c);
        }
    }
    put(w->buf, w->cap, &w->len, '"');
}

static void w_key(jw *w, const char *k)
{
    w_raw(w, ",\"");
    w_raw(w, k);
    w_raw(w, "\":");
}

static size_t w_end(jw *w)
{
    if (w->len >= w->cap)
        return 0;
    w->buf[w->len] = 0;
    return w->len;
}

size_t flota_write_hello(const flota_agent *a, char *buf, size_t cap)
{
    jw w = {buf, cap, 0};
    const flota_config *c = &a->cfg;
    w_raw(&w, "{\"v\":1");
    if (c->model && c->model[0]) {
        w_key(&w, "model");
        w_str(&w, c->model);
    }
    w_key(&w, "version");
    w_str(&w, c->version);
    if (c->ntags) {
        w_key(&w, "tags");
        for (size_t i = 0; i < c->ntags; i++) {
            w_raw(&w, i ? "," : "{");
            w_str(&w, c->tags[i].key);
            w_raw(&w, ":");
            w_str(&w, c->tags[i].value);
        }
        w_raw(&w, "}");
    }
    if (c->max_chunk) {
        w_key(&w, "max_chunk");
        w_u32(&w, c->max_chunk);
    }
    if (c->max_window) {
        w_key(&w, "max_window");
        w_u32(&w, c->max_window);
    }
    if (c->ncaps) {
        w_key(&w, "caps");
        for (size_t i = 0; i < c->ncaps; i++) {
            w_raw(&w, i ? "," : "[");
            w_str(&w, c->caps[i]);
        }
        w_raw(&w, "]");
    }
    const flota_held *h = &a->held;
    if (h->state != FLOTA_IDLE) {
        w_key(&w, "transfer");
        w_raw(&w, "{\"update\":");
        w_str(&w, h->update);
        w_key(&w, "handle");
        w_u32(&w, h->handle);
        w_key(&w, "offset");
        w_u32(&w, h->expected);
        w_key(&w, "state");
        w_str(&w, flota_state_name((flota_state)h->state));
        w_raw(&w, "}");
    }
    w_raw(&w, "}");
    return w_end(&w);
}

size_t flota_write_report(char *buf, size_t cap, const char *update, uint32_t handle,
                          const char *state, bool with_offset, uint32_t offset,
                          const char *reason, const char *version)
{
    jw w = {buf, cap, 0};
    w_raw(&w, "{\"v\":1");
    w_key(&w, "update");
    w_str(&w, update);
    w_key(&w, "handle");
    w_u32(&w, handle);
    w_key(&w, "state");
    w_str(&w, state);
    if (with_offset) {
        w_key(&w, "offset");
        w_u32(&w, offset);
    }
    if (reason && reason[0]) {
        w_key(&w, "reason");
        w_str(&w, reason);
    }
    if (version && version[0]) {
        w_key(&w, "version");
        w_str(&w, version);
    }
    w_raw(&w, "}");
    return w_end(&w);
}

size_t flota_write_ack(char *buf, size_t cap, uint32_t handle, uint32_t offset)
{
    jw w = {buf, cap, 0};
    w_raw(&w, "{\"v\":1");
    w_key(&w, "handle");
    w_u32(&w, handle);
    w_key(&w, "offset");
    w_u32(&w, offset);
    w_raw(&w, "}");
    return w_end(&w);
}
