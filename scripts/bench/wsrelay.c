/*
 * wsrelay: the middle of the benchmark chain, an opaque TLS WebSocket relay.
 *
 * It plays the tunneling service's data plane only as far as every local proxy needs to run:
 * TLS (OpenSSL), the WebSocket upgrade (echoing the highest aws.iot.securetunneling subprotocol
 * offered, adding a channel-id), one SERVICE_IDS message built once from fixed bytes, pairing of
 * the first source with the first destination, and then each data frame's payload moved from
 * one side to the other. It never parses tunnel frames or protobuf, so it costs the same
 * whatever the proxies under test put in their frames. Pings are answered here.
 *
 * One thread and epoll. Each side has an input buffer (decrypted bytes not yet framed, at most
 * one read plus one partial frame) and an output buffer; the relay reads a side only while its
 * peer's output buffer has room for what one read can produce, so memory is fixed and
 * back-pressure reaches the sending proxy as a full TCP window.
 *
 * Events are printed on stdout, one line each, for the harness to wait on:
 *   listening PORT | connected ROLE CIPHER VERSION | paired | closed ROLE WHY | refused WHY
 *
 * Usage: wsrelay --cert FILE --key FILE [--port N] [--service NAME]... [--ciphers LIST]
 *                [--ciphersuites LIST] [--tls1_3]
 * --ciphers limits the TLS 1.2 suites and --ciphersuites the TLS 1.3 ones (OpenSSL's names, as
 * openssl s_server takes them); --tls1_3 refuses anything older than TLS 1.3.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

/* The largest frame payload the service takes: a 64,512-byte DATA message with its fields and
 * length prefix, aggregated up to 131,076 bytes. */
#define MAX_PAYLOAD 131076
#define MAX_HEADER 14
#define READ_BYTES (1 << 16)
#define IN_CAP (READ_BYTES + MAX_PAYLOAD + MAX_HEADER)
#define OUT_CAP (1 << 20)
#define REQUEST_LIMIT 8192
#define MAX_SIDES 16

enum state { HANDSHAKE, REQUEST, ACTIVE, CLOSED };

struct side {
    int fd;
    SSL *ssl;
    enum state state;
    const char *role;
    struct side *peer;
    unsigned char *in;
    size_t in_len;
    unsigned char *out;
    size_t out_start, out_len;
    uint32_t events;
    int starved; /* reading stopped because the peer's output buffer was full */
};

static SSL_CTX *context;
static int epoll_fd;
static struct side *sides[MAX_SIDES];
static unsigned char service_frame[64];
static size_t service_frame_len;

static void say(const char *format, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *format, ...) {
    va_list args;
    va_start(args, format);
    vprintf(format, args);
    va_end(args);
    putchar('\n');
    fflush(stdout);
}

static void die(const char *what) {
    fprintf(stderr, "wsrelay: %s\n", what);
    exit(2);
}

static size_t out_room(const struct side *s) { return OUT_CAP - s->out_start - s->out_len; }

/* Room for the output of one read of the peer: its payloads plus their (shorter) headers. */
static int peer_has_room(const struct side *s) {
    return s->peer && s->peer->state == ACTIVE && out_room(s->peer) >= IN_CAP;
}

static void watch(struct side *s) {
    uint32_t events = 0;
    if (s->state == HANDSHAKE || s->state == REQUEST || (s->state == ACTIVE && peer_has_room(s)))
        events |= EPOLLIN;
    if (s->out_len)
        events |= EPOLLOUT;
    if (events == s->events)
        return;
    struct epoll_event ev = {.events = events, .data.ptr = s};
    if (epoll_ctl(epoll_fd, EPOLL_CTL_MOD, s->fd, &ev) != 0)
        die("epoll_ctl MOD failed");
    s->events = events;
}

static void close_side(struct side *s, const char *why);

static void queue_bytes(struct side *s, const void *data, size_t n) {
    if (s->out_start && out_room(s) < n) {
        memmove(s->out, s->out + s->out_start, s->out_len);
        s->out_start = 0;
    }
    if (out_room(s) < n) {
        /* Cannot happen while peer_has_room gates every read; a bug if it does. */
        close_side(s, "output buffer overflow (relay bug)");
        return;
    }
    memcpy(s->out + s->out_start + s->out_len, data, n);
    s->out_len += n;
}

static size_t frame_header(unsigned char *h, int fin, int opcode, size_t length) {
    h[0] = (unsigned char)((fin ? 0x80 : 0) | opcode);
    if (length < 126) {
        h[1] = (unsigned char)length;
        return 2;
    }
    if (length < 65536) {
        h[1] = 126;
        h[2] = (unsigned char)(length >> 8);
        h[3] = (unsigned char)length;
        return 4;
    }
    h[1] = 127;
    for (int i = 0; i < 8; i++)
        h[2 + i] = (unsigned char)(length >> (56 - 8 * i));
    return 10;
}

/* XOR with the 4-byte mask, eight bytes at a time; the mask repeats from the payload's start. */
static void unmask(unsigned char *p, size_t n, const unsigned char mask[4]) {
    uint64_t m;
    unsigned char m8[8];
    for (int i = 0; i < 8; i++)
        m8[i] = mask[i & 3];
    memcpy(&m, m8, 8);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t v;
        memcpy(&v, p + i, 8);
        v ^= m;
        memcpy(p + i, &v, 8);
    }
    for (; i < n; i++)
        p[i] ^= mask[i & 3];
}

static void flush(struct side *s);
static void pump(struct side *s);

static void close_side(struct side *s, const char *why) {
    if (s->state == CLOSED)
        return;
    say("closed %s %s", s->role ? s->role : "client", why);
    s->state = CLOSED;
    epoll_ctl(epoll_fd, EPOLL_CTL_DEL, s->fd, NULL);
    SSL_free(s->ssl);
    close(s->fd);
    struct side *peer = s->peer;
    s->peer = NULL;
    if (peer && peer->state == ACTIVE) {
        /* A benchmark run ends with either proxy: close the other too, normally. */
        unsigned char close_frame[4] = {0x88, 2, 0x03, 0xE8};
        peer->peer = NULL;
        if (out_room(peer) >= sizeof close_frame)
            queue_bytes(peer, close_frame, sizeof close_frame);
        flush(peer);
        close_side(peer, "peer closed");
    }
}

/* Frames complete in s->in go out: data frames to the peer, pongs back to s. Returns 0 when s
 * was closed. */
static int forward_frames(struct side *s) {
    size_t pos = 0;
    while (s->in_len - pos >= 2) {
        unsigned char *f = s->in + pos;
        size_t avail = s->in_len - pos;
        int fin = f[0] >> 7, opcode = f[0] & 0x0F;
        if (f[0] & 0x70) {
            close_side(s, "protocol error: reserved bits set");
            return 0;
        }
        if (!(f[1] & 0x80)) {
            close_side(s, "protocol error: unmasked frame from a client");
            return 0;
        }
        size_t length = f[1] & 0x7F, head = 2;
        if (length == 126) {
            if (avail < 4)
                break;
            length = (size_t)f[2] << 8 | f[3];
            head = 4;
        } else if (length == 127) {
            if (avail < 10)
                break;
            uint64_t l = 0;
            for (int i = 0; i < 8; i++)
                l = l << 8 | f[2 + i];
            if (l > MAX_PAYLOAD) {
                close_side(s, "protocol error: frame over 131076 bytes");
                return 0;
            }
            length = (size_t)l;
            head = 10;
        }
        if (length > MAX_PAYLOAD) {
            close_side(s, "protocol error: frame over 131076 bytes");
            return 0;
        }
        if (opcode >= 8 && (length > 125 || !fin)) {
            close_side(s, "protocol error: bad control frame");
            return 0;
        }
        if (avail < head + 4 + length)
            break;
        unsigned char *mask = f + head, *payload = f + head + 4;
        unmask(payload, length, mask);
        unsigned char h[MAX_HEADER];
        if (opcode <= 2) {
            size_t hl = frame_header(h, fin, opcode, length);
            queue_bytes(s->peer, h, hl);
            queue_bytes(s->peer, payload, length);
        } else if (opcode == 9) {
            size_t hl = frame_header(h, 1, 10, length);
            queue_bytes(s, h, hl);
            queue_bytes(s, payload, length);
        } else if (opcode == 8) {
            size_t hl = frame_header(h, 1, 8, length);
            queue_bytes(s, h, hl);
            queue_bytes(s, payload, length);
            flush(s);
            close_side(s, "close frame");
            return 0;
        }
        pos += head + 4 + length;
        if (s->state != ACTIVE)
            return 0;
    }
    if (pos) {
        memmove(s->in, s->in + pos, s->in_len - pos);
        s->in_len -= pos;
    }
    return 1;
}

/* Writes what is queued for s; a side that drained may let its peer be read again. */
static void flush(struct side *s) {
    while (s->out_len && s->state != CLOSED) {
        int n = SSL_write(s->ssl, s->out + s->out_start, (int)(s->out_len > (1 << 30) ? (1 << 30) : s->out_len));
        if (n <= 0) {
            int e = SSL_get_error(s->ssl, n);
            if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ)
                break;
            close_side(s, "write failed");
            return;
        }
        s->out_start += (size_t)n;
        s->out_len -= (size_t)n;
        if (!s->out_len)
            s->out_start = 0;
    }
    if (s->state == CLOSED)
        return;
    watch(s);
    struct side *p = s->peer;
    if (p && p->state == ACTIVE && p->starved && peer_has_room(p)) {
        p->starved = 0;
        watch(p);
        /* Bytes already decrypted inside p's TLS object raise no epoll event: take them now. */
        if (SSL_pending(p->ssl))
            pump(p);
    }
}

static void pump(struct side *s) {
    for (int reads = 0; s->state == ACTIVE && s->peer; reads++) {
        if (!peer_has_room(s)) {
            s->starved = 1;
            break;
        }
        if (reads >= 8 && !SSL_pending(s->ssl))
            break; /* let the other direction move; epoll reports what the socket still holds */
        int n = SSL_read(s->ssl, s->in + s->in_len, READ_BYTES);
        if (n <= 0) {
            int e = SSL_get_error(s->ssl, n);
            if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
                break;
            close_side(s, e == SSL_ERROR_ZERO_RETURN ? "TLS closed" : "read failed or end of stream");
            return;
        }
        s->in_len += (size_t)n;
        if (!forward_frames(s))
            return;
    }
    if (s->state != ACTIVE)
        return;
    if (s->peer)
        flush(s->peer);
    flush(s);
    watch(s);
}

static void pair(struct side *s) {
    for (int i = 0; i < MAX_SIDES; i++) {
        struct side *o = sides[i];
        if (o && o != s && o->state == ACTIVE && !o->peer && strcmp(o->role, s->role) != 0) {
            s->peer = o;
            o->peer = s;
            say("paired");
            watch(o);
            pump(o);
            return;
        }
    }
}

static const char *header_value(const char *head, const char *name) {
    static char value[512];
    size_t nl = strlen(name);
    for (const char *line = strstr(head, "\r\n"); line && line[2]; line = strstr(line + 2, "\r\n")) {
        const char *l = line + 2;
        if (strncasecmp(l, name, nl) == 0 && l[nl] == ':') {
            const char *v = l + nl + 1, *end = strstr(v, "\r\n");
            while (*v == ' ' || *v == '\t')
                v++;
            size_t n = (size_t)(end - v);
            if (n >= sizeof value)
                return NULL;
            memcpy(value, v, n);
            value[n] = 0;
            return value;
        }
    }
    return NULL;
}

/* Answers the upgrade request in s->in; 0 when s was refused. */
static int upgrade(struct side *s, size_t head_len) {
    char head[REQUEST_LIMIT + 1];
    memcpy(head, s->in, head_len);
    head[head_len] = 0;
    const char *why = NULL;
    /* The mode is read from the request line only (the head always holds a CRLF). */
    char *line_end = strstr(head, "\r\n");
    *line_end = 0;
    if (strncmp(head, "GET /tunnel", 11) != 0)
        why = "not a GET /tunnel request";
    else if (strstr(head, "local-proxy-mode=source"))
        s->role = "source";
    else if (strstr(head, "local-proxy-mode=destination"))
        s->role = "destination";
    else
        why = "local-proxy-mode is neither source nor destination";
    *line_end = '\r';
    char protocol[64] = "";
    const char *offered = why ? NULL : header_value(head, "Sec-WebSocket-Protocol");
    if (!why && offered) {
        for (int v = 3; v >= 1 && !protocol[0]; v--) {
            char name[40];
            snprintf(name, sizeof name, "aws.iot.securetunneling-%d.0", v);
            if (strstr(offered, name))
                snprintf(protocol, sizeof protocol, "%s", name);
        }
    }
    if (!why && !protocol[0])
        why = "no aws.iot.securetunneling subprotocol offered";
    const char *key = why ? NULL : header_value(head, "Sec-WebSocket-Key");
    if (!why && !key)
        why = "no Sec-WebSocket-Key";
    if (why) {
        static const char refusal[] = "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n";
        SSL_write(s->ssl, refusal, sizeof refusal - 1);
        say("refused %s", why);
        s->role = NULL;
        close_side(s, why);
        return 0;
    }
    unsigned char digest[SHA_DIGEST_LENGTH];
    char joined[600], accept[64];
    snprintf(joined, sizeof joined, "%s258EAFA5-E914-47DA-95CA-C5AB0DC85B11", key);
    SHA1((const unsigned char *)joined, strlen(joined), digest);
    EVP_EncodeBlock((unsigned char *)accept, digest, SHA_DIGEST_LENGTH);
    char response[512];
    int n = snprintf(response, sizeof response,
                     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Accept: %s\r\nSec-WebSocket-Protocol: %s\r\nchannel-id: bench-%s\r\n\r\n",
                     accept, protocol, s->role);
    queue_bytes(s, response, (size_t)n);
    if (strcmp(protocol, "aws.iot.securetunneling-1.0") != 0)
        queue_bytes(s, service_frame, service_frame_len);
    memmove(s->in, s->in + head_len, s->in_len - head_len);
    s->in_len -= head_len;
    s->state = ACTIVE;
    say("connected %s %s %s", s->role, SSL_get_cipher_name(s->ssl), SSL_get_version(s->ssl));
    flush(s);
    if (s->state == ACTIVE)
        pair(s);
    return 1;
}

static void advance(struct side *s) {
    if (s->state == HANDSHAKE) {
        int r = SSL_accept(s->ssl);
        if (r != 1) {
            int e = SSL_get_error(s->ssl, r);
            if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
                return;
            unsigned long code = ERR_get_error();
            char reason[256];
            ERR_error_string_n(code, reason, sizeof reason);
            say("refused TLS handshake: %s", reason);
            close_side(s, "TLS handshake failed");
            return;
        }
        s->state = REQUEST;
    }
    while (s->state == REQUEST) {
        int n = SSL_read(s->ssl, s->in + s->in_len, (int)(REQUEST_LIMIT + READ_BYTES - s->in_len));
        if (n <= 0) {
            int e = SSL_get_error(s->ssl, n);
            if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE)
                close_side(s, "closed during the upgrade request");
            return;
        }
        s->in_len += (size_t)n;
        unsigned char *end = memmem(s->in, s->in_len, "\r\n\r\n", 4);
        if (end) {
            upgrade(s, (size_t)(end - s->in) + 4);
            return;
        }
        if (s->in_len > REQUEST_LIMIT) {
            say("refused an upgrade request over %d bytes", REQUEST_LIMIT);
            close_side(s, "request too long");
            return;
        }
    }
}

static void accept_one(int listener) {
    int fd = accept4(listener, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0)
        return;
    int slot = -1;
    for (int i = 0; i < MAX_SIDES && slot < 0; i++) {
        if (!sides[i] || sides[i]->state == CLOSED) {
            if (sides[i]) {
                free(sides[i]->in);
                free(sides[i]->out);
                free(sides[i]);
                sides[i] = NULL;
            }
            slot = i;
        }
    }
    if (slot < 0) {
        say("refused more than %d connections", MAX_SIDES);
        close(fd);
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct side *s = calloc(1, sizeof *s);
    s->in = malloc(IN_CAP > REQUEST_LIMIT + READ_BYTES ? IN_CAP : REQUEST_LIMIT + READ_BYTES);
    s->out = malloc(OUT_CAP);
    if (!s || !s->in || !s->out)
        die("out of memory");
    s->fd = fd;
    s->ssl = SSL_new(context);
    SSL_set_fd(s->ssl, fd);
    SSL_set_mode(s->ssl, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    s->state = HANDSHAKE;
    s->events = EPOLLIN;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = s};
    if (epoll_ctl(epoll_fd, EPOLL_CTL_ADD, fd, &ev) != 0)
        die("epoll_ctl ADD failed");
    sides[slot] = s;
    advance(s);
    if (s->state != CLOSED)
        watch(s);
}

static void usage(const char *why) {
    fprintf(stderr, "wsrelay: %s\nusage: wsrelay --cert FILE --key FILE [--port N] [--service NAME]... "
                    "[--ciphers OPENSSL-TLS1.2-LIST] [--ciphersuites OPENSSL-TLS1.3-LIST] [--tls1_3]\n", why);
    exit(2);
}

int main(int argc, char **argv) {
    const char *cert = NULL, *key = NULL, *ciphers = NULL, *ciphersuites = NULL;
    int tls13_only = 0;
    const char *services[3];
    int nservices = 0;
    long port = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--tls1_3")) {
            tls13_only = 1;
            continue;
        }
        if (i + 1 >= argc)
            usage("every option but --tls1_3 takes a value");
        if (!strcmp(argv[i], "--cert"))
            cert = argv[++i];
        else if (!strcmp(argv[i], "--key"))
            key = argv[++i];
        else if (!strcmp(argv[i], "--ciphers"))
            ciphers = argv[++i];
        else if (!strcmp(argv[i], "--ciphersuites"))
            ciphersuites = argv[++i];
        else if (!strcmp(argv[i], "--port")) {
            char *end;
            port = strtol(argv[++i], &end, 10);
            if (*end || port < 0 || port > 65535)
                usage("--port takes 0 (any free port) to 65535");
        } else if (!strcmp(argv[i], "--service")) {
            if (nservices == 3)
                usage("a tunnel has at most 3 services");
            if (strlen(argv[i + 1]) == 0 || strlen(argv[i + 1]) > 16)
                usage("a service name is 1 to 16 bytes here");
            services[nservices++] = argv[++i];
        } else
            usage("unknown option");
    }
    if (!cert || !key)
        usage("--cert and --key are required");
    if (!nservices)
        services[nservices++] = "SSH";
    /* SERVICE_IDS: type 5 and one field-6 string per service, behind a 2-byte length, in one
     * unmasked binary frame. */
    unsigned char body[60];
    size_t bl = 0;
    body[bl++] = 0x08;
    body[bl++] = 0x05;
    for (int i = 0; i < nservices; i++) {
        size_t n = strlen(services[i]);
        body[bl++] = 0x32;
        body[bl++] = (unsigned char)n;
        memcpy(body + bl, services[i], n);
        bl += n;
    }
    service_frame[0] = 0x82;
    service_frame[1] = (unsigned char)(bl + 2);
    service_frame[2] = (unsigned char)(bl >> 8);
    service_frame[3] = (unsigned char)bl;
    memcpy(service_frame + 4, body, bl);
    service_frame_len = bl + 4;

    signal(SIGPIPE, SIG_IGN);
    context = SSL_CTX_new(TLS_server_method());
    if (!context)
        die("SSL_CTX_new failed");
    SSL_CTX_set_min_proto_version(context, tls13_only ? TLS1_3_VERSION : TLS1_2_VERSION);
    if (SSL_CTX_use_certificate_chain_file(context, cert) != 1)
        die("cannot load --cert (a PEM certificate chain)");
    if (SSL_CTX_use_PrivateKey_file(context, key, SSL_FILETYPE_PEM) != 1)
        die("cannot load --key (a PEM private key matching --cert)");
    if (ciphers && SSL_CTX_set_cipher_list(context, ciphers) != 1)
        die("--ciphers: OpenSSL accepts none of these TLS 1.2 suites");
    if (ciphersuites && SSL_CTX_set_ciphersuites(context, ciphersuites) != 1)
        die("--ciphersuites: OpenSSL accepts none of these TLS 1.3 suites");
    /* The client's preference decides, as a service that imposes none would. */
    SSL_CTX_clear_options(context, SSL_OP_CIPHER_SERVER_PREFERENCE);

    int listener = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                                  .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(listener, (struct sockaddr *)&address, sizeof address) != 0 || listen(listener, 16) != 0)
        die("cannot listen on 127.0.0.1 at --port");
    socklen_t length = sizeof address;
    getsockname(listener, (struct sockaddr *)&address, &length);
    epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(epoll_fd, EPOLL_CTL_ADD, listener, &lev);
    say("listening %d", ntohs(address.sin_port));

    struct epoll_event events[32];
    for (;;) {
        int n = epoll_wait(epoll_fd, events, 32, -1);
        if (n < 0 && errno != EINTR)
            die("epoll_wait failed");
        for (int i = 0; i < n; i++) {
            struct side *s = events[i].data.ptr;
            if (!s) {
                accept_one(listener);
                continue;
            }
            if (s->state == CLOSED)
                continue;
            if (s->state == HANDSHAKE || s->state == REQUEST) {
                advance(s);
                if (s->state != CLOSED)
                    watch(s);
                continue;
            }
            if (events[i].events & (EPOLLOUT | EPOLLERR | EPOLLHUP))
                flush(s);
            if (s->state == ACTIVE && events[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP))
                pump(s);
        }
    }
}
