import CLibUV
import TunnelCore

/// Writes `localproxy <level>: <message>` lines to standard error, filtered by verbosity
/// (`-v`: 0 silent, 1 fatal … 4 info (default) … 6 trace).
///
/// Error, warning and info lines are limited to `linesPerSecond`: many of them are caused by
/// what the peer sends (a reset for each stream it starts for an unmapped service, say), and a
/// gateway's log must not be flooded by a misbehaving service. What was left out is counted and
/// reported with the first line after the second is over. Fatal lines, and debug and trace
/// (asked for on purpose), are never limited.
public final class Logger {
    public var verbosity: Int
    public static let linesPerSecond = 100
    private var windowStart: UInt64 = 0
    private var linesInWindow = 0
    private var suppressed = 0

    public init(verbosity: Int = 4) {
        self.verbosity = verbosity
    }

    public func enabled(_ level: LogLevel) -> Bool { level.rawValue <= verbosity }

    public func log(_ level: LogLevel, _ message: String) {
        guard enabled(level) else { return }
        if level != .fatal && level <= .info && !admit(now: uv_hrtime() / 1_000_000) { return }
        write(level, message)
    }

    /// Whether one more limited line fits in the current one-second window.
    func admit(now: UInt64) -> Bool {
        if now &- windowStart >= 1000 {
            let left = suppressed
            windowStart = now
            linesInWindow = 0
            suppressed = 0
            if left > 0 {
                write(.warning, "\(left) log line(s) left out in the last second (more than \(Logger.linesPerSecond) a second)")
            }
        }
        guard linesInWindow < Logger.linesPerSecond else {
            suppressed += 1
            return false
        }
        linesInWindow += 1
        return true
    }

    private func write(_ level: LogLevel, _ message: String) {
        var line = Array("localproxy \(level): ".utf8)
        line.append(contentsOf: message.utf8)
        line.append(0x0A)
        writeAll(2, line)
    }

    public func fatal(_ message: String) { log(.fatal, message) }
    public func error(_ message: String) { log(.error, message) }
    public func warning(_ message: String) { log(.warning, message) }
    public func info(_ message: String) { log(.info, message) }
    public func debug(_ message: String) { log(.debug, message) }
    public func trace(_ message: String) { log(.trace, message) }
}

/// Writes text to standard output (help, version).
public func printOut(_ text: String) {
    writeAll(1, Array(text.utf8))
}

/// Writes every byte to a file descriptor (retrying short writes); gives up on an error.
func writeAll(_ fd: Int32, _ bytes: [UInt8]) {
    bytes.withUnsafeBytes { b in
        var offset = 0
        while offset < b.count {
            let n = write(fd, b.baseAddress! + offset, b.count - offset)
            if n <= 0 { return }
            offset += n
        }
    }
}
