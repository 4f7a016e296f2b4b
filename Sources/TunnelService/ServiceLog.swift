import Foundation

/// Levels as the local proxy numbers them (-v): 1 fatal, 2 error, 3 warning, 4 info, 5 debug,
/// 6 trace. Everything goes to stderr, because stdout carries the start-up lines that scripts
/// and test fixtures parse.
public final class ServiceLog {
    public let verbosity: Int

    public init(verbosity: Int) { self.verbosity = verbosity }

    public func error(_ text: @autoclosure () -> String) { write(2, "error", text) }
    public func warning(_ text: @autoclosure () -> String) { write(3, "warning", text) }
    public func info(_ text: @autoclosure () -> String) { write(4, "info", text) }
    public func debug(_ text: @autoclosure () -> String) { write(5, "debug", text) }
    public func trace(_ text: @autoclosure () -> String) { write(6, "trace", text) }

    public func enabled(_ level: Int) -> Bool { level <= verbosity }

    private func write(_ level: Int, _ name: String, _ text: () -> String) {
        guard level <= verbosity else { return }
        let line = "[tunnel-service] \(name): \(text())\n"
        FileHandle.standardError.write(Data(line.utf8))
    }
}

/// Start-up lines on stdout, written unbuffered so a parent reading the pipe sees each at once.
func announce(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}
