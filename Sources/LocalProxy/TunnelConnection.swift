import TunnelCore
import TunnelIO
import TunnelTLS

/// What the owner of a tunnel connection hears from it.
public protocol TunnelConnectionDelegate: AnyObject {
    func tunnelOpened(subprotocol: String, channelId: String?)
    /// A tunnel message arrived. Its payload view is valid only during the call.
    func tunnelMessage(_ message: TunnelMessage)
    /// While true, the connection takes no more messages (and, once its buffers are full, stops
    /// reading the socket) until `resumeReading()` is called.
    var tunnelReadingPaused: Bool { get }
    /// Space for outgoing frames became available.
    func tunnelWritable()
    /// The connection ended; called exactly once.
    func tunnelClosed(_ reason: TunnelCloseReason)
}

public enum TunnelCloseReason: CustomStringConvertible {
    /// The service sent a close frame: the tunnel was closed or expired, or the token rotated.
    case closedByService(code: UInt16?, reason: String)
    /// The service refused the upgrade (4xx: a new token is needed; 5xx: try again later).
    case rejected(status: Int, reason: String, body: String)
    /// The service's certificate did not verify.
    case certificate(TLSError)
    /// The web proxy wants other credentials (407): retrying with the same ones cannot help.
    case proxyAuthentication(String)
    /// Transport, TLS or protocol failure: worth reconnecting.
    case failed(String)
    /// `stop()` finished.
    case stopped

    public var description: String {
        switch self {
        case .closedByService(let code, let reason):
            return "closed by the service (code \(code.map { String($0) } ?? "none")\(reason.isEmpty ? "" : ", \(reason)"))"
        case .rejected(let status, let reason, let body):
            return "rejected the connection: \(status) \(reason)\(body.isEmpty ? "" : ": \(body)")"
        case .certificate(let error):
            return "certificate problem: \(error)"
        case .failed(let why), .proxyAuthentication(let why):
            return why
        case .stopped:
            return "stopped"
        }
    }
}

public struct TunnelEndpoint {
    public var host: String
    public var port: UInt16
    public var mode: TunnelMode
    public var accessToken: String
    public var clientToken: String?
    /// The web proxy to cross with CONNECT (`https_proxy`), or nil to connect directly.
    public var webProxy: WebProxy?

    public init(host: String, port: UInt16, mode: TunnelMode, accessToken: String, clientToken: String?, webProxy: WebProxy? = nil) {
        self.host = host
        self.port = port
        self.mode = mode
        self.accessToken = accessToken
        self.clientToken = clientToken
        self.webProxy = webProxy
    }
}

/// One WebSocket connection to the tunneling service: TCP, then TLS (mbedTLS over rings), then
/// the HTTP upgrade, then tunnel messages in binary frames. Client role. With a web proxy, the
/// TCP connection goes to the proxy, which is asked to CONNECT to the service before TLS starts.
///
/// The bytes go through a `TunnelPipeline` (the same one the emulated service runs as a
/// server): socket → `tls.ciphertextIn` → decrypt → plaintext → WebSocket decoder → tunnel
/// frame decoder → delegate. Each stage stops when the next is full, and parsing stops while
/// the delegate is congested, so memory stays fixed and back-pressure reaches the service as a
/// full TCP window. This class does the I/O, the timers and the connection's lifecycle.
public final class TunnelConnection: TunnelPipelineHandler {
    enum State {
        case resolving
        case connecting
        /// Connected to the web proxy and sent CONNECT; reading its answer. Next: tlsHandshake
        /// once the proxy answered 2xx, closed otherwise.
        case proxyConnecting
        case tlsHandshake
        case upgrading
        case open
        /// We sent a close frame and wait for the service's.
        case closing
        case closed
    }

    /// Bytes a data frame needs in front of its tunnel frame: the largest masked header.
    public static let frameHeadroom = WebSocketFrameEncoder.maximumHeaderLength

    public let endpoint: TunnelEndpoint
    let loop: EventLoop
    let resolver: Resolver
    let tlsConfiguration: TLSConfiguration
    let random: SecureRandom
    let logger: Logger
    public var delegate: TunnelConnectionDelegate?
    let pingIntervalMilliseconds: UInt64
    /// Dead-peer deadline: nothing read from the service (no pong, no data) for this long while
    /// reading was not paused ends the connection, so that a path dropped without a FIN or RST
    /// (a cellular link gone) is replaced in seconds rather than when TCP gives up. 0: off.
    let pongTimeoutMilliseconds: UInt64
    /// When the socket last gave us bytes (or reading last resumed after a pause).
    private var lastHeard: UInt64 = 0

    /// Control frames queued beyond this many mean the service has stopped reading: the
    /// connection is replaced rather than let the queue grow.
    static let controlQueueHardLimit = 4 * TunnelPipeline.controlQueueLimit

    private(set) var state = State.resolving
    private var socket: SocketStream? = nil
    private var pipeline: TunnelPipeline? = nil
    private var responseReader: WebSocketUpgradeResponseReader? = nil
    private var proxyReader: WebProxyAnswerReader? = nil
    private var writing = false
    private var closeReported = false
    private let timer: Timer
    private let pingTimer: Timer
    private var processing = false

    public init(loop: EventLoop, resolver: Resolver, endpoint: TunnelEndpoint, tls: TLSConfiguration, random: SecureRandom,
                logger: Logger, pingIntervalMilliseconds: Int, pongTimeoutMilliseconds: Int = 0) {
        self.loop = loop
        self.resolver = resolver
        self.endpoint = endpoint
        self.tlsConfiguration = tls
        self.random = random
        self.logger = logger
        self.pingIntervalMilliseconds = UInt64(pingIntervalMilliseconds)
        self.pongTimeoutMilliseconds = UInt64(max(0, pongTimeoutMilliseconds))
        timer = Timer(loop: loop)
        pingTimer = Timer(loop: loop)
    }

    var target: String { "\(endpoint.host):\(endpoint.port)" }
    /// What the TCP connection goes to: the service, or the web proxy in front of it.
    var firstHop: String { endpoint.webProxy.map { "the web proxy at \($0.address)" } ?? target }

    // MARK: Connecting

    /// Starts connecting; the outcome arrives through the delegate.
    public func start(handshakeTimeoutMilliseconds: UInt64 = 30_000) {
        timer.start(after: handshakeTimeoutMilliseconds) { [self] in
            if state == .proxyConnecting {
                fail(.failed("\(firstHop) did not answer CONNECT within \(handshakeTimeoutMilliseconds / 1000) s"))
            } else if state != .open && state != .closed {
                fail(.failed("no WebSocket connection to \(target) within \(handshakeTimeoutMilliseconds / 1000) s"))
            }
        }
        let host = endpoint.webProxy?.host ?? endpoint.host
        logger.debug("resolving \(host)")
        resolver.resolve(loop: loop, host: host, port: endpoint.webProxy?.port ?? endpoint.port) { [self] result in
            guard state == .resolving else { return }
            switch result {
            case .success(let addresses):
                state = .connecting
                connectTCP(loop: loop, to: addresses, logger: logger, adopt: { [self] in socket = $0 },
                           isCurrent: { [self] in state == .connecting }) { [self] result in
                    switch result {
                    case .success(let stream): startReading(stream)
                    case .failure(let error): fail(.failed("cannot connect to \(firstHop): \(error)"))
                    }
                }
            case .failure(let error): fail(.failed(endpoint.webProxy == nil ? "\(error)" : "\(firstHop): \(error)"))
            }
        }
    }

    /// Sets up TLS (SNI and host check on the endpoint, also through a proxy) and reads the
    /// socket into its input ring. Through a web proxy the proxy's answer lands in that ring
    /// first: the answer reader consumes its head, and whatever follows stays for TLS.
    private func startReading(_ stream: SocketStream) {
        let engine: TLSEngine
        do {
            engine = try TLSEngine(configuration: tlsConfiguration, serverName: endpoint.host)
            pipeline = try TunnelPipeline(role: .client, tls: engine, random: random)
        } catch {
            fail(.failed("\(error)"))
            return
        }
        stream.allocate = { engine.ciphertextIn.writableSpans.0 }
        stream.onRead = { [self] result in
            switch result {
            case .success(let n):
                engine.ciphertextIn.commit(n)
                lastHeard = loop.now
                if state == .proxyConnecting { readProxyAnswer() } else { drive() }
            case .failure(let error):
                if state == .proxyConnecting {
                    fail(.failed("\(firstHop) closed the connection before answering CONNECT\(error.code == UVError.endOfFile ? "" : ": \(error)")"))
                } else if error.code == UVError.endOfFile {
                    fail(.failed(state == .open ? "the service closed the connection without a close frame" : "the service closed the connection during the handshake"))
                } else {
                    fail(.failed("connection to \(target) lost: \(error)"))
                }
            }
        }
        state = endpoint.webProxy == nil ? .tlsHandshake : .proxyConnecting
        stream.startReading()
        guard state != .closed else { return }
        if let proxy = endpoint.webProxy {
            proxyReader = WebProxyAnswerReader()
            let request = proxy.connectRequest(host: endpoint.host, port: endpoint.port)
            // The request goes out through the ring TLS writes to, which is empty until TLS starts.
            guard request.withUnsafeBytes({ engine.ciphertextOut.write($0) }) else {
                fail(.failed("the CONNECT request of \(request.count) bytes does not fit the output buffer"))
                return
            }
            logger.debug("asking \(firstHop) to CONNECT to \(target)")
            flush()
        } else {
            drive()
        }
    }

    /// Reads the web proxy's answer to CONNECT from the input ring, consuming only its head.
    private func readProxyAnswer() {
        guard var reader = proxyReader, let pipeline else { return }
        let ring = pipeline.tls.ciphertextIn
        var answer: WebProxyAnswer? = nil
        do {
            while answer == nil && ring.readableCount > 0 {
                let span = UnsafeRawBufferPointer(ring.readableSpans.0)
                if span.isEmpty { break }
                var input = span
                answer = try reader.read(&input)
                ring.consume(span.count - input.count)
            }
        } catch {
            fail(.failed("\(firstHop) answered CONNECT with something that is not an HTTP response: \(error)"))
            return
        }
        proxyReader = reader
        guard let answer else { return }
        proxyReader = nil
        switch answer {
        case .established(let status):
            logger.debug("\(firstHop) answered \(status): starting TLS with \(target) through it")
            state = .tlsHandshake
            drive()
        case .refused(let status, let reason) where status == 407:
            fail(.proxyAuthentication(endpoint.webProxy?.credentials == nil
                ? "\(firstHop) requires credentials (407 \(reason)): give them in https_proxy as http://USER:PASSWORD@HOST:PORT"
                : "\(firstHop) refused the credentials (407 \(reason)): check the user and password in https_proxy"))
        case .refused(let status, let reason):
            fail(.failed("\(firstHop) refused to connect to \(target): \(status) \(reason)"))
        }
    }

    // MARK: The pump

    /// Moves bytes through the pipeline as far as buffers allow, then sends what it produced.
    /// Called after each read, after each completed write, and when the delegate resumes.
    private func drive() {
        guard !processing, state != .proxyConnecting else { return }
        processing = true
        defer { processing = false }
        guard let pipeline, let socket else { return }
        do {
            try pipeline.pump(self)
        } catch {
            switch error {
            case .handshake(let tlsError) where tlsError.isCertificateVerificationFailure:
                fail(.certificate(tlsError))
            case .handshake(let tlsError):
                fail(.failed("TLS handshake with \(target) failed: \(tlsError)"))
            case .tls(let tlsError):
                fail(.failed("TLS error from \(target): \(tlsError)"))
            }
            return
        }
        if state == .closed { return }
        if (state == .upgrading || state == .open || state == .closing) && pipeline.peerEndedTLS {
            fail(.failed("the service ended TLS without a WebSocket close frame"))
            return
        }
        flush()
        if state != .closed && !socket.isReading && pipeline.tls.ciphertextIn.writableCount > 0 {
            socket.startReading()
        }
    }

    public func pipelineHandshakeDone() {
        guard let pipeline else { return }
        logger.info("TLS established with \(target): \(pipeline.tls.negotiated)")
        let request = WebSocketUpgradeRequest(
            host: endpoint.host, mode: endpoint.mode, accessToken: endpoint.accessToken,
            clientToken: endpoint.clientToken, protocols: [TunnelSubprotocol.v3],
            keyBytes: random.bytes(16), userAgent: "localproxy/\(LocalProxyVersion.string)")
        let bytes: [UInt8]
        do {
            bytes = try request.encoded()
        } catch {
            fail(.failed("\(error)"))
            return
        }
        responseReader = WebSocketUpgradeResponseReader(request: request)
        state = .upgrading
        pipeline.queueRaw(bytes)
    }

    public func pipelineUpgradeBytes(_ bytes: UnsafeRawBufferPointer) -> Int {
        guard var reader = responseReader, let pipeline else { return 0 }
        var input = bytes
        let outcome: WebSocketUpgradeOutcome?
        do {
            outcome = try reader.read(&input)
        } catch {
            fail(.failed("bad upgrade response from \(target): \(error)"))
            return bytes.count - input.count
        }
        responseReader = reader
        guard let outcome else { return bytes.count - input.count }
        responseReader = nil
        switch outcome {
        case .accepted(let subprotocol, let channelId):
            state = .open
            timer.stop()
            pipeline.startFrames()
            lastHeard = loop.now
            pingTimer.start(after: pingIntervalMilliseconds, repeat: pingIntervalMilliseconds) { [self] in sendPing() }
            delegate?.tunnelOpened(subprotocol: subprotocol, channelId: channelId)
        case .rejected(let status, let reason, let body, let channelId):
            if let channelId { logger.info("channel-id of the rejected connection: \(channelId)") }
            fail(.rejected(status: status, reason: reason, body: oneLine(body)))
        }
        return bytes.count - input.count
    }

    public func pipelineMessage(_ bytes: UnsafeRawBufferPointer) {
        do {
            let message = try TunnelMessage.decode(bytes)
            delegate?.tunnelMessage(message)
        } catch {
            // The stream of tunnel messages can no longer be trusted: start a new session.
            logger.error("undecodable tunnel message from the service: \(error)")
            closeAfterError(code: WebSocketCloseCode.invalidPayload, reason: "undecodable tunnel message",
                            why: "undecodable tunnel message: \(error)")
        }
    }

    /// Message boundaries do not matter to the client: tunnel messages are read as they come.
    public func pipelineMessageEnded() {}

    public func pipelinePong(_ payload: UnsafeRawBufferPointer) {
        if let sent = parseUInt(String(decoding: payload, as: UTF8.self)) {
            logger.debug("pong from the service after \(loop.now &- sent) ms")
        }
    }

    public func pipelineCloseFrame(code: UInt16?, reason: UnsafeRawBufferPointer) {
        closeReceived(code: code, reason: String(decoding: reason, as: UTF8.self))
    }

    public func pipelineProtocolError(_ error: WebSocketProtocolError) {
        logger.error("the service broke the WebSocket protocol: \(error)")
        closeAfterError(code: error.closeCode, reason: "protocol error", why: "WebSocket protocol error: \(error)")
    }

    /// Parsing stops while a local connection is congested, and while too many control frames
    /// wait for room in TLS (each message parsed may queue a reset or a pong).
    public var pipelinePaused: Bool {
        if let pipeline, pipeline.queuedControlCount >= TunnelPipeline.controlQueueLimit { return true }
        return delegate?.tunnelReadingPaused ?? false
    }

    // MARK: Sending

    /// Sends a control message (no payload) after the frames already queued.
    public func send(_ message: TunnelMessage) {
        guard state == .open, let pipeline else { return }
        if logger.enabled(.trace) {
            logger.trace("sending \(message.type) stream \(message.streamId) connection \(message.connectionId)")
        }
        guard pipeline.queuedControlCount < TunnelConnection.controlQueueHardLimit else {
            fail(.failed("the service has not taken \(pipeline.queuedControlCount) queued control messages: reconnecting"))
            return
        }
        do {
            let payload = try TunnelFrame.encode(message)
            payload.withUnsafeBytes { pipeline.queueFrame(.binary, payload: $0) }
        } catch {
            logger.error("cannot encode \(message.type): \(error)")
            return
        }
        if !processing { flush() }
    }

    public func nextMaskingKey() -> WebSocketMaskingKey { WebSocketMaskingKey(random.uint32()) }

    /// Writes one complete, already masked data frame, if it fits now. Returns false when the
    /// outgoing buffer is too full; the delegate hears `tunnelWritable()` when to try again.
    public func writeFrame(_ frame: UnsafeRawBufferPointer) -> Bool {
        guard state == .open, let pipeline else { return false }
        do {
            guard try pipeline.writeFrame(frame) else { return false }
        } catch {
            fail(.failed("TLS error: \(error)"))
            return false
        }
        if !processing { flush() }
        return true
    }

    /// Whether a data frame of `count` bytes would be accepted now.
    public func canWrite(_ count: Int) -> Bool {
        guard state == .open, let pipeline else { return false }
        return pipeline.canWriteFrame(count)
    }

    /// Moves queued control frames into TLS and ciphertext onto the socket.
    private func flush() {
        guard let pipeline, let socket, state != .closed else { return }
        do {
            try pipeline.flushControl()
        } catch {
            fail(.failed("TLS error: \(error)"))
            return
        }
        let out = pipeline.tls.ciphertextOut
        guard !writing else { return }
        writing = sendRing(out, on: socket) { [self] error in
            writing = false
            guard state != .closed else { return }
            if let error {
                fail(.failed("sending to \(target) failed: \(error)"))
                return
            }
            flush()
            if state == .closing && pipeline.closeWritten && pipeline.queuedControlCount == 0
                && out.readableCount == 0 && closeAcknowledged {
                finishClose()
                return
            }
            if state == .open { delegate?.tunnelWritable() }
            drive()
        }
    }

    private func sendPing() {
        guard state == .open, let pipeline else { return }
        if pongTimeoutMilliseconds > 0 {
            let now = loop.now
            if pipelinePaused || (socket.map { !$0.isReading } ?? false) {
                // Not reading on purpose (a local connection is congested): silence means nothing.
                lastHeard = now
            } else if now &- lastHeard >= pongTimeoutMilliseconds {
                fail(.failed("nothing from the service for \(now &- lastHeard) ms (no pong to our pings; --pong-timeout-ms \(pongTimeoutMilliseconds)): the connection is presumed dead"))
                return
            }
        }
        let stamp = Array(String(loop.now).utf8)
        stamp.withUnsafeBytes { pipeline.queueFrame(.ping, payload: $0) }
        if !processing { flush() }
    }

    // MARK: Closing

    private var closeAcknowledged = false
    private var closeReasonToReport: TunnelCloseReason? = nil

    /// The service sent a close frame: answer it, then end.
    private func closeReceived(code: UInt16?, reason: String) {
        if state == .closing {
            // The answer to our own close.
            closeAcknowledged = true
            finishClose()
            return
        }
        closeReasonToReport = .closedByService(code: code, reason: reason)
        pipeline?.queueClose(code: code ?? WebSocketCloseCode.normal, reason: "")
        state = .closing
        closeAcknowledged = true
        pipeline?.tls.close()
        flushThenFinish()
    }

    /// Ends the connection politely: a close frame with 1000, then waits (up to 2 s) for the
    /// service's answer.
    public func stop() {
        switch state {
        case .open:
            closeReasonToReport = .stopped
            pipeline?.queueClose(code: WebSocketCloseCode.normal, reason: "local proxy stopping")
            state = .closing
            timer.start(after: 2000) { [self] in finishClose() }
            flush()
        case .closing, .closed:
            return
        default:
            fail(.stopped)
        }
    }

    /// Sends a close frame with `code` (RFC 6455 §7.1.7), then drops the connection once it is
    /// out (or after 2 s), reporting `why`. Nothing more the service sends is read.
    private func closeAfterError(code: UInt16, reason: String, why: String) {
        closeReasonToReport = .failed(why)
        pipeline?.queueClose(code: code, reason: reason)
        pipeline?.discardInput()
        state = .closing
        closeAcknowledged = true
        flushThenFinish()
    }

    private func flushThenFinish() {
        flush()
        if !writing && (pipeline?.tls.ciphertextOut.readableCount ?? 0) == 0 { finishClose() }
        else { timer.start(after: 2000) { [self] in finishClose() } }
    }

    private func finishClose() {
        guard state != .closed else { return }
        fail(closeReasonToReport ?? .stopped)
    }

    /// Tears everything down and reports `reason` (once).
    private func fail(_ reason: TunnelCloseReason) {
        guard state != .closed else { return }
        state = .closed
        timer.close()
        pingTimer.close()
        if let socket {
            socket.close()
        }
        socket = nil
        pipeline?.finish()
        if !closeReported {
            closeReported = true
            let d = delegate
            delegate = nil
            d?.tunnelClosed(reason)
        }
    }

    /// Called by the delegate when it can take messages again.
    public func resumeReading() {
        guard state == .open || state == .closing else { return }
        drive()
    }

    /// Drops the connection at once (no close frame), e.g. to reconnect after a session error.
    public func abort(_ why: String) {
        fail(.failed(why))
    }
}

func oneLine(_ text: String) -> String {
    var out = ""
    for c in text.unicodeScalars {
        if c == "\n" || c == "\r" { out += " " } else { out.unicodeScalars.append(c) }
    }
    return trim(out)
}

func parseUInt(_ s: String) -> UInt64? {
    let bytes = Array(s.utf8)
    guard !bytes.isEmpty, bytes.count <= 19 else { return nil }
    var n: UInt64 = 0
    for b in bytes {
        guard b >= 0x30 && b <= 0x39 else { return nil }
        n = n * 10 + UInt64(b - 0x30)
    }
    return n
}
