import CLibC
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
///
/// Lines are text (`localproxy warning: …`) or, with `--log-format json`, one JSON object a line
/// (`{"time":"…Z","level":"warning","message":"…"}`). With `--syslog` they go to the system log
/// (`/dev/log`, facility daemon, `localproxy[PID]`) instead of standard error; a line the system
/// log does not take goes to standard error, never nowhere. No colour, whatever the output.
public final class Logger {
    public var verbosity: Int
    public var format = LogFormat.text
    /// Set by `useSystemLog(path:)`.
    private var systemLog: SystemLog? = nil
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
        if level != .fatal && level <= .info && !admit(now: monotonicNanoseconds() / 1_000_000) { return }
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
            let now = monotonicNanoseconds() / 1_000_000
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

    /// Sends the lines to the system log at `path` from now on.
    public func useSystemLog(path: String) {
        do throws(UVError) {
            systemLog = try SystemLog(path: path)
        } catch {
            warning("--syslog: \(error): logging to standard error")
        }
    }

    private func write(_ level: LogLevel, _ message: String) {
        if let systemLog {
            var line: [UInt8] = []
            line.reserveCapacity(message.utf8.count + 48)
            systemLog.appendHeader(level, to: &line)
            appendBody(level, message, to: &line)
            guard let problem = systemLog.send(line) else { return }
            if systemLog.reportOutage() {
                sink(standardErrorLine(.warning, "cannot write to the system log (\(problem)): writing to standard error until it takes lines again"))
            }
        }
        sink(standardErrorLine(level, message))
    }

    private func standardErrorLine(_ level: LogLevel, _ message: String) -> [UInt8] {
        var line: [UInt8] = format == .json ? [] : Array("localproxy ".utf8)
        line.reserveCapacity(message.utf8.count + 64)
        appendBody(level, message, to: &line)
        line.append(0x0A)
        return line
    }

    /// `level: message`, or the JSON object (with the time) for `--log-format json`.
    private func appendBody(_ level: LogLevel, _ message: String, to line: inout [UInt8]) {
        guard format == .json else {
            line.append(contentsOf: "\(level): ".utf8)
            line.append(contentsOf: message.utf8)
            return
        }
        line.append(contentsOf: "{\"time\":\"".utf8)
        appendTime(iso: true, to: &line)
        line.append(contentsOf: "\",\"level\":\"\(level)\",\"message\":\"".utf8)
        appendJSONEscaped(message, to: &line)
        line.append(contentsOf: "\"}".utf8)
    }

    /// A line asked for by the operator (SIGUSR1): info, shown unless the log is silenced
    /// (`-v 0`), and not counted against the rate limit.
    public func report(_ message: String) {
        if verbosity > 0 { write(.info, message) }
    }

    public func fatal(_ message: String) { log(.fatal, message) }
    public func error(_ message: String) { log(.error, message) }
    public func warning(_ message: String) { log(.warning, message) }
    public func info(_ message: String) { log(.info, message) }
    public func debug(_ message: String) { log(.debug, message) }
    public func trace(_ message: String) { log(.trace, message) }
}

/// `--log-format`.
public enum LogFormat: Equatable {
    case text, json
}

/// The characters of `text` inside a JSON string: quote, backslash and control characters
/// escaped (RFC 8259 §7).
func appendJSONEscaped(_ text: String, to out: inout [UInt8]) {
    let hex: [UInt8] = Array("0123456789abcdef".utf8)
    for b in text.utf8 {
        switch b {
        case 0x22: out += [0x5C, 0x22]
        case 0x5C: out += [0x5C, 0x5C]
        case 0x0A: out += [0x5C, 0x6E]
        case 0x0D: out += [0x5C, 0x72]
        case 0x09: out += [0x5C, 0x74]
        case 0..<0x20: out += [0x5C, 0x75, 0x30, 0x30, hex[Int(b >> 4)], hex[Int(b & 0xF)]]
        default: out.append(b)
        }
    }
}

/// The wall-clock time: UTC ISO 8601 with milliseconds, or the local RFC 3164 form.
func appendTime(iso: Bool, to out: inout [UInt8]) {
    var buffer = [CChar](repeating: 0, count: 40)
    let n = Int(lp_time_text(&buffer, buffer.count, iso ? 1 : 0))
    for i in 0..<max(0, min(n, buffer.count)) { out.append(UInt8(bitPattern: buffer[i])) }
}

/// The system log's socket (RFC 3164 lines over a Unix datagram socket, as syslog(3) sends
/// them), never blocking the loop: a full or missing log is reported to the caller.
final class SystemLog {
    let path: String
    private let fd: Int32
    private let pid: Int32
    private var outageReported = false

    init(path: String) throws(UVError) {
        let fd = lp_datagram_socket()
        guard fd >= 0 else { throw UVError(fd, "opening a socket for the system log") }
        self.path = path
        self.fd = fd
        pid = getpid()
    }

    deinit { close(fd) }

    /// `<PRI>Mmm dd hh:mm:ss localproxy[PID]: `, facility daemon.
    func appendHeader(_ level: LogLevel, to line: inout [UInt8]) {
        let severity: Int
        switch level {
        case .fatal: severity = 2
        case .error: severity = 3
        case .warning: severity = 4
        case .info: severity = 6
        case .debug, .trace: severity = 7
        }
        line.append(contentsOf: "<\(3 * 8 + severity)>".utf8)
        appendTime(iso: false, to: &line)
        line.append(contentsOf: " localproxy[\(pid)]: ".utf8)
    }

    /// Sends one line; nil when it was taken, else why not.
    func send(_ line: [UInt8]) -> String? {
        let status = withCString(path) { p in line.withUnsafeBytes { lp_send_datagram(fd, p, $0.baseAddress, $0.count) } }
        if status == 0 {
            outageReported = false
            return nil
        }
        return UVError(status, path).description
    }

    /// Whether this outage still has to be reported (true once per outage).
    func reportOutage() -> Bool {
        defer { outageReported = true }
        return !outageReported
    }
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
