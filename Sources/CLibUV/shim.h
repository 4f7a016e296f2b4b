// libuv plus the libc declarations the Swift side needs, so that Swift code never imports Glibc
// (Glibc is not available to Embedded Swift on the bare-metal triples used for ARM).
#ifndef LOCALPROXY_CLIBUV_SHIM_H
#define LOCALPROXY_CLIBUV_SHIM_H
#include <uv.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <netinet/in.h>
#include <arpa/inet.h>

/// SIG_IGN is a cast macro that Swift cannot import.
static inline void lp_ignore_sigpipe(void) { signal(SIGPIPE, SIG_IGN); }
#endif
