/*
 * telehub-sensor: a device that streams readings to a telehub hub and
 * acknowledges its notifications, on the C reference client.
 *
 *   telehub-sensor --url wss://localhost:8443 --ca certs/ca.pem --token-file dev.jwt \
 *       --category env.temperature --count 100 --interval-ms 1000
 *
 * It prints one line per event on stdout (machine-readable: a word, then
 * key=value pairs), so scripts and tests can follow it:
 *
 *   boot 1234...                       the boot id (seq starts at 1 under it)
 *   connected extensions=none          the upgrade succeeded (no permessage-deflate)
 *   welcome subject=dev-1 rate=100 burst=200 max_message_bytes=65536 confirmations=1
 *   confirmed 42 unconfirmed=3 rate_limited=0 retry_after_ms=0
 *   notification n0123... severity=critical redelivery=0 title=...
 *   acked n0123...
 *   error code=2 retry_after_ms=100 message=...
 *   closed code=1001 reconnect_in_ms=612 unconfirmed=7
 *   done published=100 sent=104 resent=4 confirmed=100 ...
 *
 * With --count N it exits 0 once N messages are published and all confirmed
 * (and --acks K notifications acknowledged, if given); 2 if --timeout-s runs
 * out first; 1 on bad arguments. Without either it runs until SIGINT/SIGTERM.
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "telehub_client.h"
#include "telehub_lws.h"

typedef struct {
    telehub_client client;
    const char *category;
    uint64_t count;
    uint64_t interval_ms;
    uint64_t acks_wanted;
    uint64_t acked;
    uint64_t timeout_ms;
    uint64_t started_ms;
    uint64_t next_publish_ms;
    bool full_reported;
    int exit_code;
} sensor;

static volatile sig_atomic_t interrupted = 0;

static void on_signal(int sig)
{
    (void)sig;
    interrupted = 1;
}

static uint64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Prints a received string on one line: control characters become '?'. */
static void print_str(telehub_str s)
{
    size_t i;
    for (i = 0; i < s.len; i++) {
        char ch = s.ptr[i];
        putchar((unsigned char)ch < 0x20 || ch == 0x7f ? '?' : ch);
    }
}

static const char *severity_name(int s)
{
    switch (s) {
    case TELEHUB_SEVERITY_INFO:
        return "info";
    case TELEHUB_SEVERITY_WARNING:
        return "warning";
    case TELEHUB_SEVERITY_CRITICAL:
        return "critical";
    default:
        return "unspecified";
    }
}

static void on_welcome(void *user, const telehub_welcome *w)
{
    (void)user;
    fputs("welcome subject=", stdout);
    print_str(w->subject);
    printf(" rate=%lu burst=%lu max_message_bytes=%lu confirmations=%d\n",
           (unsigned long)w->rate_per_second, (unsigned long)w->burst,
           (unsigned long)w->max_message_bytes, w->confirmations ? 1 : 0);
}

static void on_confirmed(void *user, uint64_t through, size_t rate_limited, uint32_t retry_after_ms)
{
    sensor *s = (sensor *)user;
    printf("confirmed %llu unconfirmed=%lu rate_limited=%lu retry_after_ms=%lu\n",
           (unsigned long long)through, (unsigned long)telehub_unconfirmed(&s->client),
           (unsigned long)rate_limited, (unsigned long)retry_after_ms);
}

static bool on_notification(void *user, const telehub_notification *n)
{
    (void)user;
    printf("notification %s severity=%s redelivery=%d payload_bytes=%lu title=", n->id,
           severity_name(n->severity), n->redelivery ? 1 : 0, (unsigned long)n->payload.len);
    print_str(n->title);
    putchar('\n');
    /* Acted upon at once: acknowledge (CRITICAL ones; others with --ack-all). */
    return true;
}

static void on_acked(void *user, const char *id)
{
    sensor *s = (sensor *)user;
    s->acked++;
    printf("acked %s\n", id);
}

static void on_error(void *user, int code, telehub_str message, uint32_t retry_after_ms)
{
    (void)user;
    printf("error code=%d retry_after_ms=%lu message=", code, (unsigned long)retry_after_ms);
    print_str(message);
    putchar('\n');
}

static void on_closed(void *user, int code, uint32_t reconnect_in_ms)
{
    sensor *s = (sensor *)user;
    printf("closed code=%d reconnect_in_ms=%lu unconfirmed=%lu\n", code, (unsigned long)reconnect_in_ms,
           (unsigned long)telehub_unconfirmed(&s->client));
}

static void on_connected(void *user, const char *extensions)
{
    (void)user;
    printf("connected extensions=%s\n", extensions[0] != '\0' ? extensions : "none");
}

static void on_failed(void *user, const char *reason)
{
    (void)user;
    printf("failed %s\n", reason);
}

/* Publishes the next sample when it is due; done once everything is confirmed. */
static bool tick(void *user, uint64_t now, uint32_t *next_ms)
{
    sensor *s = (sensor *)user;
    telehub_client *c = &s->client;
    const telehub_stats *st = telehub_get_stats(c);
    if (interrupted) {
        return false;
    }
    if (s->timeout_ms > 0 && now - s->started_ms >= s->timeout_ms) {
        printf("timeout published=%llu unconfirmed=%lu acked=%llu\n", (unsigned long long)st->published,
               (unsigned long)telehub_unconfirmed(c), (unsigned long long)s->acked);
        s->exit_code = 2;
        return false;
    }
    if (s->count > 0 || s->acks_wanted > 0) {
        bool published_all = st->published >= s->count && telehub_unconfirmed(c) == 0;
        if (published_all && s->acked >= s->acks_wanted) {
            return false;
        }
    }
    if ((s->count == 0 && s->acks_wanted == 0) || st->published < s->count) {
        if (now >= s->next_publish_ms) {
            uint64_t seq = telehub_last_seq(c) + 1;
            telehub_reading r[3];
            telehub_result res;
            r[0] = telehub_number("temperature", 20.0 + (double)(seq % 20) * 0.25, "Cel");
            r[1] = telehub_integer("sample", (int64_t)seq, NULL);
            r[2] = telehub_flag("ok", true);
            res = telehub_publish(c, s->category, wall_ms(), r, 3, NULL);
            if (res == TELEHUB_OK) {
                s->full_reported = false;
                s->next_publish_ms += s->interval_ms;
                if (s->next_publish_ms < now) {
                    /* Fell behind (the ring was full): no burst to catch up. */
                    s->next_publish_ms = now;
                }
            } else if (res == TELEHUB_ERR_FULL) {
                /* Every slot holds an unconfirmed message: sample again later. */
                if (!s->full_reported) {
                    printf("full unconfirmed=%lu\n", (unsigned long)telehub_unconfirmed(c));
                    s->full_reported = true;
                }
                s->next_publish_ms = now + (s->interval_ms > 100 ? s->interval_ms : 100);
            } else {
                printf("refused %d\n", (int)res);
                s->exit_code = 1;
                return false;
            }
        }
        *next_ms = s->next_publish_ms > now ? (uint32_t)(s->next_publish_ms - now) : 0;
    }
    return true;
}

static char *read_token_file(const char *path)
{
    static char buf[4200];
    size_t n;
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        fprintf(stderr, "telehub-sensor: %s: %s\n", path, strerror(errno));
        return NULL;
    }
    n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' ')) {
        buf[--n] = '\0';
    }
    return buf;
}

/* A random non-zero boot id: a new run of seqs at every start. */
static uint64_t random_boot_id(void)
{
    uint64_t id = 0;
    FILE *f = fopen("/dev/urandom", "rb");
    if (f != NULL) {
        if (fread(&id, sizeof id, 1, f) != 1) {
            id = 0;
        }
        fclose(f);
    }
    if (id == 0) {
        id = wall_ms() ^ ((uint64_t)clock() << 32);
    }
    return id != 0 ? id : 1;
}

static void usage(void)
{
    fputs("usage: telehub-sensor --url wss://HOST:PORT [--ca PEM] (--token JWT | --token-file FILE)\n"
          "         [--category CAT] [--count N] [--interval-ms MS] [--acks K] [--timeout-s S]\n"
          "         [--boot-id N] [--backoff-min-ms MS] [--backoff-max-ms MS] [--unpaced] [--ack-all]\n"
          "         [--verbose]\n",
          stderr);
}

static bool number_arg(const char *s, uint64_t *out)
{
    char *end;
    unsigned long long v;
    if (s == NULL || *s == '\0') {
        return false;
    }
    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno != 0 || *end != '\0') {
        return false;
    }
    *out = (uint64_t)v;
    return true;
}

int main(int argc, char **argv)
{
    static sensor s;
    telehub_config cfg;
    telehub_lws_config lws;
    const char *token = NULL;
    uint64_t boot_id = 0;
    uint64_t backoff_min = 0;
    uint64_t backoff_max = 0;
    uint64_t timeout_s = 0;
    int i;
    const telehub_stats *st;
    struct sigaction sa;

    memset(&cfg, 0, sizeof cfg);
    memset(&lws, 0, sizeof lws);
    s.category = "env.temperature";
    s.interval_ms = 1000;
    for (i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        bool ok = true;
        if (strcmp(a, "--unpaced") == 0) {
            cfg.unpaced = true;
            continue;
        } else if (strcmp(a, "--ack-all") == 0) {
            cfg.ack_all = true;
            continue;
        } else if (strcmp(a, "--verbose") == 0) {
            lws.verbose = true;
            continue;
        } else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage();
            return 0;
        }
        if (v == NULL) {
            fprintf(stderr, "telehub-sensor: %s needs a value\n", a);
            return 1;
        }
        if (strcmp(a, "--url") == 0) {
            lws.url = v;
        } else if (strcmp(a, "--ca") == 0) {
            lws.ca_file = v;
        } else if (strcmp(a, "--token") == 0) {
            token = v;
        } else if (strcmp(a, "--token-file") == 0) {
            token = read_token_file(v);
            ok = token != NULL;
        } else if (strcmp(a, "--category") == 0) {
            s.category = v;
        } else if (strcmp(a, "--count") == 0) {
            ok = number_arg(v, &s.count);
        } else if (strcmp(a, "--interval-ms") == 0) {
            ok = number_arg(v, &s.interval_ms);
        } else if (strcmp(a, "--acks") == 0) {
            ok = number_arg(v, &s.acks_wanted);
        } else if (strcmp(a, "--timeout-s") == 0) {
            ok = number_arg(v, &timeout_s);
        } else if (strcmp(a, "--boot-id") == 0) {
            ok = number_arg(v, &boot_id) && boot_id != 0;
        } else if (strcmp(a, "--backoff-min-ms") == 0) {
            ok = number_arg(v, &backoff_min) && backoff_min <= UINT32_MAX;
        } else if (strcmp(a, "--backoff-max-ms") == 0) {
            ok = number_arg(v, &backoff_max) && backoff_max <= UINT32_MAX;
        } else {
            fprintf(stderr, "telehub-sensor: unknown option %s\n", a);
            usage();
            return 1;
        }
        if (!ok) {
            fprintf(stderr, "telehub-sensor: bad value for %s: %s\n", a, v);
            return 1;
        }
        i++;
    }
    if (lws.url == NULL || token == NULL || token[0] == '\0') {
        usage();
        return 1;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);

    cfg.boot_id = boot_id != 0 ? boot_id : random_boot_id();
    cfg.backoff_min_ms = (uint32_t)backoff_min;
    cfg.backoff_max_ms = (uint32_t)backoff_max;
    cfg.cb.welcome = on_welcome;
    cfg.cb.confirmed = on_confirmed;
    cfg.cb.notification = on_notification;
    cfg.cb.acked = on_acked;
    cfg.cb.error = on_error;
    cfg.cb.closed = on_closed;
    cfg.user = &s;
    if (telehub_init(&s.client, &cfg) != TELEHUB_OK) {
        fputs("telehub-sensor: bad configuration\n", stderr);
        return 1;
    }
    s.started_ms = telehub_lws_now_ms();
    s.next_publish_ms = s.started_ms;
    s.timeout_ms = timeout_s * 1000u;

    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    lws.token = token;
    lws.tick = tick;
    lws.connected = on_connected;
    lws.failed = on_failed;
    lws.user = &s;
    printf("boot %llu\n", (unsigned long long)cfg.boot_id);
    if (telehub_lws_run(&s.client, &lws) != 0) {
        fputs("telehub-sensor: could not start (bad --url, --ca or token?)\n", stderr);
        return 1;
    }
    st = telehub_get_stats(&s.client);
    printf("done published=%llu sent=%llu resent=%llu confirmed=%llu rate_limited=%llu "
           "notifications=%llu redeliveries=%llu acks=%llu connects=%llu\n",
           (unsigned long long)st->published, (unsigned long long)st->sent,
           (unsigned long long)st->resent, (unsigned long long)st->confirmed,
           (unsigned long long)st->rate_limited, (unsigned long long)st->notifications,
           (unsigned long long)st->redeliveries, (unsigned long long)st->acks,
           (unsigned long long)st->connects);
    return s.exit_code;
}
