import CLibC
import CLibUV

/// A libuv error code with the operation that produced it.
public struct UVError: Error, Equatable, CustomStringConvertible {
    public let code: Int32
    public let operation: String

    public init(_ code: Int32, _ operation: String) {
        self.code = code
        self.operation = operation
    }

    /// libuv's short name, e.g. ECONNREFUSED.
    public var name: String { cString(uv_err_name(code)) }

    public var description: String { "\(operation): \(cString(uv_strerror(code))) (\(name))" }

    public static let endOfFile = Int32(UV_EOF.rawValue)
    /// The peer reset the connection (a read or write after a TCP RST).
    public static let connectionReset = Int32(UV_ECONNRESET.rawValue)
}

/// A Swift string from a NUL-terminated C string (nil gives "").
public func cString(_ p: UnsafePointer<CChar>?) -> String {
    guard let p else { return "" }
    var bytes: [UInt8] = []
    var i = 0
    while p[i] != 0 {
        bytes.append(UInt8(bitPattern: p[i]))
        i += 1
    }
    return String(decoding: bytes, as: UTF8.self)
}

/// A NUL-terminated copy of `s` for the duration of `body`.
public func withCString<R>(_ s: String, _ body: (UnsafePointer<CChar>) -> R) -> R {
    var bytes = Array(s.utf8).map { CChar(bitPattern: $0) }
    bytes.append(0)
    return bytes.withUnsafeBufferPointer { body($0.baseAddress!) }
}

/// One libuv loop on the current thread. Every handle belongs to one loop and is closed before
/// the loop is closed.
public final class EventLoop {
    let loop: UnsafeMutablePointer<uv_loop_t>
    /// `uv_loop_close` succeeded: the loop must not be closed again (libuv answers EBUSY for a
    /// closed loop, which once made `deinit` keep its memory: valgrind's leak in make
    /// test-valgrind).
    private var closed = false

    public init() throws(UVError) {
        loop = .allocate(capacity: 1)
        let status = uv_loop_init(loop)
        if status != 0 {
            loop.deallocate()
            throw UVError(status, "initialising the event loop")
        }
    }

    deinit {
        // Closing fails only if handles are still open; they would then point into freed
        // memory, so a leak is the lesser evil and `close()` reports it to the caller.
        if closed || uv_loop_close(loop) == 0 { loop.deallocate() }
    }

    /// Runs until there is nothing left to do or `stop()` is called.
    public func run() {
        uv_run(loop, UV_RUN_DEFAULT)
    }

    /// Runs one iteration, waiting for at least one event if `wait`.
    @discardableResult
    public func runOnce(wait: Bool = true) -> Bool {
        uv_run(loop, wait ? UV_RUN_ONCE : UV_RUN_NOWAIT) != 0
    }

    public func stop() { uv_stop(loop) }

    /// The loop's cached time in milliseconds (monotonic).
    public var now: UInt64 { uv_now(loop) }

    /// Handles not yet closed, including ones whose close is pending.
    public var liveHandleCount: Int {
        var count = 0
        withUnsafeMutablePointer(to: &count) { pointer in
            uv_walk(loop, { _, arg in
                arg!.assumingMemoryBound(to: Int.self).pointee += 1
            }, pointer)
        }
        return count
    }

    /// Closes the loop after running it until the pending close callbacks are done. Returns
    /// false if handles are still open (a bug: every owner must close its handle).
    public func close() -> Bool {
        if closed { return true }
        uv_run(loop, UV_RUN_DEFAULT)
        closed = uv_loop_close(loop) == 0
        return closed
    }
}

/// Common base of handle owners: keeps the Swift object alive while libuv may still call
/// back into it, and frees the handle's memory only in the close callback.
public class Handle {
    let handle: UnsafeMutablePointer<uv_handle_t>
    let storage: UnsafeMutableRawPointer
    public private(set) var isClosing = false
    private var onClose: (() -> Void)? = nil

    init(byteCount: Int) {
        storage = UnsafeMutableRawPointer.allocate(byteCount: byteCount, alignment: 16)
        storage.initializeMemory(as: UInt8.self, repeating: 0, count: byteCount)
        handle = storage.assumingMemoryBound(to: uv_handle_t.self)
    }

    /// Called by subclasses once the handle is initialised: from now on libuv holds a
    /// reference to this object through `data`, released in the close callback.
    func retainForLibuv() {
        handle.pointee.data = Unmanaged.passRetained(self).toOpaque()
    }

    static func owner<T: Handle>(_ handle: UnsafeMutablePointer<uv_handle_t>?, as: T.Type) -> T {
        Unmanaged<T>.fromOpaque(handle!.pointee.data!).takeUnretainedValue()
    }

    /// The handle no longer keeps `EventLoop.run()` going by itself (it must still be closed).
    public func unref() { uv_unref(handle) }

    /// Closes the handle; `completion` runs once libuv has let go of it. Safe to call twice.
    public func close(_ completion: (() -> Void)? = nil) {
        guard !isClosing else { return }
        isClosing = true
        onClose = completion
        willClose()
        uv_close(handle) { h in
            let unmanaged = Unmanaged<Handle>.fromOpaque(h!.pointee.data!)
            let owner = unmanaged.takeUnretainedValue()
            let done = owner.onClose
            owner.onClose = nil
            owner.didClose()
            done?()
            unmanaged.release()
        }
    }

    /// Subclasses drop their callbacks here (breaking reference cycles through closures).
    func willClose() {}
    func didClose() {}

    deinit { storage.deallocate() }
}

/// A one-shot or repeating timer.
public final class Timer: Handle {
    private var callback: (() -> Void)? = nil

    public init(loop: EventLoop) {
        super.init(byteCount: MemoryLayout<uv_timer_t>.size)
        uv_timer_init(loop.loop, timer)
        retainForLibuv()
    }

    var timer: UnsafeMutablePointer<uv_timer_t> { storage.assumingMemoryBound(to: uv_timer_t.self) }

    /// Fires after `milliseconds`, then every `repeatMilliseconds` if non-zero. Replaces any
    /// earlier schedule of this timer.
    public func start(after milliseconds: UInt64, repeat repeatMilliseconds: UInt64 = 0, _ callback: @escaping () -> Void) {
        guard !isClosing else { return }
        self.callback = callback
        uv_timer_start(timer, { t in
            let owner = Handle.owner(UnsafeMutableRawPointer(t!).assumingMemoryBound(to: uv_handle_t.self), as: Timer.self)
            owner.callback?()
        }, milliseconds, repeatMilliseconds)
    }

    public func stop() {
        guard !isClosing else { return }
        uv_timer_stop(timer)
    }

    override func willClose() { callback = nil }
}

/// Delivers a POSIX signal on the loop.
public final class SignalWatcher: Handle {
    private var callback: ((Int32) -> Void)? = nil

    public init(loop: EventLoop, signal number: Int32, _ callback: @escaping (Int32) -> Void) throws(UVError) {
        super.init(byteCount: MemoryLayout<uv_signal_t>.size)
        let signal = storage.assumingMemoryBound(to: uv_signal_t.self)
        uv_signal_init(loop.loop, signal)
        retainForLibuv()
        self.callback = callback
        let status = uv_signal_start(signal, { s, number in
            let owner = Handle.owner(UnsafeMutableRawPointer(s!).assumingMemoryBound(to: uv_handle_t.self), as: SignalWatcher.self)
            owner.callback?(number)
        }, number)
        if status != 0 {
            close()
            throw UVError(status, "watching signal \(number)")
        }
        // A signal watcher alone should not keep the loop running.
        uv_unref(handle)
    }

    override func willClose() { callback = nil }
}

/// A monotonic clock (CLOCK_MONOTONIC) in nanoseconds, read at the call rather than cached per
/// loop iteration like `EventLoop.now`: for the log's rate limit and systemd's MONOTONIC_USEC.
public func monotonicNanoseconds() -> UInt64 { uv_hrtime() }

/// Ignores SIGPIPE: a write to a socket the peer closed then fails with EPIPE instead of killing
/// the process.
public func ignoreBrokenPipeSignal() {
    lp_ignore_sigpipe()
}

/// Turns core dumps off (core size limit 0, and not dumpable): a crash must not leave the access
/// token in a core file. Returns the failure, if any.
public func disableCoreDumps() -> UVError? {
    let status = lp_disable_core_dumps()
    return status == 0 ? nil : UVError(status, "turning core dumps off")
}
