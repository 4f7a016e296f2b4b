// The WebSocket side of wire-probe: a client and a server built from TunnelCore's handshake and
// frame codecs over blocking loopback sockets, with inbound bytes landing in a RingBuffer exactly
// as the libuv layer will do it.
import Glibc
import TunnelCore

/// A blocking TCP socket with a ring buffer for what it receives.
final class Connection {
    let fd: Int32
    let inbound: RingBuffer

    init(fd: Int32) {
        self.fd = fd
        var timeout = timeval(tv_sec: 20, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        // A small ring so that frames regularly straddle the wrap-around point.
        inbound = try! RingBuffer(minimumCapacity: 48 * 1024)
    }

    static func connect(port: Int) -> Connection {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        if result != 0 { fail("connect to 127.0.0.1:\(port) failed: errno \(errno)") }
        return Connection(fd: fd)
    }

    func send(_ bytes: [UInt8]) {
        var sent = 0
        while sent < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + sent, $0.count - sent, Int32(MSG_NOSIGNAL)) }
            if n <= 0 { fail("send failed: errno \(errno)") }
            sent += n
        }
    }

    /// Reads once into the ring's free space. Returns false at end of stream.
    func fill() -> Bool {
        let (span, _) = inbound.writableSpans
        precondition(span.count > 0, "probe consumer must drain the ring before reading")
        let n = recv(fd, span.baseAddress, span.count, 0)
        if n < 0 { fail("recv failed: errno \(errno)") }
        if n == 0 { return false }
        inbound.commit(n)
        return true
    }

    /// Ends our side and waits for the peer to close, so that our last frames are not lost to a
    /// reset caused by unread input.
    func closeGracefully() {
        shutdown(fd, Int32(SHUT_WR))
        var scratch = [UInt8](repeating: 0, count: 4096)
        while scratch.withUnsafeMutableBytes({ recv(fd, $0.baseAddress, $0.count, 0) }) > 0 {}
        close(fd)
    }
}

/// Feeds a connection's ring into a frame decoder and collects whole binary messages.
struct MessageReader {
    let decoder: WebSocketFrameDecoder
    var message: [UInt8] = []

    enum Item {
        case message([UInt8])
        case ping([UInt8])
        case pong([UInt8])
        case close(UInt16?)
        case end
    }

    init(role: WebSocketRole) {
        decoder = WebSocketFrameDecoder(role: role)
    }

    /// The next message or control frame. Throws the decoder's protocol errors.
    mutating func next(_ connection: Connection) throws(WebSocketProtocolError) -> Item {
        while true {
            if let item = try drain(connection) { return item }
            if !connection.fill() { return .end }
        }
    }

    /// Decodes what is buffered, one event at a time (views into the ring stay valid until the
    /// bytes are consumed).
    private mutating func drain(_ connection: Connection) throws(WebSocketProtocolError) -> Item? {
        while connection.inbound.readableCount > 0 && !decoder.isFinished {
            let (span, _) = connection.inbound.readableSpans
            var input = span
            let event = try decoder.next(&input)
            connection.inbound.consume(span.count - input.count)
            guard let event else { continue }
            switch event {
            case .binary(let piece, let end):
                message.append(contentsOf: piece)
                if end {
                    defer { message = [] }
                    return .message(message)
                }
            case .ping(let p): return .ping(Array(p))
            case .pong(let p): return .pong(Array(p))
            case .close(let code, _): return .close(code)
            }
        }
        return nil
    }
}

func randomKey() -> WebSocketMaskingKey { WebSocketMaskingKey(UInt32.random(in: 0...UInt32.max)) }

/// Splits `count` bytes into `parts` nearly equal ranges (some may be empty).
func pieces(_ count: Int, _ parts: Int) -> [Range<Int>] {
    (0..<parts).map { i in (count * i / parts)..<(count * (i + 1) / parts) }
}

enum WebSocketClient {
    static let sizes = [0, 125, 126, 65_535, 65_536, 131_076]

    static func run(port: Int, fragments: Int) {
        let connection = Connection.connect(port: port)
        let keyBytes = (0..<16).map { _ in UInt8.random(in: 0...255) }
        let request = WebSocketUpgradeRequest(
            host: "127.0.0.1", mode: .source, accessToken: "probe-access-token",
            clientToken: "0f8e8b5e-1c2d-4e5f-8a9b-0c1d2e3f4a5b", keyBytes: keyBytes, userAgent: "wire-probe")
        do throws(WebSocketUpgradeError) { connection.send(try request.encoded()) } catch { fail("\(error)") }

        // Read the response through the ring; whatever follows the head stays for the decoder.
        var response = WebSocketUpgradeResponseReader(request: request)
        var outcome: WebSocketUpgradeOutcome? = nil
        while outcome == nil {
            if connection.inbound.readableCount == 0 && !connection.fill() {
                do throws(WebSocketUpgradeError) { outcome = try response.finish() } catch { fail("\(error)") }
                break
            }
            let (span, _) = connection.inbound.readableSpans
            var input = UnsafeRawBufferPointer(span)
            do throws(WebSocketUpgradeError) { outcome = try response.read(&input) } catch { fail("\(error)") }
            connection.inbound.consume(span.count - input.count)
        }
        switch outcome! {
        case .accepted(let subprotocol, let channelId):
            say("connected subprotocol=\(subprotocol) channel-id=\(channelId ?? "-")")
        case .rejected(let status, let reason, let body, _):
            fail("upgrade rejected: \(status) \(reason): \(body)")
        }

        var reader = MessageReader(role: .client)
        for (index, size) in sizes.enumerated() {
            let message = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ index &* 7 &+ size) }
            let ping = Array("p\(size)".utf8)
            let ranges = pieces(size, fragments)
            for (i, range) in ranges.enumerated() {
                let opcode: WebSocketOpcode = i == 0 ? .binary : .continuation
                connection.send(WebSocketFrameEncoder.frame(
                    opcode: opcode, fin: i == ranges.count - 1, payload: Array(message[range]), maskingKey: randomKey()))
                if i == 0 {
                    // Control frames may interleave a fragmented message (RFC 6455 §5.4).
                    connection.send(WebSocketFrameEncoder.frame(opcode: .ping, payload: ping, maskingKey: randomKey()))
                }
            }
            var gotMessage = false, gotPong = false
            while !(gotMessage && gotPong) {
                let item: MessageReader.Item
                do throws(WebSocketProtocolError) { item = try reader.next(connection) } catch {
                    fail("\(error) (close code \(error.closeCode))")
                }
                switch item {
                case .message(let echoed):
                    guard echoed == message else { fail("echo of \(size) bytes differs (got \(echoed.count) bytes)") }
                    gotMessage = true
                case .pong(let payload):
                    guard payload == ping else { fail("pong payload '\(hex(payload))' does not match ping '\(hex(ping))'") }
                    gotPong = true
                case .ping(let payload):
                    connection.send(WebSocketFrameEncoder.frame(opcode: .pong, payload: payload, maskingKey: randomKey()))
                case .close(let code):
                    fail("peer closed with \(code.map { String($0) } ?? "no code") while waiting for the echo of \(size) bytes")
                case .end:
                    fail("connection ended while waiting for the echo of \(size) bytes")
                }
            }
            say("ok size=\(size) frames=\(fragments)")
        }

        connection.send(WebSocketFrameEncoder.closeFrame(code: WebSocketCloseCode.normal, reason: "bye", maskingKey: randomKey()))
        while true {
            let item: MessageReader.Item
            do throws(WebSocketProtocolError) { item = try reader.next(connection) } catch { fail("\(error)") }
            switch item {
            case .close(let code):
                say("closed code=\(code.map { String($0) } ?? "-")")
                connection.closeGracefully()
                exit(0)
            case .end: fail("connection ended without a close frame")
            default: continue
            }
        }
    }
}

enum WebSocketServer {
    static func run(port: Int, connections: Int, fragments: Int) {
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var yes: Int32 = 1
        setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &yes, socklen_t(MemoryLayout<Int32>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer -> Bool in
                bind(listener, pointer, length) == 0 && listen(listener, 16) == 0 && getsockname(listener, pointer, &length) == 0
            }
        }
        if !bound { fail("cannot listen on 127.0.0.1:\(port): errno \(errno)") }
        say("listening port=\(UInt16(bigEndian: address.sin_port))")
        for _ in 0..<connections {
            let fd = accept(listener, nil, nil)
            if fd < 0 { fail("accept failed: errno \(errno)") }
            serve(Connection(fd: fd), fragments: fragments)
        }
        close(listener)
        exit(0)
    }

    static func serve(_ connection: Connection, fragments: Int) {
        guard let request = readRequest(connection) else { return }
        let offered = request.protocols
        guard let chosen = TunnelSubprotocol.all.first(where: { offered.contains($0) }) else {
            reject(connection, status: 400, body: "no supported Sec-WebSocket-Protocol offered (want \(TunnelSubprotocol.v3))")
            return
        }
        connection.send(WebSocketUpgradeResponse.switching(
            key: request.key, subprotocol: chosen, extraHeaders: [HTTPHeader("channel-id", "probe-channel")]))

        var reader = MessageReader(role: .server)
        while true {
            let item: MessageReader.Item
            do throws(WebSocketProtocolError) { item = try reader.next(connection) } catch {
                say("error: \(error) close=\(error.closeCode)")
                connection.send(WebSocketFrameEncoder.closeFrame(code: error.closeCode, reason: "protocol error", maskingKey: nil))
                finish(connection, code: String(error.closeCode))
                return
            }
            switch item {
            case .message(let message):
                let ranges = pieces(message.count, fragments)
                for (i, range) in ranges.enumerated() {
                    connection.send(WebSocketFrameEncoder.frame(
                        opcode: i == 0 ? .binary : .continuation, fin: i == ranges.count - 1,
                        payload: Array(message[range]), maskingKey: nil))
                }
            case .ping(let payload):
                connection.send(WebSocketFrameEncoder.frame(opcode: .pong, payload: payload, maskingKey: nil))
            case .pong:
                continue
            case .close(let code):
                if let code {
                    connection.send(WebSocketFrameEncoder.closeFrame(code: code, reason: "", maskingKey: nil))
                } else {
                    connection.send(WebSocketFrameEncoder.frame(opcode: .close, payload: [], maskingKey: nil))
                }
                finish(connection, code: code.map { String($0) } ?? "-")
                return
            case .end:
                finish(connection, code: "-")
                return
            }
        }
    }

    static func readRequest(_ connection: Connection) -> WebSocketUpgradeRequestHead? {
        var reader = HTTPHeadReader(limit: WebSocketUpgradeRequest.maximumLength)
        while true {
            if connection.inbound.readableCount == 0 && !connection.fill() {
                finish(connection, code: "-")
                return nil
            }
            let (span, _) = connection.inbound.readableSpans
            var input = UnsafeRawBufferPointer(span)
            let head: HTTPHead?
            do throws(HTTPHeadError) { head = try reader.read(&input) } catch {
                reject(connection, status: error == .tooLarge(limit: reader.limit) ? 431 : 400, body: "\(error)")
                return nil
            }
            connection.inbound.consume(span.count - input.count)
            guard let head else { continue }
            do throws(WebSocketUpgradeError) { return try WebSocketUpgradeRequestHead(head) } catch {
                if case .invalidUpgradeRequest(let status, _) = error {
                    reject(connection, status: status, body: "\(error)")
                } else {
                    reject(connection, status: 400, body: "\(error)")
                }
                return nil
            }
        }
    }

    static func reject(_ connection: Connection, status: Int, body: String) {
        connection.send(WebSocketUpgradeResponse.error(
            status: status, reason: WebSocketUpgradeResponse.reasonPhrase(status), body: body,
            extraHeaders: [HTTPHeader("channel-id", "probe-channel")]))
        finish(connection, code: "-")
    }

    static func finish(_ connection: Connection, code: String) {
        connection.closeGracefully()
        say("done close=\(code)")
    }
}
