// The log rate limit (docs/RELIABILITY.md): at most Logger.linesPerSecond error, warning and
// info lines a second, and a count of what was left out, reported even when nothing else is
// logged afterwards.
import CLibC
import Testing
import TunnelIO
@testable import LocalProxy

@Suite("Logger", .serialized)
struct LoggerTests {
    final class Lines {
        var all: [String] = []
    }

    private func logger(_ lines: Lines) -> Logger {
        Logger(verbosity: 6) { lines.all.append(String(decoding: $0, as: UTF8.self)) }
    }

    @Test func linesOverTheLimitAreCountedAndReportedWithTheNextWindow() {
        let lines = Lines()
        let log = logger(lines)
        let start: UInt64 = 10_000
        for i in 0..<(Logger.linesPerSecond + 7) {
            #expect(log.admit(now: start + UInt64(i % 999)) == (i < Logger.linesPerSecond))
        }
        #expect(lines.all.isEmpty)
        // Still inside the window: nothing to report yet.
        log.endWindow(ifOverAt: start + 998)
        #expect(lines.all.isEmpty)
        #expect(log.admit(now: start + 1000))
        #expect(lines.all == ["localproxy warning: 7 log line(s) left out in the last second (more than \(Logger.linesPerSecond) a second)\n"])
        // The new window admits a full second's worth again.
        for i in 1..<Logger.linesPerSecond { #expect(log.admit(now: start + 1000 + UInt64(i))) }
        #expect(!log.admit(now: start + 1500))
    }

    @Test func fatalDebugAndTraceAreNeverLimited() {
        let lines = Lines()
        let log = logger(lines)
        for _ in 0..<(Logger.linesPerSecond * 2) { log.info("info") }
        let infos = lines.all.count
        #expect(infos == Logger.linesPerSecond)
        log.fatal("fatal")
        log.debug("debug")
        log.trace("trace")
        #expect(Array(lines.all.suffix(3)) == ["localproxy fatal: fatal\n", "localproxy debug: debug\n", "localproxy trace: trace\n"])
    }

    @Test func verbosityFiltersBeforeTheLimit() {
        let lines = Lines()
        let log = Logger(verbosity: 2) { lines.all.append(String(decoding: $0, as: UTF8.self)) }
        for _ in 0..<(Logger.linesPerSecond * 2) { log.info("not shown") }
        log.error("shown")
        #expect(lines.all == ["localproxy error: shown\n"])
    }

    // A flood that stops (or that makes the proxy stop reading) is still reported: the loop's
    // timer ends the window, with no further line needed.
    @Test func aFloodThatEndsIsReportedByTheTimer() throws {
        let loop = try EventLoop()
        let lines = Lines()
        let log = logger(lines)
        log.attach(to: loop)
        for _ in 0..<(Logger.linesPerSecond + 3) { log.warning("w") }
        #expect(lines.all.count == Logger.linesPerSecond)
        // A referenced timer keeps the loop running until the report is due; ours is unreferenced
        // (it must not delay an exit), so this test holds the loop with a guard timer.
        let guardTimer = Timer(loop: loop)
        var expired = false
        guardTimer.start(after: 5000) { expired = true; loop.stop() }
        let watch = Timer(loop: loop)
        watch.start(after: 20, repeat: 20) {
            if lines.all.count > Logger.linesPerSecond { loop.stop() }
        }
        loop.run()
        #expect(!expired, "the report did not come within 5 s")
        #expect(lines.all.last == "localproxy warning: 3 log line(s) left out in the last second (more than \(Logger.linesPerSecond) a second)\n")
        guardTimer.close()
        watch.close()
        log.finish()
        #expect(loop.close())
    }

    @Test func finishReportsWhatIsStillLeftOut() throws {
        let loop = try EventLoop()
        let lines = Lines()
        let log = logger(lines)
        log.attach(to: loop)
        for _ in 0..<(Logger.linesPerSecond + 2) { log.error("e") }
        log.finish()
        #expect(lines.all.last == "localproxy warning: 2 log line(s) left out in the last second (more than \(Logger.linesPerSecond) a second)\n")
        // The timer is closed: the loop closes cleanly.
        #expect(loop.close())
    }

    @Test func jsonEscapingCoversQuotesBackslashesAndEveryControlCharacter() {
        var out: [UInt8] = []
        appendJSONEscaped("a\"b\\c\nd\re\tf\u{01}g\u{1f}h\u{7f}é", to: &out)
        #expect(String(decoding: out, as: UTF8.self) == "a\\\"b\\\\c\\nd\\re\\tf\\u0001g\\u001fh\u{7f}é")
        for b in UInt8(0)..<0x20 {
            var one: [UInt8] = []
            appendJSONEscaped(String(decoding: [b], as: UTF8.self), to: &one)
            #expect(one.first == 0x5C && !one.contains { $0 < 0x20 }, "byte \(b)")
        }
    }

    @Test func jsonLinesCarryTimeLevelAndMessage() {
        let lines = Lines()
        let log = logger(lines)
        log.format = .json
        log.warning("x \"y\"")
        let line = lines.all.first ?? ""
        #expect(line.hasPrefix("{\"time\":\"20"))
        #expect(line.hasSuffix("Z\",\"level\":\"warning\",\"message\":\"x \\\"y\\\"\"}\n"))
        #expect(Array(line.utf8).count == "{\"time\":\"2026-12-06T23:10:00.123Z\",\"level\":\"warning\",\"message\":\"x \\\"y\\\"\"}\n".utf8.count)
    }
}
