import CLibC
import CLibUV
import TunnelCore

/// A connected byte stream: a TCP socket or a Unix-domain socket.
///
/// Reads land in memory the owner provides (`allocate` returns a span of a ring buffer) and are
/// reported with `onRead`; writes are issued from spans the owner keeps valid until the write's
/// completion runs. Reading stops (`stopReading`) when the owner has nowhere to put more bytes,
/// which is how back-pressure reaches the peer: its TCP window fills up.
public final class SocketStream: Handle {
    public enum Kind { case tcp, unixSocket }
    public let kind: Kind

    /// Where the next read may land. An empty span stops reading until `startReading` again.
    public var allocate: (() -> UnsafeMutableRawBufferPointer)? = nil
    /// `n > 0` bytes were read into the last span given, or the stream ended (`.endOfFile`)
    /// or failed.
    public var onRead: ((Result<Int, UVError>) -> Void)? = nil
    private var connectCallback: ((UVError?) -> Void)? = nil
    private var reading = false
    /// Writes issued and not completed, counted so owners know when everything went out.
    public private(set) var pendingWrites = 0

    var stream: UnsafeMutablePointer<uv_stream_t> { storage.assumingMemoryBound(to: uv_stream_t.self) }

    public init(loop: EventLoop, kind: Kind) {
        self.kind = kind
        super.init(byteCount: max(MemoryLayout<uv_tcp_t>.size, MemoryLayout<uv_pipe_t>.size))
        switch kind {
        case .tcp: uv_tcp_init(loop.loop, storage.assumingMemoryBound(to: uv_tcp_t.self))
        case .unixSocket: uv_pipe_init(loop.loop, storage.assumingMemoryBound(to: uv_pipe_t.self), 0)
        }
        retainForLibuv()
    }

    override func willClose() {
        allocate = nil
        onRead = nil
        connectCallback = nil
    }

    /// Connects a TCP stream; `completion` gets nil on success.
    public func connect(to address: SocketAddress, _ completion: @escaping (UVError?) -> Void) {
        let request = connectRequest()
        connectCallback = completion
        let status = address.withSockaddr { a in
            uv_tcp_connect(request.request(uv_connect_t.self), storage.assumingMemoryBound(to: uv_tcp_t.self), a) { req, status in
                PendingRequest.complete(UnsafeMutableRawPointer(req), status)
            }
        }
        if status != 0 {
            request.release()
            connectCallback = nil
            completion(UVError(status, "connecting to \(address)"))
        }
    }

    /// Connects a Unix-domain socket stream.
    public func connect(toPath path: String, _ completion: @escaping (UVError?) -> Void) {
        let request = connectRequest()
        connectCallback = completion
        withCString(path) { p in
            uv_pipe_connect(request.request(uv_connect_t.self), storage.assumingMemoryBound(to: uv_pipe_t.self), p) { req, status in
                PendingRequest.complete(UnsafeMutableRawPointer(req), status)
            }
        }
    }

    /// A connect request whose result reaches `connectCallback`, unless the stream was closed
    /// meanwhile (libuv then reports a cancellation nobody is waiting for).
    private func connectRequest() -> PendingRequest {
        PendingRequest(uv_connect_t.self, owner: self) { [self] status in
            if !isClosing || status == 0 { connectFinished(status) }
        }
    }

    private func connectFinished(_ status: Int32) {
        let callback = connectCallback
        connectCallback = nil
        callback?(status == 0 ? nil : UVError(status, "connecting"))
    }

    /// Disables Nagle's algorithm: tunnel traffic is already batched into large writes, and
    /// interactive sessions (SSH) need small writes to go out at once.
    public func setNoDelay() {
        guard kind == .tcp else { return }
        uv_tcp_nodelay(storage.assumingMemoryBound(to: uv_tcp_t.self), 1)
    }

    public func startReading() {
        guard !reading, !isClosing else { return }
        reading = true
        let status = uv_read_start(stream, { handle, _, buffer in
            let owner = Handle.owner(handle, as: SocketStream.self)
            let span = owner.allocate?() ?? UnsafeMutableRawBufferPointer(start: nil, count: 0)
            buffer!.pointee = uv_buf_init(span.baseAddress?.assumingMemoryBound(to: CChar.self), UInt32(span.count))
        }, { stream, nread, _ in
            let owner = Handle.owner(UnsafeMutableRawPointer(stream!).assumingMemoryBound(to: uv_handle_t.self), as: SocketStream.self)
            if nread > 0 {
                owner.onRead?(.success(nread))
            } else if nread < 0 {
                if Int32(nread) == Int32(UV_ENOBUFS.rawValue) {
                    // The owner had no room: it stops reading and resumes once space frees up.
                    owner.stopReading()
                    return
                }
                owner.reading = false
                owner.onRead?(.failure(UVError(Int32(nread), "reading")))
            }
        })
        if status != 0 {
            reading = false
            onRead?(.failure(UVError(status, "starting to read")))
        }
    }

    public func stopReading() {
        guard reading, !isClosing else { return }
        reading = false
        uv_read_stop(stream)
    }

    public var isReading: Bool { reading }

    /// Writes up to two spans (the shape of a ring buffer's readable region). The spans must stay
    /// valid until `completion` runs.
    public func write(_ first: UnsafeRawBufferPointer, _ second: UnsafeRawBufferPointer = UnsafeRawBufferPointer(start: nil, count: 0),
                      _ completion: @escaping (UVError?) -> Void) {
        let request = PendingRequest(uv_write_t.self, owner: self) { [self] status in
            pendingWrites -= 1
            completion(status == 0 ? nil : UVError(status, "writing"))
        }
        var buffers = (
            uv_buf_init(UnsafeMutablePointer(mutating: first.baseAddress?.assumingMemoryBound(to: CChar.self)), UInt32(first.count)),
            uv_buf_init(UnsafeMutablePointer(mutating: second.baseAddress?.assumingMemoryBound(to: CChar.self)), UInt32(second.count))
        )
        let count: UInt32 = second.count > 0 ? 2 : 1
        pendingWrites += 1
        let status = withUnsafeMutablePointer(to: &buffers) { tuple in
            tuple.withMemoryRebound(to: uv_buf_t.self, capacity: 2) { bufs in
                uv_write(request.request(uv_write_t.self), stream, bufs, count) { req, status in
                    PendingRequest.complete(UnsafeMutableRawPointer(req), status)
                }
            }
        }
        if status != 0 {
            pendingWrites -= 1
            request.release()
            completion(UVError(status, "writing"))
        }
    }

    /// Half-closes: sends FIN after pending writes. `completion` runs when done.
    public func shutdown(_ completion: @escaping (UVError?) -> Void) {
        let request = PendingRequest(uv_shutdown_t.self, owner: self) { status in
            completion(status == 0 ? nil : UVError(status, "shutting down"))
        }
        let status = uv_shutdown(request.request(uv_shutdown_t.self), stream) { req, status in
            PendingRequest.complete(UnsafeMutableRawPointer(req), status)
        }
        if status != 0 {
            request.release()
            completion(UVError(status, "shutting down"))
        }
    }

    /// Closes at once with a TCP reset (SO_LINGER 0): unsent bytes are dropped and the peer
    /// reads ECONNRESET, so a cut-off transfer cannot pass for a complete one. Unix-domain
    /// sockets have no reset and are simply closed. Safe after `shutdown` and when closing.
    public func closeWithReset(_ completion: (() -> Void)? = nil) {
        if kind == .tcp && !isClosing {
            var fd: uv_os_fd_t = -1
            if uv_fileno(handle, &fd) == 0 { _ = lp_set_linger_zero(fd) }
        }
        close(completion)
    }

    /// TCP keepalive probes after `idle` seconds without traffic, every `interval` seconds,
    /// `count` of them, and the same bound for unacknowledged data: a silently dropped path is
    /// noticed by the kernel in idle + interval × count seconds. Returns the error, if any.
    @discardableResult
    public func setKeepAlive(idle: Int32, interval: Int32, count: Int32) -> UVError? {
        guard kind == .tcp, !isClosing else { return nil }
        var fd: uv_os_fd_t = -1
        let status = uv_fileno(handle, &fd)
        if status != 0 { return UVError(status, "finding the socket") }
        let result = lp_tcp_keepalive(fd, idle, interval, count)
        return result == 0 ? nil : UVError(result, "setting TCP keepalive")
    }

    /// Bytes the kernel has not yet accepted from our writes.
    public var queuedWriteBytes: Int { uv_stream_get_write_queue_size(stream) }
}

/// A libuv request (connect, write, shutdown, UDP send) in flight. It keeps its handle alive
/// until libuv calls back, then runs `completion` with libuv's status and frees itself. Every
/// request type starts with the same fields (`data` first), so one wrapper serves them all.
final class PendingRequest {
    let memory: UnsafeMutableRawPointer
    let owner: Handle
    let completion: (Int32) -> Void

    init<Request>(_ type: Request.Type, owner: Handle, completion: @escaping (Int32) -> Void) {
        memory = .allocate(byteCount: MemoryLayout<Request>.size, alignment: 16)
        memory.initializeMemory(as: UInt8.self, repeating: 0, count: MemoryLayout<Request>.size)
        self.owner = owner
        self.completion = completion
        memory.assumingMemoryBound(to: uv_req_t.self).pointee.data = Unmanaged.passRetained(self).toOpaque()
    }

    func request<Request>(_ type: Request.Type) -> UnsafeMutablePointer<Request> { memory.assumingMemoryBound(to: Request.self) }

    /// Drops the reference taken for libuv when the request could not be started.
    func release() {
        Unmanaged<PendingRequest>.fromOpaque(memory.assumingMemoryBound(to: uv_req_t.self).pointee.data!).release()
    }

    static func complete(_ request: UnsafeMutableRawPointer?, _ status: Int32) {
        let unmanaged = Unmanaged<PendingRequest>.fromOpaque(request!.assumingMemoryBound(to: uv_req_t.self).pointee.data!)
        unmanaged.takeUnretainedValue().completion(status)
        unmanaged.release()
    }

    deinit { memory.deallocate() }
}
