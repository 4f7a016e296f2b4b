import CLibUV
import TunnelCore
import TunnelIO

/// Writes `localproxy <level>: <message>` lines to standard error, filtered by verbosity
/// (`-v`: 0 silent, 1 fatal … 4 info (default) … 6 trace).
///
/// Error, warning and info lines are limited to `linesPerSecond`: many of them are caused by
/// what the peer sends (a reset for each stream it starts for an unmapped service, say), and a
/// gateway's log must not be flooded by a misbehaving service. What was left out is counted and
/// reported once the second is over: by a timer when `attach(to:)` gave the logger a loop (a
/// flood that ends, or that pauses the proxy, is still reported), else with the next line, and
/// by `finish()` at exit. Fatal lines, and debug and trace (asked for on purpose), are never
/// limited.
public final class Logger {
    public var verbosity: Int
    public static let linesPerSecond = 100
    private var windowStart: UInt64 = 0
    private var linesInWindow = 0
    private var suppressed = 0
    /// Reports what was left out when the window ends; it does not keep the loop running.
    private var reportTimer: Timer? = nil
    private let sink: ([UInt8]) -> Void

    public init(verbosity: Int = 4) {
        self.verbosity = verbosity
        sink = { writeAll(2, $0) }
    }

    /// A logger whose lines go to `sink` (for tests).
    init(verbosity: Int, sink: @escaping ([UInt8]) -> Void) {
        self.verbosity = verbosity
        self.sink = sink
    }

    /// Lets the logger report left-out lines on time, from a timer on `loop`. Call `finish()`
    /// before the loop is closed.
    public func attach(to loop: EventLoop) {
        guard reportTimer == nil else { return }
        let timer = Timer(loop: loop)
        timer.unref()
        reportTimer = timer
    }

    /// Reports lines still left out and lets go of the loop's timer.
    public func finish() {
        reportTimer?.close()
        reportTimer = nil
        report()
    }

    public func enabled(_ level: LogLevel) -> Bool { level.rawValue <= verbosity }

    public func log(_ level: LogLevel, _ message: String) {
        guard enabled(level) else { return }
        if level != .fatal && level <= .info && !admit(now: uv_hrtime() / 1_000_000) { return }
        write(level, message)
    }

    /// Whether one more limited line fits in the current one-second window.
    func admit(now: UInt64) -> Bool {
        endWindow(ifOverAt: now)
        guard linesInWindow < Logger.linesPerSecond else {
            suppressed += 1
            if suppressed == 1 { scheduleReport(now: now) }
            return false
        }
        linesInWindow += 1
        return true
    }

    /// Arms the timer for the end of the current window. libuv counts from the loop's cached
    /// time, which can lag behind `now`: a timer that fires early arms itself again.
    private func scheduleReport(now: UInt64) {
        guard let reportTimer else { return }
        let remaining = 1000 &- min(now &- windowStart, 1000)
        reportTimer.start(after: max(remaining, 1)) { [self] in
            let now = uv_hrtime() / 1_000_000
            if suppressed > 0 && now &- windowStart < 1000 {
                scheduleReport(now: now)
            } else {
                endWindow(ifOverAt: now)
            }
        }
    }

    /// Starts a new window if the current one is over, reporting what it left out.
    func endWindow(ifOverAt now: UInt64) {
        guard now &- windowStart >= 1000 else { return }
        report()
        windowStart = now
        linesInWindow = 0
    }

    private func report() {
        guard suppressed > 0 else { return }
        let left = suppressed
        suppressed = 0
        write(.warning, "\(left) log line(s) left out in the last second (more than \(Logger.linesPerSecond) a second)")
    }

    private func write(_ level: LogLevel, _ message: String) {
        var line = Array("localproxy \(level): ".utf8)
        line.append(contentsOf: message.utf8)
        line.append(0x0A)
        sink(line)
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
