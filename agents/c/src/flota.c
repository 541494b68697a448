/* flota.c: the device's state machine (docs/PROTOCOL.md §5, §7-§11).
 * Every decision is here; the port only moves bytes (flota_platform.h). */
#include <string.h>

#include "flota.h"

#define HELD_MAGIC 0x464C3101u /* "FL1" and a layout number */
#define HELD_KEY "flota"

static const char *const state_names[] = {
    "", "downloading", "downloaded", "verified", "installing", "rebooting",
};

const char *flota_state_name(flota_state s)
{
    return (unsigned)s < sizeof state_names / sizeof state_names[0] ? state_names[s] : "";
}

static void copy_str(char *dst, const char *src, size_t cap)
{
    size_t n = strlen(src);
    if (n >= cap)
        n = cap - 1;
    memcpy(dst, src, n);
    dst[n] = 0;
}

/* topic builds flota/devices/{id}/{suffix} in a->topic. */
static const char *topic(flota_agent *a, const char *suffix)
{
    char *t = a->topic;
    size_t n = 0;
    const char *parts[3] = {"flota/devices/", a->cfg.id, "/"};
    for (int i = 0; i < 3; i++) {
        size_t l = strlen(parts[i]);
        memcpy(t + n, parts[i], l);
        n += l;
    }
    copy_str(t + n, suffix, sizeof a->topic - n);
    return t;
}

static int publish(flota_agent *a, const char *suffix, size_t len, int qos, bool retain)
{
    if (len == 0)
        return -1; /* did not fit a->out */
    return a->p->publish(a->p->user, topic(a, suffix), (const uint8_t *)a->out, len, qos, retain);
}

static uint32_t now(flota_agent *a)
{
    return a->p->now_ms ? a->p->now_ms(a->p->user) : 0;
}

/* ---- persistence (§8) ------------------------------------------------------ */

static uint32_t held_crc(const flota_held *h)
{
    return flota_crc32c(0, (const uint8_t *)h, offsetof(flota_held, crc));
}

static void persist(flota_agent *a)
{
    flota_held *h = &a->held;
    /* The offset counts only bytes the slot holds durably. */
    if (h->state == FLOTA_DOWNLOADING && a->storage_ready && a->p->storage_sync)
        a->p->storage_sync(a->p->user);
    h->magic = HELD_MAGIC;
    h->crc = held_crc(h);
    a->p->kv_set(a->p->user, HELD_KEY, (const uint8_t *)h, sizeof *h);
    a->last_persist_ms = now(a);
    a->stats.persists++;
}

static void load(flota_agent *a)
{
    flota_held *h = &a->held;
    int n = a->p->kv_get(a->p->user, HELD_KEY, (uint8_t *)h, sizeof *h);
    if (n != (int)sizeof *h || h->magic != HELD_MAGIC || h->crc != held_crc(h) ||
        h->state > FLOTA_REBOOTING || memchr(h->update, 0, sizeof h->update) == NULL ||
        memchr(h->done_update, 0, sizeof h->done_update) == NULL ||
        (h->state != FLOTA_IDLE && h->expected > h->fw.size)) {
        memset(h, 0, sizeof *h); /* nothing (valid) held: start IDLE */
    }
}

/* clear forgets the held transfer (IDLE), keeping done_update; with
 * erase, it erases the slot too. Not persisted. */
static void clear(flota_agent *a, bool erase)
{
    flota_held *h = &a->held;
    if (erase && a->p->storage_discard)
        a->p->storage_discard(a->p->user);
    char done[sizeof h->done_update];
    memcpy(done, h->done_update, sizeof done);
    memset(h, 0, sizeof *h);
    memcpy(h->done_update, done, sizeof done);
    a->storage_ready = false;
    a->work = false;
}

/* discard erases what is held and goes IDLE, persisted. */
static void discard(flota_agent *a)
{
    clear(a, true);
    persist(a);
}

/* ---- messages up -------------------------------------------------------------- */

/* report publishes a report of the held transfer, after persisting the
 * state it tells (a report is a promise, §8). */
static void report(flota_agent *a, const char *state, bool with_offset, uint32_t offset,
                   const char *reason)
{
    persist(a);
    size_t n = flota_write_report(a->out, sizeof a->out, a->held.update, a->held.handle, state,
                                  with_offset, offset, reason, NULL);
    publish(a, "up/report", n, 1, false);
}

/* reply answers an offer without touching what is held. */
static void reply(flota_agent *a, const flota_offer *o, const char *state, const char *reason,
                  bool with_version)
{
    size_t n = flota_write_report(a->out, sizeof a->out, o->update, o->handle, state, false, 0,
                                  reason, with_version ? a->cfg.version : NULL);
    publish(a, "up/report", n, 1, false);
}

static void send_hello(flota_agent *a)
{
    size_t n = flota_write_hello(a, a->out, sizeof a->out);
    a->hello_mid = publish(a, "up/hello", n, 1, false);
}

static void send_status(flota_agent *a, bool online, int *mid)
{
    copy_str(a->out, online ? "{\"v\":1,\"online\":true}" : "{\"v\":1,\"online\":false}",
             sizeof a->out);
    int m = publish(a, "up/status", strlen(a->out), 1, true);
    if (mid)
        *mid = m;
}

static void ack(flota_agent *a)
{
    size_t n = flota_write_ack(a->out, sizeof a->out, a->held.handle, a->held.expected);
    publish(a, "up/ack", n, 0, false);
    a->unacked = 0;
}

/* fail discards the held transfer, then reports it failed with reason
 * (saved before it is told, like every report). */
static void fail(flota_agent *a, const char *reason)
{
    char update[sizeof a->held.update];
    uint32_t handle = a->held.handle;
    copy_str(update, a->held.update, sizeof update);
    discard(a);
    size_t n = flota_write_report(a->out, sizeof a->out, update, handle, "failed", false, 0, reason,
                                  NULL);
    publish(a, "up/report", n, 1, false);
}

/* ---- lifecycle ------------------------------------------------------------------ */

static bool id_ok(const char *id)
{
    size_t n = strlen(id);
    if (n < 1 || n > 64 || strcmp(id, "inline") == 0)
        return false;
    for (; *id; id++) {
        char c = *id;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return false;
    }
    return true;
}

bool flota_init(flota_agent *a, const flota_config *cfg, const flota_platform *p)
{
    memset(a, 0, sizeof *a);
    if (!cfg->id || !id_ok(cfg->id) || !cfg->version || !cfg->version[0] ||
        strlen(cfg->version) > FLOTA_MAX_STR || (cfg->model && strlen(cfg->model) > FLOTA_MAX_STR))
        return false;
    if (!p->publish || !p->subscribe || !p->disconnect || !p->storage_open || !p->storage_write ||
        !p->kv_get || !p->kv_set || !p->install || !p->reboot || !p->sha256_init ||
        !p->sha256_update || !p->sha256_final || (cfg->public_key && !p->ed25519_verify))
        return false;
    if (cfg->max_chunk && (cfg->max_chunk < 256 || cfg->max_chunk > 65536))
        return false;
    if (cfg->max_window > 64)
        return false;
    a->cfg = *cfg;
    a->p = p;
    a->window = 1;
    a->hello_mid = a->offline_mid = -1;
    load(a);
    /* INSTALLING goes on with the handle it holds (§9.1); DOWNLOADED and
     * VERIFIED wait for the re-offer. */
    a->work = a->held.state == FLOTA_INSTALLING;
    return true;
}

void flota_will(flota_agent *a, const char **t, const char **payload)
{
    *t = topic(a, "up/status");
    *payload = "{\"v\":1,\"online\":false}";
}

void flota_on_connected(flota_agent *a)
{
    a->connected = true;
    a->subscribed = false;
    a->unacked = 0;
    a->p->subscribe(a->p->user, topic(a, "down/#"), 1);
}

void flota_on_subscribed(flota_agent *a)
{
    if (!a->connected || a->subscribed)
        return;
    a->subscribed = true;
    send_status(a, true, NULL);
    send_hello(a);
}

static void do_reboot(flota_agent *a)
{
    a->offline_mid = -1;
    a->p->disconnect(a->p->user);
    a->connected = a->subscribed = false;
    a->rebooted = true;
    a->p->reboot(a->p->user);
}

void flota_on_disconnected(flota_agent *a)
{
    bool rebooting = a->offline_mid > 0;
    a->connected = a->subscribed = false;
    a->hello_mid = -1;
    if (rebooting) /* the will tells the orchestrator we are gone */
        do_reboot(a);
}

void flota_on_published(flota_agent *a, int mid)
{
    if (mid <= 0)
        return;
    if (mid == a->hello_mid && a->held.state == FLOTA_REBOOTING) {
        /* The orchestrator has the hello after the reboot: a confirmed
         * boot, or a rollback it now knows about (§10). Clear either way. */
        bool booted = strcmp(a->cfg.version, a->held.fw.version) == 0;
        copy_str(a->held.done_update, a->held.update, sizeof a->held.done_update);
        clear(a, false);
        persist(a);
        if (a->p->confirm)
            a->p->confirm(a->p->user, booted);
    }
    if (mid == a->offline_mid)
        do_reboot(a);
}

/* ---- offer (§5.4, rules in order) --------------------------------------------------- */

static bool signature_ok(flota_agent *a, const flota_firmware *fw)
{
    uint8_t sig[64], msg[16 + 1 + 3 * (2 + FLOTA_MAX_STR) + 8 + 32];
    if (!fw->has_signature || fw->signature_too_long ||
        flota_base64_decode(fw->signature, sig, sizeof sig) != 64)
        return false;
    size_t n = flota_signed_bytes(fw, msg, sizeof msg);
    return n && a->p->ed25519_verify(a->p->user, sig, msg, n, a->cfg.public_key);
}

static void on_offer(flota_agent *a, const uint8_t *p, size_t n)
{
    flota_offer o;
    flota_held *h = &a->held;
    if (!flota_decode_offer(p, n, &o)) {
        a->stats.messages_bad++;
        return;
    }
    bool same = h->state != FLOTA_IDLE && strcmp(o.update, h->update) == 0;
    if (h->state != FLOTA_IDLE && h->state != FLOTA_REBOOTING && !same) { /* 1 */
        reply(a, &o, "rejected", "busy", true);
        return;
    }
    if ((same && h->state == FLOTA_REBOOTING) || strcmp(o.update, h->done_update) == 0 ||
        strcmp(o.fw.version, a->cfg.version) == 0) { /* 2 */
        send_hello(a);
        return;
    }
    if (a->cfg.public_key && !signature_ok(a, &o.fw)) { /* 3 */
        reply(a, &o, "failed", "bad_signature", false);
        return;
    }
    if (a->cfg.public_key && !o.fw.allow_downgrade) { /* 4 */
        int c = flota_version_cmp(o.fw.version, a->cfg.version);
        if (c < 0 || c == 2) {
            reply(a, &o, "rejected", "downgrade_refused", true);
            return;
        }
    }
    if (o.fw.model[0] && (!a->cfg.model || strcmp(o.fw.model, a->cfg.model) != 0)) { /* 5 */
        reply(a, &o, "rejected", "incompatible_model", true);
        return;
    }
    if (o.fw.size > a->cfg.slot_size) { /* 6 */
        reply(a, &o, "rejected", "insufficient_space", true);
        return;
    }
    if ((a->cfg.max_chunk && o.chunk_size > a->cfg.max_chunk) ||
        (a->cfg.max_window && o.window > a->cfg.max_window)) {
        reply(a, &o, "rejected", "chunk_too_large", true);
        return;
    }
    if (same && o.fw.size == h->fw.size && memcmp(o.fw.sha256, h->fw.sha256, 32) == 0) { /* 7 */
        h->handle = o.handle;
        a->window = o.window;
        a->unacked = 0;
        if (h->state == FLOTA_DOWNLOADING) {
            report(a, "accepted", true, h->expected, NULL);
            return;
        }
        report(a, flota_state_name((flota_state)h->state), h->state == FLOTA_DOWNLOADED,
               h->expected, NULL);
        if (h->state == FLOTA_DOWNLOADED || h->state == FLOTA_VERIFIED)
            a->work = true; /* after a reboot: go on with the new handle (§9.1) */
        return;
    }
    /* 8: fresh start */
    clear(a, h->state != FLOTA_IDLE);
    if (!a->p->storage_open(a->p->user, o.fw.size, 0)) {
        persist(a);
        reply(a, &o, "failed", "storage_error", false);
        return;
    }
    a->storage_ready = true;
    h->state = FLOTA_DOWNLOADING;
    copy_str(h->update, o.update, sizeof h->update);
    h->handle = o.handle;
    h->fw = o.fw;
    a->window = o.window;
    a->unacked = 0;
    a->p->sha256_init(a->p->user, h->sha.b);
    if (h->fw.size == 0) {
        h->state = FLOTA_DOWNLOADED;
        report(a, "accepted", true, 0, NULL);
        report(a, "downloaded", true, 0, NULL);
        a->work = true;
        return;
    }
    report(a, "accepted", true, 0, NULL);
}

/* ---- chunk (§6, §7) -------------------------------------------------------------------- */

static void on_chunk(flota_agent *a, const uint8_t *p, size_t n)
{
    flota_frame f;
    flota_held *h = &a->held;
    if (!flota_decode_frame(p, n, &f)) {
        a->stats.frames_bad++;
        return;
    }
    if (a->cfg.max_chunk && f.length > a->cfg.max_chunk) {
        a->stats.frames_bad++; /* larger than we said we buffer */
        return;
    }
    if (h->state == FLOTA_IDLE || h->state == FLOTA_REBOOTING || f.handle != h->handle) {
        a->stats.frames_stale++; /* a stale frame of an old offer: no ack */
        return;
    }
    if (h->state != FLOTA_DOWNLOADING || f.offset != h->expected ||
        f.length > h->fw.size - h->expected) {
        a->stats.frames_dup++; /* complete already, gap, duplicate, past the end */
        ack(a);
        return;
    }
    if (!a->storage_ready) {
        if (!a->p->storage_open(a->p->user, h->fw.size, h->expected)) {
            fail(a, "storage_error");
            return;
        }
        a->storage_ready = true;
    }
    if (f.length && !a->p->storage_write(a->p->user, f.offset, f.payload, f.length)) {
        fail(a, "storage_error");
        return;
    }
    a->p->sha256_update(a->p->user, h->sha.b, f.payload, f.length);
    h->expected += f.length;
    a->stats.bytes_applied += f.length;
    bool complete = h->expected == h->fw.size;
    uint32_t every = a->window / 2 ? a->window / 2 : 1;
    if (++a->unacked >= every || complete) {
        /* Save the offset before acking it: what the orchestrator counts
         * as held survives a power cut (up to the persist interval). */
        if (complete || !a->cfg.persist_interval_ms ||
            now(a) - a->last_persist_ms >= a->cfg.persist_interval_ms)
            persist(a);
        ack(a);
    }
    if (complete) {
        h->state = FLOTA_DOWNLOADED;
        report(a, "downloaded", true, h->expected, NULL);
        a->work = true;
    }
}

/* ---- cancel (§11) ------------------------------------------------------------------------ */

static void on_cancel(flota_agent *a, const uint8_t *p, size_t n)
{
    flota_cancel c;
    flota_held *h = &a->held;
    if (!flota_decode_cancel(p, n, &c)) {
        a->stats.messages_bad++;
        return;
    }
    if (h->state == FLOTA_IDLE || strcmp(c.update, h->update) != 0)
        return; /* not held: no answer needed (1.1) */
    if (h->state == FLOTA_INSTALLING || h->state == FLOTA_REBOOTING)
        return; /* too late */
    discard(a);
    /* The report carries the cancel's update and handle. */
    size_t m = flota_write_report(a->out, sizeof a->out, c.update, c.handle, "cancelled", false, 0,
                                  c.reason[0] ? c.reason : "operator", NULL);
    publish(a, "up/report", m, 1, false);
}

void flota_on_message(flota_agent *a, const char *t, const uint8_t *p, size_t n)
{
    const char *want = topic(a, "down/");
    size_t wl = strlen(want);
    if (strncmp(t, want, wl) != 0)
        return;
    const char *kind = t + wl;
    if (strcmp(kind, "chunk") == 0)
        on_chunk(a, p, n);
    else if (strcmp(kind, "offer") == 0)
        on_offer(a, p, n);
    else if (strcmp(kind, "cancel") == 0)
        on_cancel(a, p, n);
    /* anything else: ignored (§3) */
}

/* ---- verify, install, reboot (§9.1, §10) -------------------------------------------------- */

void flota_poll(flota_agent *a)
{
    flota_held *h = &a->held;
    if (!a->work || !a->subscribed)
        return;
    a->work = false;
    if (h->state == FLOTA_DOWNLOADED) {
        union {
            uint8_t b[FLOTA_SHA256_CTX_SIZE];
            uint64_t align;
        } ctx; /* final on a copy: the persisted state stays usable */
        uint8_t digest[32];
        bool ok = true;
        if (a->p->storage_read) {
            /* Hash what the slot holds: what will boot. */
            uint8_t block[128];
            a->p->sha256_init(a->p->user, ctx.b);
            for (uint32_t off = 0; ok && off < h->fw.size; off += sizeof block) {
                uint32_t n = h->fw.size - off < sizeof block ? h->fw.size - off : sizeof block;
                ok = a->p->storage_read(a->p->user, off, block, n);
                a->p->sha256_update(a->p->user, ctx.b, block, n);
            }
        } else {
            memcpy(ctx.b, h->sha.b, sizeof ctx.b);
        }
        a->p->sha256_final(a->p->user, ctx.b, digest);
        if (!ok || memcmp(digest, h->fw.sha256, 32) != 0) {
            fail(a, "bad_digest");
            return;
        }
        h->state = FLOTA_VERIFIED;
        report(a, "verified", false, 0, NULL);
    }
    if (h->state == FLOTA_VERIFIED) {
        h->state = FLOTA_INSTALLING;
        report(a, "installing", false, 0, NULL);
    }
    if (h->state != FLOTA_INSTALLING)
        return;
    if (!a->p->install(a->p->user, h->fw.version)) {
        fail(a, "install_failed");
        return;
    }
    h->state = FLOTA_REBOOTING;
    h->expected = h->fw.size;
    report(a, "rebooting", false, 0, NULL);
    /* Offline before the clean DISCONNECT, which discards the will (§5.6);
     * reboot at its PUBACK. */
    send_status(a, false, &a->offline_mid);
    if (a->offline_mid <= 0)
        do_reboot(a);
}
