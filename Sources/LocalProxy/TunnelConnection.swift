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
///
/// Lifecycle (`State`; each case carries what only that stage needs):
///
///     resolving -> connecting -+-----------------------------+-> tlsHandshake -> upgrading(reader) -> open
///                              +-> proxyConnecting(reader) --+                                         |
///                                                                      closing(reason, acknowledged) <-+
///     any state -> closed (`fail`: the only way in; the delegate hears `tunnelClosed` once)
///
/// | state                          | next                          | why                                        |
/// |--------------------------------|-------------------------------|--------------------------------------------|
/// | resolving                      | connecting, closed            | the endpoint's (or the web proxy's) name resolved; it did not, the handshake timeout, `stop` or `abort` |
/// | connecting                     | tlsHandshake, proxyConnecting, closed | TCP connected (to the service, or to the web proxy, which is sent CONNECT); no address answered, timeout, `stop`, `abort` |
/// | proxyConnecting(answer reader) | tlsHandshake, closed          | the proxy answered 2xx; it refused (407: `.proxyAuthentication`), sent no HTTP, closed, or the timeout passed |
/// | tlsHandshake                   | upgrading, closed             | handshake done: the upgrade request is queued; the certificate did not verify (`.certificate`), TLS failed, EOF, timeout |
/// | upgrading(response reader)     | open, closed                  | 101 with our subprotocol; any other status (`.rejected`), a malformed answer, EOF, timeout |
/// | open                           | closing, closed               | `stop` (our close frame 1000, then wait for the answer: acknowledged false); the service's close frame (answered: acknowledged true); an undecodable message or a WebSocket protocol error (our close frame with the error's code; nothing more is read: acknowledged true); transport or TLS lost, no pong in time, too many control frames queued, `abort` |
/// | closing(reason, acknowledged)  | closed                        | the service answered our close frame; once acknowledged, our close frame and everything before it reached the socket; 2 s passed; transport lost. `reason` is what the delegate hears unless the transport fails first |
/// | closed                         | —                             | timers, socket and pipeline are released |
///
/// Two flags stay outside the enum because they are not stages of the lifecycle but facts about
/// the I/O of the moment, true or false in any stage from `connecting` to `closing`:
/// `writeInFlight` (a socket write of `tls.ciphertextOut` is under way: the ring's readable spans
/// must not be written twice) and `pumping` (the pipeline is being pumped: a delegate call made
/// from inside the pump that sends something must not pump again, and flushes once the pump
/// returns). The socket and the pipeline are not lifecycle either: they exist from the TCP
/// connection until `closed`, across five states.
public final class TunnelConnection: TunnelPipelineHandler {
    /// `indirect`: the payloads live in boxes, so copying a state is a retain. With the readers
    /// inline, the enum's copy and destroy functions cost about 1.3 KB of the armv7 binary.
    indirect enum State {
        case resolving
        case connecting
        /// Connected to the web proxy and sent CONNECT; reading its answer with this reader.
        case proxyConnecting(WebProxyAnswerReader)
        case tlsHandshake
        /// The upgrade request is out; reading the service's answer with this reader.
        case upgrading(WebSocketUpgradeResponseReader)
        case open
        /// A close frame was sent (or queued); `reason` is what the delegate will hear.
        /// `acknowledged`: the service's close frame arrived, or nothing more will be read; the
        /// connection then ends as soon as our close frame is out.
        case closing(reason: TunnelCloseReason, acknowledged: Bool)
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
    /// A write of `tls.ciphertextOut` to the socket is under way.
    private var writeInFlight = false
    /// `drive` is pumping the pipeline (re-entrancy guard; see the class's header).
    private var pumping = false
    /// The handshake deadline until `open`; the 2 s close deadline in `closing`.
    private let timer: Timer
    private let pingTimer: Timer

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

    private var isOpen: Bool {
        if case .open = state { return true }
        return false
    }

    private var isClosed: Bool {
        if case .closed = state { return true }
        return false
    }

    var target: String { "\(endpoint.host):\(endpoint.port)" }
    /// What the TCP connection goes to: the service, or the web proxy in front of it.
    var firstHop: String { endpoint.webProxy.map { "the web proxy at \($0.address)" } ?? target }

    // MARK: Connecting

    /// Starts connecting; the outcome arrives through the delegate.
    public func start(handshakeTimeoutMilliseconds: UInt64 = 30_000) {
        timer.start(after: handshakeTimeoutMilliseconds) { [self] in
            switch state {
            case .proxyConnecting:
                fail(.failed("\(firstHop) did not answer CONNECT within \(handshakeTimeoutMilliseconds / 1000) s"))
            case .resolving, .connecting, .tlsHandshake, .upgrading:
                fail(.failed("no WebSocket connection to \(target) within \(handshakeTimeoutMilliseconds / 1000) s"))
            case .open, .closing, .closed:
                // `open` stopped this deadline and `closing` replaced it with its own.
                break
            }
        }
        let host = endpoint.webProxy?.host ?? endpoint.host
        logger.debug("resolving \(host)")
        resolver.resolve(loop: loop, host: host, port: endpoint.webProxy?.port ?? endpoint.port) { [self] result in
            guard case .resolving = state else { return }
            switch result {
            case .success(let addresses):
                state = .connecting
                connectTCP(loop: loop, to: addresses, logger: logger, adopt: { [self] in socket = $0 },
                           isCurrent: { [self] in if case .connecting = state { true } else { false } }) { [self] result in
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
                if case .proxyConnecting = state { readProxyAnswer() } else { drive() }
            case .failure(let error):
                if case .proxyConnecting = state {
                    fail(.failed("\(firstHop) closed the connection before answering CONNECT\(error.code == UVError.endOfFile ? "" : ": \(error)")"))
                } else if error.code == UVError.endOfFile {
                    fail(.failed(isOpen ? "the service closed the connection without a close frame" : "the service closed the connection during the handshake"))
                } else {
                    fail(.failed("connection to \(target) lost: \(error)"))
                }
            }
        }
        state = endpoint.webProxy == nil ? .tlsHandshake : .proxyConnecting(WebProxyAnswerReader())
        stream.startReading()
        guard !isClosed else { return }
        if let proxy = endpoint.webProxy {
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
        guard case .proxyConnecting(var reader) = state, let pipeline else { return }
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
        guard let answer else {
            state = .proxyConnecting(reader)
            return
        }
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
        guard !pumping else { return }
        if case .proxyConnecting = state { return }
        pumping = true
        defer { pumping = false }
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
        switch state {
        case .closed:
            return
        case .upgrading, .open, .closing:
            if pipeline.peerEndedTLS {
                fail(.failed("the service ended TLS without a WebSocket close frame"))
                return
            }
        case .resolving, .connecting, .proxyConnecting, .tlsHandshake:
            break
        }
        flush()
        if !isClosed && !socket.isReading && pipeline.tls.ciphertextIn.writableCount > 0 {
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
        state = .upgrading(WebSocketUpgradeResponseReader(request: request))
        pipeline.queueRaw(bytes)
    }

    public func pipelineUpgradeBytes(_ bytes: UnsafeRawBufferPointer) -> Int {
        guard case .upgrading(var reader) = state, let pipeline else { return 0 }
        var input = bytes
        let outcome: WebSocketUpgradeOutcome?
        do {
            outcome = try reader.read(&input)
        } catch {
            fail(.failed("bad upgrade response from \(target): \(error)"))
            return bytes.count - input.count
        }
        guard let outcome else {
            state = .upgrading(reader)
            return bytes.count - input.count
        }
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
        if let sent = parseUInt(payload) {
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
        guard isOpen, let pipeline else { return }
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
        if !pumping { flush() }
    }

    public func nextMaskingKey() -> WebSocketMaskingKey { WebSocketMaskingKey(random.uint32()) }

    /// Writes one complete, already masked data frame, if it fits now. Returns false when the
    /// outgoing buffer is too full; the delegate hears `tunnelWritable()` when to try again.
    public func writeFrame(_ frame: UnsafeRawBufferPointer) -> Bool {
        guard isOpen, let pipeline else { return false }
        do {
            guard try pipeline.writeFrame(frame) else { return false }
        } catch {
            fail(.failed("TLS error: \(error)"))
            return false
        }
        if !pumping { flush() }
        return true
    }

    /// Whether a data frame of `count` bytes would be accepted now.
    public func canWrite(_ count: Int) -> Bool {
        guard isOpen, let pipeline else { return false }
        return pipeline.canWriteFrame(count)
    }

    /// Moves queued control frames into TLS and ciphertext onto the socket.
    private func flush() {
        guard let pipeline, let socket, !isClosed else { return }
        do {
            try pipeline.flushControl()
        } catch {
            fail(.failed("TLS error: \(error)"))
            return
        }
        let out = pipeline.tls.ciphertextOut
        guard !writeInFlight else { return }
        writeInFlight = sendRing(out, on: socket) { [self] error in
            writeInFlight = false
            if isClosed { return }
            if let error {
                fail(.failed("sending to \(target) failed: \(error)"))
                return
            }
            flush()
            if case .closing(_, acknowledged: true) = state, pipeline.closeWritten,
               pipeline.queuedControlCount == 0, out.readableCount == 0 {
                finishClose()
                return
            }
            if isOpen { delegate?.tunnelWritable() }
            drive()
        }
    }

    private func sendPing() {
        guard isOpen, let pipeline else { return }
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
        if !pumping { flush() }
    }

    // MARK: Closing

    /// The service sent a close frame: answer it, then end.
    private func closeReceived(code: UInt16?, reason: String) {
        if case .closing = state {
            // The answer to our own close.
            finishClose()
            return
        }
        pipeline?.queueClose(code: code ?? WebSocketCloseCode.normal, reason: "")
        state = .closing(reason: .closedByService(code: code, reason: reason), acknowledged: true)
        // Our close frame goes into TLS before close_notify: the service reads nothing after
        // close_notify, so the other order lost the answer. (A TLS error here is met again by
        // the flush below.)
        if let pipeline, (try? pipeline.flushControl()) == true { pipeline.tls.close() }
        flushThenFinish()
    }

    /// Ends the connection politely: a close frame with 1000, then waits (up to 2 s) for the
    /// service's answer.
    public func stop() {
        switch state {
        case .open:
            pipeline?.queueClose(code: WebSocketCloseCode.normal, reason: "local proxy stopping")
            state = .closing(reason: .stopped, acknowledged: false)
            timer.start(after: 2000) { [self] in finishClose() }
            flush()
        case .closing, .closed:
            return
        case .resolving, .connecting, .proxyConnecting, .tlsHandshake, .upgrading:
            fail(.stopped)
        }
    }

    /// Sends a close frame with `code` (RFC 6455 §7.1.7), then drops the connection once it is
    /// out (or after 2 s), reporting `why`. Nothing more the service sends is read.
    private func closeAfterError(code: UInt16, reason: String, why: String) {
        pipeline?.queueClose(code: code, reason: reason)
        pipeline?.discardInput()
        state = .closing(reason: .failed(why), acknowledged: true)
        flushThenFinish()
    }

    private func flushThenFinish() {
        flush()
        if !writeInFlight && (pipeline?.tls.ciphertextOut.readableCount ?? 0) == 0 { finishClose() }
        else { timer.start(after: 2000) { [self] in finishClose() } }
    }

    private func finishClose() {
        if case .closing(let reason, _) = state { fail(reason) } else { fail(.stopped) }
    }

    /// Tears everything down and reports `reason`. Only the first call does anything: it is the
    /// one way into `closed`, which nothing leaves, so the delegate hears it exactly once.
    private func fail(_ reason: TunnelCloseReason) {
        if isClosed { return }
        state = .closed
        timer.close()
        pingTimer.close()
        if let socket {
            socket.close()
        }
        socket = nil
        pipeline?.finish()
        let d = delegate
        delegate = nil
        d?.tunnelClosed(reason)
    }

    /// Called by the delegate when it can take messages again.
    public func resumeReading() {
        switch state {
        case .open, .closing: drive()
        default: return
        }
    }

    /// Drops the connection at once (no close frame), e.g. to reconnect after a session error.
    public func abort(_ why: String) {
        fail(.failed(why))
    }
}

/// `text` with each line break (CR, LF) made a space, trimmed: one line for a log or a status.
/// Byte-wise: CR and LF are never part of a longer UTF-8 sequence.
func oneLine(_ text: String) -> String {
    var bytes = Array(text.utf8)
    for i in bytes.indices where bytes[i] == 0x0A || bytes[i] == 0x0D { bytes[i] = 0x20 }
    return trim(String(decoding: bytes, as: UTF8.self))
}

/// The decimal number that `bytes` spell (at most 19 digits), or nil.
func parseUInt(_ bytes: UnsafeRawBufferPointer) -> UInt64? {
    guard !bytes.isEmpty, bytes.count <= 19 else { return nil }
    var n: UInt64 = 0
    for b in bytes {
        guard b >= 0x30 && b <= 0x39 else { return nil }
        n = n * 10 + UInt64(b - 0x30)
    }
    return n
}
