// The C library declarations the Swift side needs (signals, processes, sockets, files, time),
// so that Swift code never imports Glibc (Glibc is not available to Embedded Swift on the
// bare-metal triples used for ARM). libuv has its own module, CLibUV, which only TunnelIO
// imports.
#ifndef LOCALPROXY_CLIBC_SHIM_H
#define LOCALPROXY_CLIBC_SHIM_H
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <sys/socket.h>
#include <netinet/tcp.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/un.h>
#include <stddef.h>
#include <time.h>

/// SIG_IGN is a cast macro that Swift cannot import.
static inline void lp_ignore_sigpipe(void) { signal(SIGPIPE, SIG_IGN); }

/// SO_LINGER with a zero timeout: the next close() sends a TCP reset instead of a FIN, so the
/// local application sees ECONNRESET rather than a clean end of stream. Returns 0 or -errno.
static inline int lp_set_linger_zero(int fd) {
    struct linger l = { 1, 0 };
    return setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l) == 0 ? 0 : -errno;
}

/// TCP keepalive with explicit timings (libuv sets only the idle time), and a user timeout so
/// that unacknowledged data also ends the connection after about the same time.
/// Returns 0 or -errno of the first option that failed.
static inline int lp_tcp_keepalive(int fd, int idle_s, int interval_s, int count) {
    int on = 1;
    unsigned int user_timeout_ms = (unsigned int)(idle_s + interval_s * count) * 1000u;
    if (setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof on) != 0) return -errno;
    if (setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle_s, sizeof idle_s) != 0) return -errno;
    if (setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval_s, sizeof interval_s) != 0) return -errno;
    if (setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &count, sizeof count) != 0) return -errno;
    if (setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout_ms, sizeof user_timeout_ms) != 0) return -errno;
    return 0;
}

/// No core file and no ptrace by other users' processes: a crash must not write the access
/// token to disk. Returns 0 or -errno.
static inline int lp_disable_core_dumps(void) {
    struct rlimit none = { 0, 0 };
    if (setrlimit(RLIMIT_CORE, &none) != 0) return -errno;
    return prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) == 0 ? 0 : -errno;
}

/// Whether core dumps are off for this process (for tests and the startup log).
static inline int lp_core_dumps_disabled(void) {
    struct rlimit current;
    if (getrlimit(RLIMIT_CORE, &current) != 0) return 0;
    return current.rlim_cur == 0 && prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) == 0;
}
/// A non-blocking, close-on-exec Unix datagram socket (for NOTIFY_SOCKET and the system log).
/// Returns the descriptor or -errno.
static inline int lp_datagram_socket(void) {
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    return fd >= 0 ? fd : -errno;
}

/// Sends one datagram to the Unix socket at `path`; a leading '@' names Linux's abstract
/// namespace (as systemd's NOTIFY_SOCKET may). Never blocks. Returns 0 or -errno.
static inline int lp_send_datagram(int fd, const char *path, const void *data, size_t length) {
    struct sockaddr_un address;
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof address.sun_path) return -ENAMETOOLONG;
    memset(&address, 0, sizeof address);
    address.sun_family = AF_UNIX;
    memcpy(address.sun_path, path, n);
    socklen_t size = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n);
    if (path[0] == '@') {
        address.sun_path[0] = 0;
    } else {
        size += 1;
    }
    ssize_t sent = sendto(fd, data, length, MSG_NOSIGNAL | MSG_DONTWAIT, (struct sockaddr *)&address, size);
    return sent >= 0 ? 0 : -errno;
}

/// The wall-clock time as text into `out` (at least 32 bytes): `iso` nonzero gives UTC as
/// 2026-12-06T23:10:00.123Z (JSON log lines), zero the local time as "Dec  6 23:10:00"
/// (RFC 3164 system log lines). Returns the length.
static inline int lp_time_text(char *out, size_t size, int iso) {
    struct timespec now;
    struct tm t;
    clock_gettime(CLOCK_REALTIME, &now);
    if (iso) {
        gmtime_r(&now.tv_sec, &t);
        size_t n = strftime(out, size, "%Y-%m-%dT%H:%M:%S", &t);
        return n + 6 <= size ? (int)(n + (size_t)snprintf(out + n, size - n, ".%03ldZ", now.tv_nsec / 1000000L)) : (int)n;
    }
    localtime_r(&now.tv_sec, &t);
    return (int)strftime(out, size, "%b %e %H:%M:%S", &t);
}
#endif
