import CLibUV

/// A listening TCP socket.
public final class Listener: Handle {
    private var onConnection: ((SocketStream) -> Void)? = nil
    private let loop: EventLoop

    public init(loop: EventLoop) {
        self.loop = loop
        super.init(byteCount: MemoryLayout<uv_tcp_t>.size)
        uv_tcp_init(loop.loop, storage.assumingMemoryBound(to: uv_tcp_t.self))
        retainForLibuv()
    }

    override func willClose() { onConnection = nil }

    /// Binds and listens; each accepted connection is handed to `onConnection`.
    public func listen(on address: SocketAddress, backlog: Int32 = 128, _ onConnection: @escaping (SocketStream) -> Void) throws(UVError) {
        self.onConnection = onConnection
        var status = address.withSockaddr { uv_tcp_bind(storage.assumingMemoryBound(to: uv_tcp_t.self), $0, 0) }
        if status != 0 { throw UVError(status, "binding \(address)") }
        status = uv_listen(storage.assumingMemoryBound(to: uv_stream_t.self), backlog) { server, status in
            let owner = Handle.owner(UnsafeMutableRawPointer(server!).assumingMemoryBound(to: uv_handle_t.self), as: Listener.self)
            guard status == 0 else { return }
            let client = SocketStream(loop: owner.loop, kind: .tcp)
            if uv_accept(server, client.stream) == 0 {
                owner.onConnection?(client)
            } else {
                client.close()
            }
        }
        if status != 0 { throw UVError(status, "listening on \(address)") }
    }

    /// The bound address (with the port the kernel chose for port 0).
    public var localAddress: SocketAddress? {
        var storage = sockaddr_storage()
        var length = Int32(MemoryLayout<sockaddr_storage>.size)
        let status = withUnsafeMutablePointer(to: &storage) { p in
            uv_tcp_getsockname(self.storage.assumingMemoryBound(to: uv_tcp_t.self),
                               UnsafeMutableRawPointer(p).assumingMemoryBound(to: sockaddr.self), &length)
        }
        guard status == 0 else { return nil }
        return withUnsafePointer(to: storage) {
            SocketAddress(copying: UnsafeRawPointer($0).assumingMemoryBound(to: sockaddr.self), length: Int(length))
        }
    }
}
