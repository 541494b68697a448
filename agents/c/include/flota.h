/* flota.h: the device side of the flota protocol (docs/PROTOCOL.md), in
 * C99 without dynamic allocation. All state lives in one flota_agent the
 * caller provides; the hooks are in flota_platform.h.
 *
 * The port drives the core:
 *   flota_init()            at boot (loads the held transfer);
 *   flota_will()            the last will to set in CONNECT;
 *   flota_on_connected()    after the CONNACK (the core subscribes);
 *   flota_on_subscribed()   after the SUBACK (status online, hello);
 *   flota_on_message()      for every message on the down topics;
 *   flota_on_published()    for every PUBACK of a QoS 1 publish;
 *   flota_on_disconnected() when the connection ends;
 *   flota_poll()            from the main loop: verifies, installs, reboots.
 */
#ifndef FLOTA_H
#define FLOTA_H

#include "flota_platform.h"

#define FLOTA_PROTOCOL_V   1
#define FLOTA_MAX_CONTROL  4096 /* largest JSON control message (§4) */
#define FLOTA_MAX_STR      64   /* update IDs, versions, models, names */
#define FLOTA_FRAME_HEADER 20
#define FLOTA_SIG_B64      88
#ifndef FLOTA_OUT_SIZE
#define FLOTA_OUT_SIZE 768 /* largest message the core writes (a hello with its tags) */
#endif

typedef enum {
    FLOTA_IDLE = 0,
    FLOTA_DOWNLOADING,
    FLOTA_DOWNLOADED,
    FLOTA_VERIFIED,
    FLOTA_INSTALLING,
    FLOTA_REBOOTING
} flota_state;

typedef struct {
    const char *key, *value;
} flota_tag;

typedef struct {
    const char *id;       /* device ID = MQTT client ID, [A-Za-z0-9._-]{1,64} */
    const char *model;    /* hardware model */
    const char *version;  /* version running now (the image's own) */
    const flota_tag *tags;
    size_t ntags;
    const char *const *caps;
    size_t ncaps;
    /* Largest chunk payload and window this device buffers: stated in the
     * hello (protocol 1.1) and checked on every offer. A device whose MQTT
     * receive buffer holds 4 KiB + 20 + topic sets max_chunk 4096. 0: no
     * limit stated, every chunk size taken. */
    uint32_t max_chunk, max_window;
    uint32_t slot_size;          /* largest image the slot stores */
    const uint8_t *public_key;   /* 32-byte ed25519 key, or NULL (unsigned images) */
    uint32_t persist_interval_ms; /* least time between two writes of the offset */
} flota_config;

typedef struct {
    char name[FLOTA_MAX_STR + 1];
    char version[FLOTA_MAX_STR + 1];
    char model[FLOTA_MAX_STR + 1];
    char signature[FLOTA_SIG_B64 + 1];
    uint32_t size;
    uint8_t sha256[32];
    bool allow_downgrade;
    bool has_signature;
    bool signature_too_long;
} flota_firmware;

typedef struct {
    char update[FLOTA_MAX_STR + 1];
    uint32_t handle;
    flota_firmware fw;
    uint32_t chunk_size, window;
} flota_offer;

typedef struct {
    char update[FLOTA_MAX_STR + 1];
    uint32_t handle;
    char reason[FLOTA_MAX_STR + 1];
} flota_cancel;

typedef struct {
    uint8_t flags;
    uint32_t handle, offset, length;
    const uint8_t *payload;
} flota_frame;

/* What the core keeps across power cuts (persisted with kv_set under
 * "flota"). Raw bytes of this build: a firmware that changes this struct
 * changes magic. */
typedef struct {
    uint32_t magic;
    uint8_t state; /* flota_state */
    char update[FLOTA_MAX_STR + 1];
    uint32_t handle;
    flota_firmware fw;
    uint32_t expected; /* bytes held, from byte 0 */
    char done_update[FLOTA_MAX_STR + 1]; /* last update rebooted into */
    union {
        uint8_t b[FLOTA_SHA256_CTX_SIZE];
        uint64_t align;
    } sha; /* running SHA-256 over [0, expected) */
    uint32_t crc;
} flota_held;

/* Counters of what the core refused or did, for the port to log. */
typedef struct {
    uint32_t frames_bad;    /* dropped: bad version, length or CRC */
    uint32_t frames_stale;  /* dropped: handle of no held transfer */
    uint32_t frames_dup;    /* not at the expected offset: duplicate ack */
    uint32_t messages_bad;  /* control messages refused (§4) */
    uint32_t persists;      /* writes of the held state */
    uint64_t bytes_applied; /* payload bytes written to the slot */
} flota_stats;

typedef struct {
    flota_config cfg;
    const flota_platform *p;
    flota_held held;
    flota_stats stats;
    uint32_t window;    /* of the latest offer adopted; 1 before one */
    uint32_t unacked;   /* in-order chunks since the last ack */
    uint32_t last_persist_ms;
    int hello_mid;      /* message ID of the last hello (QoS 1) */
    int offline_mid;    /* message ID of the offline status before a reboot */
    bool connected, subscribed, storage_ready;
    bool work;          /* download complete, or install to go on: flota_poll */
    bool rebooted;      /* reboot() returned: the port boots again */
    char topic[96];
    char out[FLOTA_OUT_SIZE];
} flota_agent;

/* flota_init loads the held transfer from the key-value store. cfg's
 * strings must outlive the agent. Returns false for a config the core
 * cannot use (an ID out of its charset, a missing hook). */
bool flota_init(flota_agent *a, const flota_config *cfg, const flota_platform *p);

/* flota_will gives the last will to set in CONNECT: QoS 1, retained. The
 * topic points into a, valid until the next call into the core. */
void flota_will(flota_agent *a, const char **topic, const char **payload);

void flota_on_connected(flota_agent *a);
void flota_on_subscribed(flota_agent *a);
void flota_on_disconnected(flota_agent *a);
void flota_on_message(flota_agent *a, const char *topic, const uint8_t *payload, size_t len);
void flota_on_published(flota_agent *a, int mid);
void flota_poll(flota_agent *a);

/* flota_state_name: "downloading", ... ("" for IDLE). */
const char *flota_state_name(flota_state s);

/* ---- the codec, exposed for tests and fuzzing ------------------------- */

/* Decoders return true for a message valid under §4-§6 (strict JSON, v 1,
 * required fields, types and ranges); out is meaningful only then. */
bool flota_decode_offer(const uint8_t *p, size_t n, flota_offer *out);
bool flota_decode_cancel(const uint8_t *p, size_t n, flota_cancel *out);
bool flota_decode_frame(const uint8_t *p, size_t n, flota_frame *out);
/* flota_json_valid: p is one strict JSON object (RFC 8259) of at most
 * FLOTA_MAX_CONTROL bytes, valid UTF-8, with "v":1. */
bool flota_json_valid(const uint8_t *p, size_t n);

uint32_t flota_crc32c(uint32_t crc, const uint8_t *p, size_t n);
/* flota_signed_bytes writes the bytes §5.7 signs into buf; returns their
 * length, or 0 when cap is too small. */
size_t flota_signed_bytes(const flota_firmware *fw, uint8_t *buf, size_t cap);
/* flota_version_cmp: the version order of §5.4. Returns -1, 0 or 1, or 2
 * when the order is unknown (a string that is not a version). */
int flota_version_cmp(const char *a, const char *b);
/* flota_base64_decode: standard base64 with padding; returns the decoded
 * length, or -1 when malformed or over cap. */
int flota_base64_decode(const char *s, uint8_t *out, size_t cap);

/* Writers of the up messages, into buf; return the length, or 0 when cap
 * is too small. */
size_t flota_write_hello(const flota_agent *a, char *buf, size_t cap);
size_t flota_write_report(char *buf, size_t cap, const char *update, uint32_t handle,
                          const char *state, bool with_offset, uint32_t offset,
                          const char *reason, const char *version);
size_t flota_write_ack(char *buf, size_t cap, uint32_t handle, uint32_t offset);

#endif
