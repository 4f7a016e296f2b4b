import CLibUV
import TunnelCore
import TunnelIO
import TunnelTLS

/// Process exit codes (documented in the README).
public enum ExitCode {
    /// Stopped by a signal, or the service closed the tunnel.
    public static let normal: Int32 = 0
    /// Bad command line or configuration, or a configuration that cannot serve this tunnel.
    public static let configuration: Int32 = 1
    /// The service refused the access token (4xx): a new token is needed.
    public static let rejected: Int32 = 2
    /// The service's TLS certificate did not verify.
    public static let certificate: Int32 = 3
}

/// The device side: keeps one tunnel connection up (reconnecting with backoff), runs a
/// `DestinationSession` on it, and carries out its actions on local connections.
public final class DestinationRuntime: TunnelConnectionDelegate, LocalLinkOwner {
    let configuration: Configuration
    let logger: Logger
    let loop: EventLoop
    let random: SecureRandom
    let tlsConfiguration: TLSConfiguration
    let clientToken: String

    public private(set) var tunnel: TunnelConnection? = nil
    private var session: DestinationSession? = nil
    private var links: [LocalConnectionID: LocalLink] = [:]
    private var waitingForTunnel: [LocalLink] = []
    private var congestedLinks = 0
    private var nextLocalId: UInt32 = 1
    private var reconnectAttempt = 0
    private var sawServiceIds = false
    private var stopping = false
    private var exitCode: Int32? = nil
    private let reconnectTimer: Timer
    private var signalWatchers: [SignalWatcher] = []
    private var actionBuffer: [DestinationAction] = []
    private var actionDepth = 0

    public init(configuration: Configuration, logger: Logger, loop: EventLoop, random: SecureRandom, tls: TLSConfiguration) {
        self.configuration = configuration
        self.logger = logger
        self.loop = loop
        self.random = random
        self.tlsConfiguration = tls
        clientToken = configuration.clientToken ?? random.uuid()
        reconnectTimer = Timer(loop: loop)
    }

    /// Runs until the tunnel ends or a signal stops it; returns the process exit code.
    public func run() -> Int32 {
        for number in [SIGINT, SIGTERM] {
            do {
                signalWatchers.append(try SignalWatcher(loop: loop, signal: number) { [self] n in stop(signal: n) })
            } catch {
                logger.warning("cannot watch signal \(number): \(error)")
            }
        }
        logger.info("access token from \(configuration.accessTokenSource) (fingerprint \(fingerprint(configuration.accessToken))); client token \(configuration.clientToken == nil ? "generated" : "given"): \(fingerprint(clientToken))")
        connect()
        loop.run()
        return exitCode ?? ExitCode.normal
    }

    // MARK: Tunnel lifecycle

    private func connect() {
        guard !stopping else { return }
        let endpoint = TunnelEndpoint(host: configuration.endpointHost, port: configuration.endpointPort, mode: .destination,
                                      accessToken: configuration.accessToken, clientToken: clientToken)
        do {
            let connection = try TunnelConnection(loop: loop, endpoint: endpoint, tls: tlsConfiguration, random: random,
                                                  logger: logger, pingIntervalMilliseconds: configuration.pingIntervalMilliseconds)
            connection.delegate = self
            tunnel = connection
            logger.info("connecting to \(configuration.endpointHost):\(configuration.endpointPort)")
            connection.start()
        } catch {
            logger.error("\(error)")
            scheduleReconnect()
        }
    }

    public func tunnelOpened(subprotocol: String, channelId: String?) {
        logger.info("connected to wss://\(configuration.endpointHost):\(configuration.endpointPort) (subprotocol \(subprotocol), channel-id \(channelId ?? "none"))")
        var settings = DestinationSessionSettings()
        settings.connectRetries = configuration.connectRetries
        settings.connectRetryDelayMilliseconds = configuration.connectRetryDelayMilliseconds
        session = DestinationSession(mappings: configuration.destinationMappings, settings: settings, firstLocalId: nextLocalId)
        sawServiceIds = false
    }

    public func tunnelMessage(_ message: TunnelMessage) {
        guard let session else { return }
        if message.type == .serviceIds && !sawServiceIds {
            sawServiceIds = true
            // A session that got this far worked: the next failure starts the backoff afresh.
            reconnectAttempt = 0
        }
        if logger.enabled(.trace) {
            logger.trace("tunnel message \(message.type) stream \(message.streamId) connection \(message.connectionId) payload \(message.payload.count) bytes")
        }
        perform { session.handle(message, into: &$0) }
    }

    public var tunnelReadingPaused: Bool { congestedLinks > 0 }

    public func tunnelWritable() {
        // Frames waiting for room go in arrival order; stop at the first that does not fit.
        while let link = waitingForTunnel.first {
            waitingForTunnel.removeFirst()
            link.sendPendingFrame()
            if link.hasPendingFrame { return }
        }
    }

    public func tunnelClosed(_ reason: TunnelCloseReason) {
        tunnel = nil
        waitingForTunnel.removeAll()
        if let s = session {
            session = nil
            nextLocalId = s.nextLocalConnectionId
            perform { s.closeAll(into: &$0) }
        }
        if stopping {
            finish(ExitCode.normal)
            return
        }
        switch reason {
        case .closedByService(let code, let text):
            logger.info("tunnel closed by the service (code \(code.map { String($0) } ?? "none")\(text.isEmpty ? "" : ", \(text)")): exiting")
            finish(ExitCode.normal)
        case .rejected(let status, let phrase, let body) where status >= 400 && status < 500:
            logger.error("the service rejected the connection: \(status) \(phrase)\(body.isEmpty ? "" : ": \(body)"). The access token cannot be used again: open a new tunnel or rotate the token (aws iotsecuretunneling rotate-tunnel-access-token)")
            finish(ExitCode.rejected)
        case .rejected(let status, let phrase, let body):
            logger.warning("the service rejected the connection: \(status) \(phrase)\(body.isEmpty ? "" : ": \(body)")")
            scheduleReconnect()
        case .certificate(let error):
            logger.error("the service's TLS certificate was not accepted: \(error). Check -c/--capath and the endpoint name, or the system clock")
            finish(ExitCode.certificate)
        case .failed(let why):
            logger.warning("tunnel connection ended: \(why)")
            scheduleReconnect()
        case .stopped:
            finish(ExitCode.normal)
        }
    }

    /// Full-jitter exponential backoff: a random delay up to 1 s, 2 s, 4 s … capped.
    private func scheduleReconnect() {
        guard !stopping, exitCode == nil else { return }
        let exponent = min(reconnectAttempt, 20)
        let ceiling = min(configuration.reconnectDelayMaximumMilliseconds, 1000 << exponent)
        let delay = Int(random.uint32() % UInt32(ceiling + 1))
        reconnectAttempt += 1
        logger.warning("reconnecting in \(delay) ms (attempt \(reconnectAttempt), same access token and client token)")
        reconnectTimer.start(after: UInt64(delay)) { [self] in connect() }
    }

    private func stop(signal number: Int32) {
        guard !stopping else { return }
        stopping = true
        logger.info("stopping on signal \(number): closing local connections and the tunnel")
        if let s = session {
            perform { s.closeAll(into: &$0) }
        }
        if let t = tunnel {
            t.stop()
        } else {
            finish(ExitCode.normal)
        }
    }

    /// Records the exit code and closes every handle so that the loop ends.
    private func finish(_ code: Int32) {
        if exitCode == nil { exitCode = code }
        stopping = true
        reconnectTimer.close()
        for w in signalWatchers { w.close() }
        signalWatchers.removeAll()
        tunnel?.abort("stopping")
        for (_, link) in links { link.closeAfterFlush() }
    }

    // MARK: Session actions

    /// Runs `body` to collect actions, then carries them out. Re-entrant: an action may cause
    /// events that produce more actions.
    private func perform(_ body: (inout [DestinationAction]) -> Void) {
        var actions: [DestinationAction]
        if actionDepth == 0 {
            actions = actionBuffer
            actions.removeAll(keepingCapacity: true)
            actionBuffer = []
        } else {
            actions = []
        }
        actionDepth += 1
        body(&actions)
        for action in actions { execute(action) }
        actionDepth -= 1
        if actionDepth == 0 {
            actions.removeAll(keepingCapacity: true)
            actionBuffer = actions
        }
    }

    private func execute(_ action: DestinationAction) {
        switch action {
        case .connect(let id, let endpoint):
            if let link = links[id] {
                link.connect(endpoint)
                return
            }
            do {
                let link = try LocalLink(id: id, owner: self, loop: loop, logger: logger, maximumPayload: configuration.maximumPayload)
                links[id] = link
                link.connect(endpoint)
            } catch {
                logger.error("cannot allocate buffers for a local connection: \(error)")
                if let s = session { perform { s.connectFailed(id, reason: "out of memory", into: &$0) } }
            }
        case .scheduleRetry(let id, let delay):
            links[id]?.scheduleRetry(after: delay)
        case .deliver(let id, let payload):
            links[id]?.enqueue(payload)
        case .closeLocal(let id):
            links[id]?.closeAfterFlush()
        case .send(let message):
            tunnel?.send(message)
        case .log(let level, let text):
            logger.log(level, text)
        case .reconnect(let reason):
            tunnel?.abort("\(reason)")
        case .fatal(let reason):
            logger.fatal("\(reason)")
            finish(ExitCode.configuration)
        }
    }

    // MARK: Local link events

    func linkConnected(_ link: LocalLink) {
        guard let s = session else { return }
        perform { s.connected(link.id, into: &$0) }
    }

    func linkConnectFailed(_ link: LocalLink, reason: String) {
        guard let s = session else {
            link.closeAfterFlush()
            return
        }
        perform { s.connectFailed(link.id, reason: reason, into: &$0) }
    }

    func linkRetryDue(_ link: LocalLink) {
        guard let s = session else { return }
        perform { s.retryTimerFired(link.id, into: &$0) }
    }

    func linkEnded(_ link: LocalLink) {
        guard let s = session else {
            link.closeAfterFlush()
            return
        }
        perform { s.localClosed(link.id, into: &$0) }
    }

    func linkClosed(_ link: LocalLink) {
        links[link.id] = nil
        waitingForTunnel.removeAll { $0 === link }
    }

    func linkCongestion(_ link: LocalLink, congested: Bool) {
        congestedLinks += congested ? 1 : -1
        if congestedLinks == 0 { tunnel?.resumeReading() }
    }

    func linkWaitsForTunnel(_ link: LocalLink) {
        if !waitingForTunnel.contains(where: { $0 === link }) { waitingForTunnel.append(link) }
    }

    func dataHeader(for link: LocalLink) -> TunnelMessage? {
        session?.dataHeader(for: link.id)
    }
}

/// A short, non-reversible tag of a secret for logs: the first 8 hex digits of its SHA-1.
public func fingerprint(_ secret: String) -> String {
    let digest = HandshakeCrypto.sha1(Array(secret.utf8))
    let digits: [UInt8] = Array("0123456789abcdef".utf8)
    var out: [UInt8] = []
    for b in digest.prefix(4) {
        out.append(digits[Int(b >> 4)])
        out.append(digits[Int(b & 0xF)])
    }
    return "sha1:" + String(decoding: out, as: UTF8.self)
}
