import CLibUV

/// A UDP socket: datagrams sent from copies freed on completion, received into one fixed buffer
/// (DNS answers over UDP are at most 512 bytes without EDNS; a bigger datagram that was cut
/// short is dropped).
final class Datagram: Handle {
    static let receiveBufferSize = 4096
    private let receiveBuffer: UnsafeMutableRawBufferPointer
    private var onDatagram: ((UnsafeRawBufferPointer, SocketAddress) -> Void)? = nil

    init(loop: EventLoop) {
        receiveBuffer = .allocate(byteCount: Datagram.receiveBufferSize, alignment: 16)
        super.init(byteCount: MemoryLayout<uv_udp_t>.size)
        uv_udp_init(loop.loop, udp)
        retainForLibuv()
    }

    deinit { receiveBuffer.deallocate() }

    var udp: UnsafeMutablePointer<uv_udp_t> { storage.assumingMemoryBound(to: uv_udp_t.self) }

    override func willClose() { onDatagram = nil }

    func bind(to address: SocketAddress) throws(UVError) {
        let status = address.withSockaddr { uv_udp_bind(udp, $0, 0) }
        if status != 0 { throw UVError(status, "binding a UDP socket to \(address)") }
    }

    /// The bound address (with the port the kernel chose for port 0).
    var localAddress: SocketAddress? {
        var storage = sockaddr_storage()
        var length = Int32(MemoryLayout<sockaddr_storage>.size)
        let status = withUnsafeMutablePointer(to: &storage) { p in
            uv_udp_getsockname(udp, UnsafeMutableRawPointer(p).assumingMemoryBound(to: sockaddr.self), &length)
        }
        guard status == 0 else { return nil }
        return withUnsafePointer(to: storage) {
            SocketAddress(copying: UnsafeRawPointer($0).assumingMemoryBound(to: sockaddr.self), length: Int(length))
        }
    }

    /// Sends one datagram; `completion` gets nil once it is out. A failure to start is reported
    /// to `completion` before returning.
    func send(_ bytes: [UInt8], to address: SocketAddress, _ completion: @escaping (UVError?) -> Void) {
        guard !isClosing else { return }
        let copy = UnsafeMutableRawBufferPointer.allocate(byteCount: max(bytes.count, 1), alignment: 1)
        copy.copyBytes(from: bytes)
        let request = PendingRequest(uv_udp_send_t.self, owner: self) { status in
            copy.deallocate()
            completion(status == 0 ? nil : UVError(status, "sending to \(address)"))
        }
        var buffer = uv_buf_init(copy.baseAddress!.assumingMemoryBound(to: CChar.self), UInt32(bytes.count))
        let status = address.withSockaddr { a in
            uv_udp_send(request.request(uv_udp_send_t.self), udp, &buffer, 1, a) { req, status in
                PendingRequest.complete(UnsafeMutableRawPointer(req), status)
            }
        }
        if status != 0 {
            request.release()
            copy.deallocate()
            completion(UVError(status, "sending to \(address)"))
        }
    }

    /// Delivers each datagram with its sender; the bytes are valid during the call only.
    func startReceiving(_ handler: @escaping (UnsafeRawBufferPointer, SocketAddress) -> Void) throws(UVError) {
        onDatagram = handler
        let status = uv_udp_recv_start(udp, { handle, _, buffer in
            let owner = Handle.owner(handle, as: Datagram.self)
            buffer!.pointee = uv_buf_init(owner.receiveBuffer.baseAddress!.assumingMemoryBound(to: CChar.self),
                                          UInt32(owner.receiveBuffer.count))
        }, { handle, nread, _, sender, flags in
            let owner = Handle.owner(UnsafeMutableRawPointer(handle!).assumingMemoryBound(to: uv_handle_t.self), as: Datagram.self)
            // nread 0 without a sender means "nothing more for now"; errors on an unconnected
            // socket say nothing about any one peer; a datagram cut short cannot be parsed.
            guard nread >= 0, let sender, flags & UInt32(UV_UDP_PARTIAL.rawValue) == 0 else { return }
            let length = Int32(sender.pointee.sa_family) == AF_INET6 ? MemoryLayout<sockaddr_in6>.size : MemoryLayout<sockaddr_in>.size
            let from = SocketAddress(copying: sender, length: length)
            owner.onDatagram?(UnsafeRawBufferPointer(start: owner.receiveBuffer.baseAddress, count: nread), from)
        })
        if status != 0 {
            onDatagram = nil
            throw UVError(status, "receiving on a UDP socket")
        }
    }
}
