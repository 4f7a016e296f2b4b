import TunnelCore
import TunnelIO
import TunnelTLS

/// The control plane's HTTP/1.1 endpoint (plain HTTP on loopback, as `--endpoint-url
/// http://...` expects). Each request is answered by `ControlPlane`; the effects it returns are
/// carried out by the data plane before the response is written, so that a client which sees
/// CloseTunnel succeed can rely on the close frames being on their way.
final class ControlServer {
    static let maximumConnections = 64
    static let idleTimeoutMilliseconds: UInt64 = 300_000

    let loop: EventLoop
    let controlPlane: ControlPlane
    let plane: DataPlane
    let log: ServiceLog
    let random: SecureRandom
    let clock: () -> Double
    /// Publishes destination tokens to the MQTT broker (`--mqtt-broker`), when there is one.
    var notifier: TunnelNotifier? = nil
    /// Called after every request that reached the control plane (expiry may have changed).
    var afterRequest: (() -> Void)? = nil

    private var listener: Listener? = nil
    private var connections: [Int: HTTPConnection] = [:]
    private var nextId = 1

    init(loop: EventLoop, controlPlane: ControlPlane, plane: DataPlane, log: ServiceLog, random: SecureRandom,
         clock: @escaping () -> Double) {
        self.loop = loop
        self.controlPlane = controlPlane
        self.plane = plane
        self.log = log
        self.random = random
        self.clock = clock
    }

    func start(address: SocketAddress) throws(UVError) -> SocketAddress {
        let listener = Listener(loop: loop)
        self.listener = listener
        do {
            try listener.listen(on: address) { [self] stream in accept(stream) }
        } catch {
            listener.close()
            self.listener = nil
            throw error
        }
        return listener.localAddress ?? address
    }

    private func accept(_ stream: SocketStream) {
        guard connections.count < ControlServer.maximumConnections else {
            stream.close()
            return
        }
        let connection: HTTPConnection
        do {
            connection = try HTTPConnection(id: nextId, server: self, loop: loop, socket: stream)
        } catch {
            stream.close()
            return
        }
        connections[nextId] = connection
        nextId += 1
        connection.start()
    }

    func removed(_ connection: HTTPConnection) { connections[connection.id] = nil }

    func shutdown() {
        listener?.close()
        listener = nil
        for connection in Array(connections.values) { connection.close() }
    }

    /// Answers one request: routing, the operation, its effects, the response bytes.
    func respond(to request: HTTPRequest) -> [UInt8] {
        let requestId = random.uuid()
        func error(_ status: Int, _ type: String, _ message: String) -> [UInt8] {
            let body = JSONValue.object(["__type": .string(type), "message": .string(message)]).serialized
            return HTTPRequestParser.response(status: status, contentType: ControlPlane.contentType, body: Array(body.utf8),
                                              keepAlive: request.keepAlive, requestId: requestId)
        }
        guard request.path == "/" else {
            return error(404, "UnknownOperationException", "The control plane answers POST / only.")
        }
        guard request.method == "POST" else {
            return error(405, "UnknownOperationException", "The control plane answers POST / only.")
        }
        let target = request.headers.first("x-amz-target")
        let response = controlPlane.handle(target: target, authorization: request.headers.first("authorization"),
                                           body: request.body, now: clock())
        let operation = target.map { String($0.dropFirst(ControlPlane.targetPrefix.count)) } ?? "(no target)"
        if let type = response.errorType {
            log.info("control plane: \(operation) -> \(response.status) \(type)")
        } else {
            log.info("control plane: \(operation) -> \(response.status)")
        }
        plane.apply(response.effects)
        for case .notifyDestination(let thing, let token, let services) in response.effects {
            if let notifier {
                notifier.publish(thing: thing, accessToken: token, services: services)
            } else {
                log.info("control plane: no --mqtt-broker, so the destination token for thing \(thing) is not published")
            }
        }
        afterRequest?()
        return HTTPRequestParser.response(status: response.status, contentType: ControlPlane.contentType,
                                          body: Array(response.body.serialized.utf8), keepAlive: request.keepAlive,
                                          requestId: requestId)
    }
}

/// One HTTP client connection: reads requests in order (pipelining works), answers each, and
/// stops reading while too many answers are still being written.
final class HTTPConnection {
    static let maximumPendingWrites = 8

    let id: Int
    unowned let server: ControlServer
    private let socket: SocketStream
    private let input: RingBuffer
    private var parser = HTTPRequestParser()
    private let idleTimer: Timer
    private var closing = false
    private var closed = false

    init(id: Int, server: ControlServer, loop: EventLoop, socket: SocketStream) throws(RingBufferError) {
        self.id = id
        self.server = server
        self.socket = socket
        input = try RingBuffer(minimumCapacity: 64 * 1024)
        idleTimer = Timer(loop: loop)
    }

    func start() {
        let buffer = input
        socket.allocate = { [self] in
            socket.pendingWrites >= HTTPConnection.maximumPendingWrites ? UnsafeMutableRawBufferPointer(start: nil, count: 0)
                : buffer.writableSpans.0
        }
        socket.onRead = { [self] result in
            switch result {
            case .success(let n):
                input.commit(n)
                process()
            case .failure:
                close()
            }
        }
        socket.startReading()
        armIdleTimer()
    }

    private func armIdleTimer() {
        idleTimer.start(after: ControlServer.idleTimeoutMilliseconds) { [self] in close() }
    }

    private func process() {
        while !closing && input.readableCount > 0 {
            let span = input.readableSpans.0
            var view = UnsafeRawBufferPointer(span)
            let result = parser.next(&view)
            input.consume(span.count - view.count)
            switch result {
            case .success(nil):
                continue
            case .success(.expectContinue?):
                send(Array("HTTP/1.1 100 Continue\r\n\r\n".utf8))
            case .success(.request(let request)?):
                armIdleTimer()
                send(server.respond(to: request))
                if !request.keepAlive { closing = true }
            case .failure(let failure):
                let body = JSONValue.object(["__type": .string("SerializationException"), "message": .string(failure.message)]).serialized
                send(HTTPRequestParser.response(status: failure.status, contentType: ControlPlane.contentType,
                                                body: Array(body.utf8), keepAlive: false, requestId: server.random.uuid()))
                closing = true
            }
        }
        if closing && socket.pendingWrites == 0 { close() }
    }

    private func send(_ bytes: [UInt8]) {
        guard !closed else { return }
        let copy = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes.count, alignment: 1)
        copy.copyBytes(from: bytes)
        socket.write(UnsafeRawBufferPointer(copy)) { [self] error in
            copy.deallocate()
            if error != nil {
                close()
                return
            }
            if closing && socket.pendingWrites == 0 {
                close()
            } else if !closed && !socket.isReading {
                socket.startReading()
            }
        }
    }

    func close() {
        guard !closed else { return }
        closed = true
        closing = true
        idleTimer.close()
        socket.close()
        server.removed(self)
    }
}
