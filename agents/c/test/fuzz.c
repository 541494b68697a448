/* fuzz.c: libFuzzer target for what the core reads from the network: the
 * offer, cancel and generic control-message decoders, the chunk frame, and
 * the state machine fed with the same bytes. The first input byte picks the
 * target; the seed corpus (testdata/fuzz) is the golden vectors so
 * prefixed. */
#include <string.h>

#include "flota.h"

static uint8_t kv[sizeof(flota_held)];
static int kvlen = -1;
static uint8_t slot[1 << 16];

static int f_publish(void *u, const char *t, const uint8_t *p, size_t n, int q, bool r)
{
    (void)u, (void)t, (void)r;
    /* What the core writes must itself be valid. */
    if (strstr(t, "/up/") && !flota_json_valid(p, n))
        __builtin_trap();
    return q ? 1 : 0;
}
static bool f_subscribe(void *u, const char *f, int q) { (void)u, (void)f, (void)q; return true; }
static void f_void(void *u) { (void)u; }
static bool f_open(void *u, uint32_t size, uint32_t off) { (void)u; return size <= sizeof slot && off <= size; }
static bool f_write(void *u, uint32_t off, const uint8_t *p, size_t n)
{
    (void)u;
    if (off > sizeof slot || n > sizeof slot - off)
        return false;
    memcpy(slot + off, p, n);
    return true;
}
static int f_get(void *u, const char *k, uint8_t *b, size_t cap)
{
    (void)u, (void)k;
    if (kvlen < 0 || (size_t)kvlen > cap)
        return -1;
    memcpy(b, kv, (size_t)kvlen);
    return kvlen;
}
static bool f_set(void *u, const char *k, const uint8_t *b, size_t n)
{
    (void)u, (void)k;
    if (n > sizeof kv)
        return false;
    memcpy(kv, b, n);
    kvlen = (int)n;
    return true;
}
static bool f_install(void *u, const char *v) { (void)u, (void)v; return true; }
static void f_sha_init(void *u, void *c) { (void)u; memset(c, 0, 32); }
static void f_sha_update(void *u, void *c, const uint8_t *p, size_t n)
{
    uint8_t *s = c;
    (void)u;
    for (size_t i = 0; i < n; i++)
        s[i % 32] ^= p[i];
}
static void f_sha_final(void *u, void *c, uint8_t out[32]) { (void)u; memcpy(out, c, 32); }
static bool f_verify(void *u, const uint8_t s[64], const uint8_t *m, size_t n, const uint8_t pk[32])
{
    (void)u, (void)m, (void)n, (void)pk;
    return s[0] == 0x10;
}

static const flota_platform plat = {
    .publish = f_publish, .subscribe = f_subscribe, .disconnect = f_void,
    .storage_open = f_open, .storage_write = f_write, .kv_get = f_get, .kv_set = f_set,
    .install = f_install, .reboot = f_void, .sha256_init = f_sha_init,
    .sha256_update = f_sha_update, .sha256_final = f_sha_final, .ed25519_verify = f_verify,
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static flota_agent a;
    static const uint8_t pk[32];
    if (size < 1)
        return 0;
    uint8_t sel = data[0];
    const uint8_t *p = data + 1;
    size_t n = size - 1;
    flota_offer o;
    flota_cancel c;
    flota_frame f;
    char buf[256];
    switch (sel % 5) {
    case 0:
        if (flota_decode_offer(p, n, &o)) {
            /* A decoded offer holds only what the rules allow. */
            if (!o.update[0] || !o.fw.version[0] || o.window < 1 || o.window > 64 ||
                o.chunk_size < 1 || o.chunk_size > 65536)
                __builtin_trap();
            uint8_t msg[512];
            flota_signed_bytes(&o.fw, msg, sizeof msg);
            if (flota_write_report(buf, sizeof buf, o.update, o.handle, "accepted", true, 0, NULL,
                                   o.fw.version) &&
                !flota_json_valid((const uint8_t *)buf, strlen(buf)))
                __builtin_trap();
        }
        break;
    case 1:
        flota_decode_cancel(p, n, &c);
        break;
    case 2:
        if (flota_decode_frame(p, n, &f) && f.length != n - 20)
            __builtin_trap();
        break;
    case 3:
        flota_json_valid(p, n);
        memcpy(buf, p, n < sizeof buf ? n : sizeof buf - 1);
        buf[n < sizeof buf ? n : sizeof buf - 1] = 0;
        if (flota_version_cmp(buf, buf) != (flota_version_cmp(buf, "1.0.0") == 2 ? 2 : 0))
            __builtin_trap(); /* a version equals itself; a non-version is unordered */
        break;
    default: {
        /* The state machine: the input as an offer, then as chunks of a
         * frame each (split at 0xFF bytes), then as a cancel. */
        flota_config cfg = {.id = "fuzz", .model = "esp32-c3", .version = "1.4.2",
                            .slot_size = sizeof slot, .public_key = (sel & 8) ? pk : NULL};
        kvlen = (sel & 16) ? kvlen : -1;
        if (!flota_init(&a, &cfg, &plat))
            __builtin_trap();
        flota_on_connected(&a);
        flota_on_subscribed(&a);
        flota_on_message(&a, "flota/devices/fuzz/down/offer", p, n);
        size_t start = 0;
        for (size_t i = 0; i <= n; i++) {
            if (i == n || p[i] == 0xFF) {
                flota_on_message(&a, "flota/devices/fuzz/down/chunk", p + start, i - start);
                start = i + 1;
            }
        }
        flota_poll(&a);
        flota_on_published(&a, 1);
        flota_on_message(&a, "flota/devices/fuzz/down/cancel", p, n);
        flota_on_disconnected(&a);
        break;
    }
    }
    return 0;
}
