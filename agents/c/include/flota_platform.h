/* flota_platform.h: the hooks a port gives the flota core.
 *
 * The core (flota.h) owns no socket, file, clock or crypto of its own: it
 * calls these functions, and the port calls the core's flota_on_*()
 * functions when something happens (connected, message, PUBACK). Every hook
 * receives the port's `user` pointer. All hooks are called from the thread
 * that calls the core; none is called re-entrantly.
 *
 * Required hooks are marked (req); an optional one may be NULL.
 */
#ifndef FLOTA_PLATFORM_H
#define FLOTA_PLATFORM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Bytes the core reserves for a SHA-256 context. The context is persisted
 * as raw bytes with the held transfer (so a power cut resumes the running
 * hash), so it must be a plain struct without pointers: libsodium's
 * crypto_hash_sha256_state (104 bytes), mbedTLS's mbedtls_sha256_context
 * (108 bytes without the hardware accelerator) and most hardware engines'
 * saved state fit. */
#ifndef FLOTA_SHA256_CTX_SIZE
#define FLOTA_SHA256_CTX_SIZE 128
#endif

typedef struct flota_platform {
    void *user;

    /* ---- MQTT: the port owns the connection ---------------------------- */
    /* (req) Publish; returns the message ID (> 0) of a QoS 1 publish, whose
     * PUBACK the port reports with flota_on_published(); 0 for QoS 0; < 0
     * when the message could not be queued. */
    int (*publish)(void *user, const char *topic, const uint8_t *payload, size_t len,
                   int qos, bool retain);
    /* (req) Subscribe; the port calls flota_on_subscribed() at the SUBACK. */
    bool (*subscribe)(void *user, const char *filter, int qos);
    /* (req) Clean DISCONNECT (discards the will), before a reboot. */
    void (*disconnect)(void *user);

    /* ---- storage of the new image (the inactive slot) ------------------ */
    /* (req) Prepare the slot for an image of size bytes. offset 0: a fresh
     * start, erase; offset > 0: keep bytes [0, offset) written before (after
     * a reboot or a power cut). */
    bool (*storage_open)(void *user, uint32_t size, uint32_t offset);
    /* (req) Write n bytes at offset (always the next byte: no gap). */
    bool (*storage_write)(void *user, uint32_t offset, const uint8_t *p, size_t n);
    /* Make every byte written so far durable; called before the core
     * persists an offset that counts them. NULL: writes are durable. */
    bool (*storage_sync)(void *user);
    /* Read n bytes of the slot at offset. When given, the core checks the
     * SHA-256 of what the slot holds (catching a bad flash write) instead
     * of the running hash of what it received. NULL: the running hash. */
    bool (*storage_read)(void *user, uint32_t offset, uint8_t *p, size_t n);
    /* Erase the slot (cancel, failure). NULL: nothing to do. */
    void (*storage_discard)(void *user);

    /* ---- persistent key-value store for the agent's own state ---------- */
    /* (req) Read key into buf; returns its length, or -1 when absent. */
    int (*kv_get)(void *user, const char *key, uint8_t *buf, size_t cap);
    /* (req) Write key atomically (the old value or the new one survives a
     * power cut, never a mix: write a copy and switch, or two banks). */
    bool (*kv_set)(void *user, const char *key, const uint8_t *buf, size_t len);

    /* ---- install, reboot, confirm -------------------------------------- */
    /* (req) Make the verified image in the slot the one to boot next
     * (mark the inactive bank bootable, run the installer, ...). */
    bool (*install)(void *user, const char *version);
    /* (req) Reboot into the installed image. On an MCU it does not return;
     * a port that returns boots the core again with flota_init(). */
    void (*reboot)(void *user);
    /* After the boot that follows an install, once the orchestrator has the
     * hello that tells it: booted_target is true when the running version is
     * the target (mark the image good, so the bootloader keeps it), false
     * after a rollback. NULL: nothing to confirm. */
    void (*confirm)(void *user, bool booted_target);

    /* ---- clock ----------------------------------------------------------- */
    /* Milliseconds from any origin, wrapping. Used to space the writes of
     * the held offset (flota_config.persist_interval_ms). NULL: no spacing. */
    uint32_t (*now_ms)(void *user);

    /* ---- crypto ---------------------------------------------------------- */
    /* (req) Incremental SHA-256 on a context of FLOTA_SHA256_CTX_SIZE bytes,
     * 8-byte aligned. final may destroy the context. */
    void (*sha256_init)(void *user, void *ctx);
    void (*sha256_update)(void *user, void *ctx, const uint8_t *p, size_t n);
    void (*sha256_final)(void *user, void *ctx, uint8_t out[32]);
    /* ed25519 (RFC 8032) verification of sig over msg with pk; true when it
     * verifies. Required when the device has a public key. */
    bool (*ed25519_verify)(void *user, const uint8_t sig[64], const uint8_t *msg, size_t len,
                           const uint8_t pk[32]);
} flota_platform;

#endif
