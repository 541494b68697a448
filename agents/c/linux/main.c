/* flota-agent-c: the flota C core on Linux. libmosquitto for MQTT,
 * libsodium for SHA-256 and ed25519, files in a state directory for the
 * image slot and the agent's state, a shell command to install.
 *
 * State directory:
 *   slot.bin        the image being downloaded (the "inactive slot")
 *   kv-flota        the held transfer (flota_held), written atomically
 *   version         the version running now (written at boot from next-version)
 *   next-version    the version installed, booted by the next "reboot"
 *   confirmed       the last confirmed boot ("ok 1.1.0" or "rollback 1.1.0")
 *
 * A "reboot" disconnects, boots the installed version (the bootloader's
 * job on a device: rename next-version to version) and connects again; with
 * --reboot-command that command runs instead and the program exits. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <mosquitto.h>
#include <sodium.h>

#include "flota.h"

_Static_assert(sizeof(crypto_hash_sha256_state) <= FLOTA_SHA256_CTX_SIZE,
               "libsodium's SHA-256 state fits the core's context");

#define MAX_TAGS 32

typedef struct {
    /* options */
    const char *host, *id, *password, *dir, *install_cmd, *reboot_cmd, *version_file;
    int port, keepalive;
    unsigned install_timeout_s; /* then the install command's process group is killed */
    const char *initial_version, *model;
    flota_tag tags[MAX_TAGS];
    size_t ntags;
    uint32_t max_chunk, max_window, slot_size, persist_ms;
    uint8_t pk[32];
    bool has_pk;
    /* test faults */
    unsigned corrupt_every;   /* flip a payload byte of every Nth frame (CRC drops it) */
    bool corrupt_stored;      /* flip a byte written to the slot (bad_digest) */
    bool no_boot;             /* never comes back from the reboot */
    unsigned write_delay_ms;  /* slow flash: time per slot write */
    /* runtime */
    struct mosquitto *m;
    flota_agent agent;
    flota_config cfg;
    flota_platform plat;
    char version[FLOTA_MAX_STR + 1];
    int slot_fd;
    bool reboot_now, connected;
    unsigned long frames;
    unsigned long long bytes_rx;
    flota_stats total; /* of the runs before the last reboot */
} port;

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
    (void)sig;
    stop = 1;
}

static void logf_(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("flota-agent-c: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static void path(const port *p, const char *name, char *out, size_t cap)
{
    snprintf(out, cap, "%s/%s", p->dir, name);
}

/* write_file writes name atomically: a copy, fsync, rename. */
static bool write_file(const port *p, const char *name, const void *buf, size_t len)
{
    char fin[4096], tmp[4200];
    path(p, name, fin, sizeof fin);
    snprintf(tmp, sizeof tmp, "%s.tmp", fin);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0)
        return false;
    bool ok = write(fd, buf, len) == (ssize_t)len && fsync(fd) == 0;
    close(fd);
    if (!ok || rename(tmp, fin) != 0)
        return false;
    /* The rename itself survives a power cut once the directory is synced. */
    int dfd = open(p->dir, O_RDONLY | O_DIRECTORY);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    return true;
}

static int read_file(const port *p, const char *name, void *buf, size_t cap)
{
    char fn[4096];
    path(p, name, fn, sizeof fn);
    int fd = open(fn, O_RDONLY);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, buf, cap);
    close(fd);
    return (int)n;
}

/* ---- hooks ------------------------------------------------------------------ */

static int h_publish(void *u, const char *topic, const uint8_t *payload, size_t len, int qos,
                     bool retain)
{
    port *p = u;
    int mid = 0;
    const char *kind = strrchr(topic, '/') + 1;
    if (strcmp(kind, "ack") != 0)
        logf_("publish %s %.*s", kind, (int)len, (const char *)payload);
    else
        logf_("ack %.*s", (int)len, (const char *)payload);
    if (mosquitto_publish(p->m, &mid, topic, (int)len, payload, qos, retain) != MOSQ_ERR_SUCCESS)
        return -1;
    return qos ? mid : 0;
}

static bool h_subscribe(void *u, const char *filter, int qos)
{
    port *p = u;
    return mosquitto_subscribe(p->m, NULL, filter, qos) == MOSQ_ERR_SUCCESS;
}

static void h_disconnect(void *u)
{
    port *p = u;
    mosquitto_disconnect(p->m);
}

static bool h_storage_open(void *u, uint32_t size, uint32_t offset)
{
    port *p = u;
    char fn[4096];
    (void)size;
    path(p, "slot.bin", fn, sizeof fn);
    if (p->slot_fd >= 0)
        close(p->slot_fd);
    p->slot_fd = open(fn, O_RDWR | O_CREAT, 0600);
    if (p->slot_fd < 0)
        return false;
    struct stat st;
    if (fstat(p->slot_fd, &st) != 0 || (uint64_t)st.st_size < offset)
        return false;
    return ftruncate(p->slot_fd, offset) == 0;
}

static bool h_storage_write(void *u, uint32_t offset, const uint8_t *b, size_t n)
{
    port *p = u;
    uint8_t first = b[0];
    if (p->write_delay_ms)
        usleep(p->write_delay_ms * 1000u);
    if (p->corrupt_stored && offset == 0) {
        first ^= 0xFF;
        if (pwrite(p->slot_fd, &first, 1, offset) != 1)
            return false;
        return pwrite(p->slot_fd, b + 1, n - 1, offset + 1) == (ssize_t)(n - 1);
    }
    return pwrite(p->slot_fd, b, n, offset) == (ssize_t)n;
}

static bool h_storage_sync(void *u)
{
    port *p = u;
    return p->slot_fd < 0 || fdatasync(p->slot_fd) == 0;
}

static bool h_storage_read(void *u, uint32_t offset, uint8_t *b, size_t n)
{
    port *p = u;
    if (p->slot_fd < 0) {
        char fn[4096];
        path(p, "slot.bin", fn, sizeof fn);
        p->slot_fd = open(fn, O_RDWR);
    }
    return p->slot_fd >= 0 && pread(p->slot_fd, b, n, offset) == (ssize_t)n;
}

static void h_storage_discard(void *u)
{
    port *p = u;
    char fn[4096];
    if (p->slot_fd >= 0)
        close(p->slot_fd);
    p->slot_fd = -1;
    path(p, "slot.bin", fn, sizeof fn);
    unlink(fn);
}

static int h_kv_get(void *u, const char *key, uint8_t *buf, size_t cap)
{
    char name[64];
    snprintf(name, sizeof name, "kv-%s", key);
    return read_file(u, name, buf, cap);
}

static bool h_kv_set(void *u, const char *key, const uint8_t *buf, size_t len)
{
    port *p = u;
    char name[64];
    snprintf(name, sizeof name, "kv-%s", key);
    if (!write_file(p, name, buf, len))
        return false;
    if (len == sizeof(flota_held)) {
        const flota_held *h = (const flota_held *)buf;
        logf_("persist state=%s update=%s offset=%u applied=%llu bad_frames=%u",
              h->state ? flota_state_name((flota_state)h->state) : "idle", h->update,
              (unsigned)h->expected, (unsigned long long)p->agent.stats.bytes_applied,
              (unsigned)p->agent.stats.frames_bad);
    }
    return true;
}

static bool h_install(void *u, const char *version)
{
    port *p = u;
    char img[4096];
    path(p, "slot.bin", img, sizeof img);
    h_storage_sync(p);
    if (p->install_cmd) {
        pid_t pid = fork();
        if (pid < 0)
            return false;
        if (pid == 0) {
            /* A process group of its own, so that a timeout kills all of it. */
            setpgid(0, 0);
            /* The installer gets stdin, stdout and stderr only: not the
             * MQTT socket nor the agent's open files. */
            long max = sysconf(_SC_OPEN_MAX);
            if (max < 0 || max > 65536)
                max = 65536;
            for (int fd = 3; fd < max; fd++)
                close(fd);
            setenv("FLOTA_IMAGE", img, 1);
            setenv("FLOTA_VERSION", version, 1);
            execl("/bin/sh", "sh", "-c", p->install_cmd, "flota-install", img, version, (char *)NULL);
            _exit(127);
        }
        setpgid(pid, pid);
        /* A hung installer must not hold the agent forever: past
         * --install-timeout its whole group is killed and the install
         * fails. */
        int st = 0;
        uint64_t waited_ms = 0;
        for (;;) {
            pid_t r = waitpid(pid, &st, WNOHANG);
            if (r == pid)
                break;
            if (r < 0 && errno != EINTR) {
                logf_("install command: waitpid: %s", strerror(errno));
                return false;
            }
            if (waited_ms >= (uint64_t)p->install_timeout_s * 1000u) {
                kill(-pid, SIGKILL);
                while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
                    ;
                logf_("install command killed after %us", p->install_timeout_s);
                return false;
            }
            usleep(50 * 1000);
            waited_ms += 50;
        }
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            logf_("install command failed (status %d)", st);
            return false;
        }
    }
    logf_("installed %s", version);
    return write_file(p, "next-version", version, strlen(version));
}

static void h_reboot(void *u)
{
    port *p = u;
    p->reboot_now = true;
}

static void h_confirm(void *u, bool booted_target)
{
    port *p = u;
    char line[128];
    int n = snprintf(line, sizeof line, "%s %s", booted_target ? "ok" : "rollback", p->version);
    logf_("confirmed boot: %s", line);
    write_file(p, "confirmed", line, (size_t)n);
}

static uint32_t h_now_ms(void *u)
{
    struct timespec ts;
    (void)u;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint32_t)(ts.tv_sec * 1000u + (uint32_t)(ts.tv_nsec / 1000000));
}

static void h_sha_init(void *u, void *ctx)
{
    (void)u;
    crypto_hash_sha256_init(ctx);
}

static void h_sha_update(void *u, void *ctx, const uint8_t *b, size_t n)
{
    (void)u;
    crypto_hash_sha256_update(ctx, b, n);
}

static void h_sha_final(void *u, void *ctx, uint8_t out[32])
{
    (void)u;
    crypto_hash_sha256_final(ctx, out);
}

static bool h_verify(void *u, const uint8_t sig[64], const uint8_t *msg, size_t len,
                     const uint8_t pk[32])
{
    (void)u;
    return crypto_sign_verify_detached(sig, msg, len, pk) == 0;
}

/* ---- MQTT callbacks ------------------------------------------------------------ */

static void cb_connect(struct mosquitto *m, void *u, int rc)
{
    port *p = u;
    (void)m;
    if (rc != 0) {
        logf_("connection refused: %s", mosquitto_connack_string(rc));
        return;
    }
    p->connected = true;
    logf_("connected");
    flota_on_connected(&p->agent);
}

static void cb_subscribe(struct mosquitto *m, void *u, int mid, int n, const int *granted)
{
    port *p = u;
    (void)m, (void)mid;
    if (n < 1 || granted[0] > 2) {
        logf_("subscription refused");
        return;
    }
    flota_on_subscribed(&p->agent);
}

static void cb_message(struct mosquitto *m, void *u, const struct mosquitto_message *msg)
{
    port *p = u;
    (void)m;
    uint8_t *payload = msg->payload;
    size_t len = (size_t)msg->payloadlen;
    const char *kind = strrchr(msg->topic, '/');
    if (kind && strcmp(kind, "/chunk") == 0) {
        p->frames++;
        if (len > FLOTA_FRAME_HEADER)
            p->bytes_rx += len - FLOTA_FRAME_HEADER;
        if (p->corrupt_every && p->frames % p->corrupt_every == 0 && len > FLOTA_FRAME_HEADER) {
            payload[len - 1] ^= 0x5A; /* on the wire: the CRC must catch it */
            logf_("corrupted frame %lu", p->frames);
        }
    } else {
        /* Down messages are logged escaped (printable ASCII only) and cut. */
        char safe[512 * 4 + 1];
        size_t o = 0;
        for (size_t i = 0; i < len && i < 512; i++) {
            uint8_t b = payload[i];
            if (b >= 0x20 && b < 0x7F && b != '\\')
                safe[o++] = (char)b;
            else
                o += (size_t)snprintf(safe + o, sizeof safe - o, "\\x%02x", b);
        }
        safe[o] = 0;
        logf_("received %s %s%s", kind ? kind + 1 : "?", safe, len > 512 ? "..." : "");
    }
    flota_on_message(&p->agent, msg->topic, payload, len);
}

static void cb_publish(struct mosquitto *m, void *u, int mid)
{
    port *p = u;
    (void)m;
    flota_on_published(&p->agent, mid);
}

static void cb_disconnect(struct mosquitto *m, void *u, int rc)
{
    port *p = u;
    (void)m;
    if (p->connected)
        logf_("disconnected (%d)", rc);
    p->connected = false;
    flota_on_disconnected(&p->agent);
}

/* ---- boot ------------------------------------------------------------------------ */

/* boot finds the running version: from --version-file (the image's own
 * word), or by playing the bootloader: the installed version becomes the
 * running one. */
static void boot(port *p)
{
    char v[FLOTA_MAX_STR + 1];
    char fn[4096];
    path(p, "next-version", fn, sizeof fn);
    if (p->version_file) {
        /* The image says what it is: a rollback shows as the old version. */
        FILE *f = fopen(p->version_file, "r");
        if (!f || !fgets(v, sizeof v, f)) {
            v[0] = 0;
        }
        if (f)
            fclose(f);
        v[strcspn(v, "\r\n")] = 0;
        snprintf(p->version, sizeof p->version, "%s", v[0] ? v : p->initial_version);
        unlink(fn);
        logf_("running %s", p->version);
        return;
    }
    int n = read_file(p, "next-version", v, sizeof v - 1);
    if (n > 0) {
        v[n] = 0;
        write_file(p, "version", v, (size_t)n);
        unlink(fn);
    }
    n = read_file(p, "version", v, sizeof v - 1);
    if (n > 0) {
        v[n] = 0;
        snprintf(p->version, sizeof p->version, "%s", v);
    } else {
        snprintf(p->version, sizeof p->version, "%s", p->initial_version);
    }
    logf_("running %s", p->version);
}

static bool start(port *p)
{
    boot(p);
    p->cfg.version = p->version;
    if (!flota_init(&p->agent, &p->cfg, &p->plat)) {
        logf_("invalid configuration");
        return false;
    }
    p->m = mosquitto_new(p->id, true, p);
    if (!p->m)
        return false;
    const char *wt, *wp;
    flota_will(&p->agent, &wt, &wp);
    mosquitto_will_set(p->m, wt, (int)strlen(wp), wp, 1, true);
    if (p->password)
        mosquitto_username_pw_set(p->m, p->id, p->password);
    mosquitto_connect_callback_set(p->m, cb_connect);
    mosquitto_subscribe_callback_set(p->m, cb_subscribe);
    mosquitto_message_callback_set(p->m, cb_message);
    mosquitto_publish_callback_set(p->m, cb_publish);
    mosquitto_disconnect_callback_set(p->m, cb_disconnect);
    mosquitto_int_option(p->m, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V311);
    return true;
}

static void stop_mqtt(port *p)
{
    if (p->m)
        mosquitto_destroy(p->m);
    p->m = NULL;
    p->connected = false;
}

/* run connects and serves until a reboot or a signal. */
static void run(port *p)
{
    unsigned backoff = 1;
    bool up = false;
    while (!stop && !p->reboot_now) {
        if (!up) {
            int rc = mosquitto_connect(p->m, p->host, p->port, p->keepalive);
            if (rc != MOSQ_ERR_SUCCESS) {
                logf_("connect: %s", mosquitto_strerror(rc));
                sleep(backoff);
                backoff = backoff < 16 ? backoff * 2 : 30;
                continue;
            }
            up = true;
        }
        int rc = mosquitto_loop(p->m, 50, 1);
        if (rc != MOSQ_ERR_SUCCESS && !p->reboot_now) {
            if (p->connected) {
                p->connected = false;
                flota_on_disconnected(&p->agent);
            }
            sleep(backoff);
            backoff = backoff < 16 ? backoff * 2 : 30;
            if (mosquitto_reconnect(p->m) != MOSQ_ERR_SUCCESS)
                continue;
        } else if (p->connected) {
            backoff = 1;
        }
        flota_poll(&p->agent);
    }
}

static void add_stats(flota_stats *t, const flota_stats *s)
{
    t->frames_bad += s->frames_bad;
    t->frames_stale += s->frames_stale;
    t->frames_dup += s->frames_dup;
    t->messages_bad += s->messages_bad;
    t->persists += s->persists;
    t->bytes_applied += s->bytes_applied;
}

/* ---- options ------------------------------------------------------------------------ */

static bool read_public_key(const char *file, uint8_t pk[32])
{
    FILE *f = fopen(file, "r");
    if (!f)
        return false;
    char line[256], b64[1024] = "";
    bool in = false;
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\r\n")] = 0;
        if (strncmp(line, "-----BEGIN PUBLIC KEY", 21) == 0)
            in = true;
        else if (strncmp(line, "-----END", 8) == 0)
            in = false;
        else if (in && strlen(b64) + strlen(line) < sizeof b64)
            strcat(b64, line);
    }
    fclose(f);
    uint8_t der[128];
    int n = flota_base64_decode(b64, der, sizeof der);
    /* PKIX SubjectPublicKeyInfo of an ed25519 key: 12 bytes, then the key. */
    static const uint8_t prefix[12] = {0x30, 0x2a, 0x30, 0x05, 0x06, 0x03,
                                       0x2b, 0x65, 0x70, 0x03, 0x21, 0x00};
    if (n != 44 || memcmp(der, prefix, 12) != 0)
        return false;
    memcpy(pk, der + 12, 32);
    return true;
}

/* read_credentials finds id's secret in a CSV file of id,secret lines. */
static char *read_credentials(const char *file, const char *id)
{
    FILE *f = fopen(file, "r");
    if (!f)
        return NULL;
    char line[512];
    char *secret = NULL;
    size_t idl = strlen(id);
    while (!secret && fgets(line, sizeof line, f)) {
        line[strcspn(line, "\r\n")] = 0;
        if (strncmp(line, id, idl) == 0 && line[idl] == ',')
            secret = strdup(line + idl + 1);
    }
    fclose(f);
    return secret;
}

static bool parse_tags(port *p, char *s)
{
    for (char *tok = strtok(s, ","); tok; tok = strtok(NULL, ",")) {
        char *eq = strchr(tok, '=');
        if (!eq || p->ntags == MAX_TAGS)
            return false;
        *eq = 0;
        p->tags[p->ntags].key = tok;
        p->tags[p->ntags].value = eq + 1;
        p->ntags++;
    }
    return true;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: flota-agent-c --broker tcp://HOST:PORT --id ID --state-dir DIR [options]\n"
            "  --password SECRET | --credentials FILE (CSV id,secret)\n"
            "  --model M --version V (running version before any install) --tags k=v,...\n"
            "  --version-file FILE (the running image's version, read at every start)\n"
            "  --public-key FILE (PEM ed25519: refuse unsigned images and downgrades)\n"
            "  --install-command CMD (sh -c CMD with $1 = image, $2 = version; exit 0 = installed)\n"
            "  --install-timeout S (then the command's process group is killed: install_failed; default 1800)\n"
            "  --reboot-command CMD (run instead of the built-in reboot, then exit)\n"
            "  --max-chunk N (default 4096) --max-window N (default 4) --slot-size N (default 64 MiB)\n"
            "  --persist-interval-ms N (least time between two writes of the offset, default 0)\n"
            "  --keepalive S (default 30)\n"
            "test faults: --corrupt-every N (flip a byte of every Nth frame), --corrupt-stored\n"
            "  (flip a stored byte), --no-boot (never come back),\n"
            "  --write-delay-ms N (slow flash)\n");
}

int main(int argc, char **argv)
{
    static port p;
    const char *broker = NULL, *creds = NULL, *pkfile = NULL;
    p.model = "";
    p.initial_version = "1.0.0";
    p.max_chunk = 4096;
    p.max_window = 4;
    p.slot_size = 64u << 20;
    p.keepalive = 30;
    p.install_timeout_s = 1800;
    p.slot_fd = -1;
    static const struct option opts[] = {
        {"broker", 1, 0, 'b'}, {"id", 1, 0, 'i'}, {"password", 1, 0, 'P'},
        {"credentials", 1, 0, 'C'}, {"state-dir", 1, 0, 'd'}, {"model", 1, 0, 'm'},
        {"version", 1, 0, 'v'}, {"tags", 1, 0, 't'}, {"public-key", 1, 0, 'k'},
        {"install-command", 1, 0, 'I'}, {"reboot-command", 1, 0, 'R'},
        {"install-timeout", 1, 0, 'T'},
        {"max-chunk", 1, 0, 'c'}, {"max-window", 1, 0, 'w'}, {"slot-size", 1, 0, 's'},
        {"persist-interval-ms", 1, 0, 'p'}, {"keepalive", 1, 0, 'K'},
        {"corrupt-every", 1, 0, 'x'}, {"corrupt-stored", 0, 0, 'X'},
{"no-boot", 0, 0, 'N'}, {"write-delay-ms", 1, 0, 'D'},
        {"version-file", 1, 0, 'V'}, {"help", 0, 0, 'h'}, {0, 0, 0, 0},
    };
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'b': broker = optarg; break;
        case 'i': p.id = optarg; break;
        case 'P': p.password = optarg; break;
        case 'C': creds = optarg; break;
        case 'd': p.dir = optarg; break;
        case 'm': p.model = optarg; break;
        case 'v': p.initial_version = optarg; break;
        case 't':
            if (!parse_tags(&p, optarg)) {
                usage();
                return 2;
            }
            break;
        case 'k': pkfile = optarg; break;
        case 'I': p.install_cmd = optarg; break;
        case 'T':
            p.install_timeout_s = (unsigned)strtoul(optarg, NULL, 10);
            if (p.install_timeout_s == 0) {
                usage();
                return 2;
            }
            break;
        case 'R': p.reboot_cmd = optarg; break;
        case 'c': p.max_chunk = (uint32_t)strtoul(optarg, NULL, 10); break;
        case 'w': p.max_window = (uint32_t)strtoul(optarg, NULL, 10); break;
        case 's': p.slot_size = (uint32_t)strtoul(optarg, NULL, 10); break;
        case 'p': p.persist_ms = (uint32_t)strtoul(optarg, NULL, 10); break;
        case 'K': p.keepalive = atoi(optarg); break;
        case 'x': p.corrupt_every = (unsigned)strtoul(optarg, NULL, 10); break;
        case 'X': p.corrupt_stored = true; break;
        case 'N': p.no_boot = true; break;
        case 'V': p.version_file = optarg; break;
        case 'D': p.write_delay_ms = (unsigned)strtoul(optarg, NULL, 10); break;
        default: usage(); return 2;
        }
    }
    if (!broker || !p.id || !p.dir) {
        usage();
        return 2;
    }
    const char *hp = strstr(broker, "://") ? strstr(broker, "://") + 3 : broker;
    static char host[256];
    snprintf(host, sizeof host, "%s", hp);
    char *colon = strrchr(host, ':');
    p.port = 1883;
    if (colon) {
        *colon = 0;
        p.port = atoi(colon + 1);
    }
    p.host = host;
    if (creds && !(p.password = read_credentials(creds, p.id))) {
        logf_("no secret for %s in %s", p.id, creds);
        return 2;
    }
    if (sodium_init() < 0)
        return 1;
    if (pkfile) {
        if (!read_public_key(pkfile, p.pk)) {
            logf_("%s: not a PEM ed25519 public key", pkfile);
            return 2;
        }
        p.has_pk = true;
    }
    mkdir(p.dir, 0700);

    p.cfg = (flota_config){
        .id = p.id, .model = p.model, .tags = p.tags, .ntags = p.ntags,
        .max_chunk = p.max_chunk, .max_window = p.max_window, .slot_size = p.slot_size,
        .public_key = p.has_pk ? p.pk : NULL, .persist_interval_ms = p.persist_ms,
    };
    p.plat = (flota_platform){
        .user = &p, .publish = h_publish, .subscribe = h_subscribe, .disconnect = h_disconnect,
        .storage_open = h_storage_open, .storage_write = h_storage_write,
        .storage_sync = h_storage_sync, .storage_read = h_storage_read, .storage_discard = h_storage_discard,
        .kv_get = h_kv_get, .kv_set = h_kv_set, .install = h_install, .reboot = h_reboot,
        .confirm = h_confirm, .now_ms = h_now_ms, .sha256_init = h_sha_init,
        .sha256_update = h_sha_update, .sha256_final = h_sha_final, .ed25519_verify = h_verify,
    };
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    signal(SIGPIPE, SIG_IGN);
    mosquitto_lib_init();
    int rc = 0;
    while (!stop) {
        if (!start(&p)) {
            rc = 1;
            break;
        }
        run(&p);
        stop_mqtt(&p);
        if (!p.reboot_now)
            break;
        p.reboot_now = false;
        add_stats(&p.total, &p.agent.stats);
        if (p.slot_fd >= 0)
            close(p.slot_fd);
        p.slot_fd = -1;
        if (p.reboot_cmd) {
            logf_("rebooting: %s", p.reboot_cmd);
            rc = system(p.reboot_cmd) == 0 ? 0 : 1;
            break;
        }
        if (p.no_boot) {
            logf_("rebooting: never comes back");
            break;
        }
        logf_("rebooting");
        usleep(100 * 1000);
    }
    add_stats(&p.total, &p.agent.stats);
    logf_("stats frames=%lu bytes_rx=%llu bytes_applied=%llu frames_bad=%u frames_dup=%u "
          "frames_stale=%u messages_bad=%u persists=%u",
          p.frames, p.bytes_rx, (unsigned long long)p.total.bytes_applied,
          (unsigned)p.total.frames_bad, (unsigned)p.total.frames_dup,
          (unsigned)p.total.frames_stale, (unsigned)p.total.messages_bad,
          (unsigned)p.total.persists);
    mosquitto_lib_cleanup();
    return rc;
}
