import CLibC
import TunnelIO

/// Tells systemd (or anything that speaks its notification protocol) what the proxy is doing,
/// by datagrams to the socket named in `NOTIFY_SOCKET`: `READY=1` once the tunnel is up (or
/// the first attempt failed and the proxy goes on retrying), `STATUS=` lines, `RELOADING=1`
/// around a SIGHUP reload and `STOPPING=1` at the end. Without `NOTIFY_SOCKET` it does
/// nothing. A few lines instead of libsystemd: the device binary links libc only.
final class ServiceManager {
    private let path: String?
    private var fd: Int32 = -1
    private(set) var ready = false
    private let logger: Logger

    init(environment: (String) -> String?, logger: Logger) {
        self.logger = logger
        let value = environment("NOTIFY_SOCKET") ?? ""
        path = value.isEmpty ? nil : value
    }

    deinit { if fd >= 0 { close(fd) } }

    var isActive: Bool { path != nil }

    /// `READY=1` the first time, with `status`; later calls update the status only.
    func ready(status: String) {
        if ready {
            send("STATUS=\(oneLine(status))")
        } else {
            ready = true
            send("READY=1\nSTATUS=\(oneLine(status))")
        }
    }

    func status(_ status: String) { send("STATUS=\(oneLine(status))") }

    /// A reload starts (systemd wants the monotonic time with it to match it to `systemctl
    /// reload`); `ready(status:)` ends it.
    func reloading() {
        send("RELOADING=1\nMONOTONIC_USEC=\(monotonicNanoseconds() / 1000)")
        ready = false
    }

    func stopping() { send("STOPPING=1") }

    private func send(_ message: String) {
        guard let path else { return }
        if fd < 0 {
            fd = lp_datagram_socket()
            if fd < 0 {
                logger.warning("NOTIFY_SOCKET is set but no socket can be opened to it: \(UVError(fd, "socket"))")
                return
            }
        }
        let bytes = Array(message.utf8)
        let status = withCString(path) { p in bytes.withUnsafeBytes { lp_send_datagram(fd, p, $0.baseAddress, $0.count) } }
        if status != 0 {
            logger.warning("cannot notify the service manager through NOTIFY_SOCKET \(path): \(UVError(status, "sendto"))")
        }
    }
}
