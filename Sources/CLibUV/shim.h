// libuv, for TunnelIO alone: the event loop and everything that waits on it. The C library
// pieces (signals, socket options, time text) are in CLibC.
#ifndef LOCALPROXY_CLIBUV_SHIM_H
#define LOCALPROXY_CLIBUV_SHIM_H
#include <uv.h>
#endif
