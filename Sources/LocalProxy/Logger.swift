import CLibUV
import TunnelCore

/// Writes `localproxy <level>: <message>` lines to standard error, filtered by verbosity
/// (`-v`: 0 silent, 1 fatal … 4 info (default) … 6 trace).
public final class Logger {
    public var verbosity: Int

    public init(verbosity: Int = 4) {
        self.verbosity = verbosity
    }

    public func enabled(_ level: LogLevel) -> Bool { level.rawValue <= verbosity }

    public func log(_ level: LogLevel, _ message: String) {
        guard enabled(level) else { return }
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
