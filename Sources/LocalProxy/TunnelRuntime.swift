import CLibC
import TunnelCore
import TunnelIO
import TunnelTLS

/// Process exit codes (documented in the README).
public enum ExitCode {
    /// Stopped by a signal, or the service closed the tunnel.
    public static let normal: Int32 = 0
    /// Bad command line or configuration, a configuration that cannot serve this tunnel, or
    /// credentials the web proxy refused (407).
    public static let configuration: Int32 = 1
    /// The service refused the access token (4xx): a new token is needed.
    public static let rejected: Int32 = 2
    /// The service's TLS certificate did not verify.
    public static let certificate: Int32 = 3
}

/// What both modes share: one tunnel connection kept up (reconnecting with backoff and the same
/// tokens), local links with their flow control, signals and the exit code. Subclasses add the
/// session: `DestinationRuntime` and `SourceRuntime`.
public class TunnelRuntime: TunnelConnectionDelegate, LocalLinkOwner {
    let configuration: Configuration
    let logger: Logger
    let loop: EventLoop
    /// This runtime's own: the service's name and local destinations are resolved here, and
    /// `finish` ends the lookups still in flight.
    let resolver: Resolver
    let random: SecureRandom
    let tlsConfiguration: TLSConfiguration
    private(set) var accessToken: String
    private(set) var clientToken: String

    public private(set) var tunnel: TunnelConnection? = nil
    var links: [LocalConnectionID: LocalLink] = [:]
    private var waitingForTunnel: [LocalLink] = []
    private var congestedLinks = 0
    private var reconnectAttempt = 0
    private var sawServiceIds = false
    private(set) var stopping = false
    private var exitCode: Int32? = nil
    private let reconnectTimer: Timer
    /// Checks links against `--stall-timeout-ms` while there are any.
    private let stallTimer: Timer
    private var stallTimerRunning = false
    /// After the tunnel is gone at exit: links still writing after the grace period are reset.
    private let shutdownTimer: Timer
    private var tokenWait: Timer? = nil
    private var lastTokenFileProblem: String? = nil
    private var signalWatchers: [SignalWatcher] = []
    let serviceManager: ServiceManager
    /// A reload (SIGHUP) brought a new token: the next connect comes at once, not after backoff.
    private var reconnectAtOnce = false
    // For the SIGUSR1 statistics line.
    private let startedAt: UInt64
    private var connectedAt: UInt64? = nil
    private var sessionsOpened = 0
    private var linksMade = 0
    private var closedBytesToLocal: UInt64 = 0
    private var closedBytesFromLocal: UInt64 = 0
    /// Set when this runtime is one session of the MQTT agent (`AgentRuntime`) rather than the
    /// whole process: the agent owns the signals, the service manager and the loop, and hears
    /// here, once, how the session ended (with the exit code a process would have returned).
    var onFinished: ((Int32) -> Void)? = nil
    /// Where the access token came from, for the log.
    private let tokenSource: String

    /// `serviceManager` false: this runtime does not talk to systemd (the agent does).
    init(configuration: Configuration, logger: Logger, loop: EventLoop, resolver: Resolver, random: SecureRandom, tls: TLSConfiguration,
         serviceManager notifies: Bool = true) {
        self.configuration = configuration
        self.logger = logger
        self.loop = loop
        self.resolver = resolver
        self.random = random
        self.tlsConfiguration = tls
        accessToken = configuration.accessToken
        clientToken = configuration.clientToken ?? random.uuid()
        reconnectTimer = Timer(loop: loop)
        stallTimer = Timer(loop: loop)
        shutdownTimer = Timer(loop: loop)
        serviceManager = ServiceManager(environment: notifies ? SystemAccess.environment : { _ in nil }, logger: logger)
        startedAt = loop.now
        tokenSource = configuration.accessTokenSource
    }

    /// Local connections alive at once, counting those still closing (each holds about 192 KiB
    /// of buffers): beyond it new ones are refused with a reset.
    static let maximumLinks = 512
    /// How long local connections may go on writing what they hold once the proxy stops.
    static let shutdownGraceMilliseconds: UInt64 = 2000

    /// Runs until the tunnel ends or a signal stops it; returns the process exit code.
    public func run() -> Int32 {
        signalWatchers = watchProcessSignals(loop: loop, logger: logger) { [self] n in
            switch n {
            case SIGHUP: reload()
            case SIGUSR1: logger.report(statistics())
            default: stop("on signal \(n)")
            }
        }
        start()
        loop.run()
        return exitCode ?? ExitCode.normal
    }

    /// Connects; the owner runs the loop (`run()` for a whole process, the agent otherwise).
    func start() {
        logger.info("access token from \(tokenSource) (fingerprint \(fingerprint(accessToken))); client token \(configuration.clientToken == nil ? "generated" : "given") (fingerprint \(fingerprint(clientToken)))")
        connect()
    }

    /// The agent stops this session (a new token replaced it, or the process stops): the same
    /// polite close as on SIGTERM, ending in `onFinished` with code 0.
    func stopSession(_ why: String) {
        stop(why)
    }

    /// No tunnel and no local connection left: every handle of this runtime is closed or closing.
    var isIdle: Bool { tunnel == nil && links.isEmpty && exitCode != nil }

    // MARK: Hooks for the modes

    /// A WebSocket session began: create the session state.
    func sessionOpened() {}
    /// A tunnel message arrived for the session.
    func sessionMessage(_ message: TunnelMessage) {}
    /// The WebSocket session ended (or the process stops): close local connections.
    func sessionEnded() {}
    /// The process stops: release mode-specific handles (listeners).
    func releaseHandles() {}

    // MARK: Tunnel lifecycle

    private func connect() {
        guard !stopping else { return }
        let endpoint = TunnelEndpoint(host: configuration.endpointHost, port: configuration.endpointPort, mode: configuration.mode,
                                      accessToken: accessToken, clientToken: clientToken, webProxy: configuration.webProxy)
        let connection = TunnelConnection(loop: loop, resolver: resolver, endpoint: endpoint, tls: tlsConfiguration, random: random,
                                          logger: logger, pingIntervalMilliseconds: configuration.pingIntervalMilliseconds,
                                          pongTimeoutMilliseconds: configuration.effectivePongTimeoutMilliseconds)
        connection.delegate = self
        tunnel = connection
        logger.info("connecting to \(configuration.endpointHost):\(configuration.endpointPort)")
        connection.start()
    }

    public func tunnelOpened(subprotocol: String, channelId: String?) {
        logger.info("connected to wss://\(configuration.endpointHost):\(configuration.endpointPort) (subprotocol \(subprotocol), channel-id \(channelId ?? "none"))")
        sawServiceIds = false
        sessionsOpened += 1
        connectedAt = loop.now
        serviceManager.ready(status: "connected to \(configuration.endpointHost):\(configuration.endpointPort)")
        sessionOpened()
    }

    public func tunnelMessage(_ message: TunnelMessage) {
        if message.type == .serviceIds && !sawServiceIds {
            sawServiceIds = true
            // A session that got this far worked: the next failure starts the backoff afresh.
            reconnectAttempt = 0
        }
        if logger.enabled(.trace) {
            logger.trace("tunnel message \(message.type) stream \(message.streamId) connection \(message.connectionId) payload \(message.payload.count) bytes")
        }
        sessionMessage(message)
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
        connectedAt = nil
        waitingForTunnel.removeAll()
        sessionEnded()
        if stopping {
            finish(ExitCode.normal)
            return
        }
        switch reason {
        case .closedByService(let code, let text):
            // A normal close (1000, or no code) is the tunnel's end: CloseTunnel or expiry. Any
            // other code (the emulator uses 1008 for a rotated token) may be followed by a new
            // token, so with a token file it is worth waiting for one.
            let what = "the service closed the tunnel connection (code \(code.map { String($0) } ?? "none")\(text.isEmpty ? "" : ", \(text)"))"
            let normal = code == nil || code == WebSocketCloseCode.normal
            if !normal && waitForNewToken(what, rejected: false) { return }
            logger.info("tunnel closed by the service (code \(code.map { String($0) } ?? "none")\(text.isEmpty ? "" : ", \(text)")): \(onFinished == nil ? "exiting" : "ending this session")")
            finish(ExitCode.normal)
        case .rejected(let status, let phrase, let body) where status >= 400 && status < 500:
            let what = "the service rejected the connection: \(status) \(phrase)\(body.isEmpty ? "" : ": \(body)")"
            if waitForNewToken(what, rejected: true) { return }
            logger.error("\(what). The access token cannot be used again: open a new tunnel or rotate the token (aws iotsecuretunneling rotate-tunnel-access-token)")
            finish(ExitCode.rejected)
        case .rejected(let status, let phrase, let body):
            logger.warning("the service rejected the connection: \(status) \(phrase)\(body.isEmpty ? "" : ": \(body)")")
            scheduleReconnect()
        case .certificate(let error) where error.isOnlyNotYetValid:
            // Gateways without a real-time clock boot in the past until NTP sets the time.
            logger.warning("the service's certificate is not valid yet by this system's clock (\(error)): the clock is probably behind (no real-time clock, NTP not synchronised yet); retrying")
            scheduleReconnect()
        case .certificate(let error):
            logger.error("the service's TLS certificate was not accepted: \(error). Check -c/--capath and the endpoint name, or the system clock")
            finish(ExitCode.certificate)
        case .proxyAuthentication(let why):
            // The credentials come from the environment, which this process cannot see change:
            // retrying could only repeat the refusal. Exit so that whoever fixes them (and a
            // service manager restarting us) starts a process with the new ones.
            logger.error("\(why); exiting with code \(ExitCode.configuration)")
            finish(ExitCode.configuration)
        case .failed(let why):
            logger.warning("tunnel connection ended: \(why)")
            scheduleReconnect()
        case .stopped:
            finish(ExitCode.normal)
        }
    }

    /// With `--access-token-file`, a session the service ended (token rotated, or refused) is
    /// not the end: a token agent may write a new token to the file. Waits up to
    /// `--token-wait-ms` for a different token, then reconnects with it and a new client token.
    /// Returns false when there is nothing to wait for.
    private func waitForNewToken(_ what: String, rejected: Bool) -> Bool {
        guard let file = configuration.accessTokenFile, configuration.tokenWaitMilliseconds > 0 else { return false }
        logger.warning("\(what); waiting up to \(configuration.tokenWaitMilliseconds / 1000) s for a new token in \(file)")
        serviceManager.ready(status: "waiting for a new access token in \(file)")
        let deadline = loop.now + UInt64(configuration.tokenWaitMilliseconds)
        let timer = Timer(loop: loop)
        tokenWait = timer
        timer.start(after: 200, repeat: 500) { [self] in
            if let token = readTokenFile(file), !token.bytesEqual(accessToken) {
                timer.close()
                tokenWait = nil
                accessToken = token
                clientToken = configuration.clientToken ?? random.uuid()
                reconnectAttempt = 0
                logger.info("new access token in \(file) (fingerprint \(fingerprint(token))): reconnecting")
                connect()
            } else if loop.now >= deadline {
                timer.close()
                tokenWait = nil
                logger.info("no new access token in \(file): exiting")
                finish(rejected ? ExitCode.rejected : ExitCode.normal)
            }
        }
        return true
    }

    /// The token in the file, if the file is private and the token usable. A missing or empty
    /// file is normal while an agent rewrites it; anything else is logged (once per problem) and
    /// the file is read again on the next tick, so a bad write never causes a reconnect with a
    /// token the service cannot accept.
    private func readTokenFile(_ file: String) -> String? {
        var problem: String? = nil
        var token: String? = nil
        if let status = SystemAccess.status(file) {
            if let p = status.problem(path: file, holding: "the access token", user: SystemAccess.userId) {
                problem = p
            } else if let data = try? SystemAccess.readFile(file, limit: 8192) {
                let text = trim(String(decoding: data, as: UTF8.self))
                if let p = accessTokenProblem(text) {
                    problem = "\(file): \(p)"
                } else if !text.isEmpty {
                    token = text
                }
            } else {
                problem = "cannot read \(file) (larger than 8192 bytes, or no permission)"
            }
        }
        if let problem, !(lastTokenFileProblem?.bytesEqual(problem) ?? false) {
            logger.error("\(problem); waiting for a usable token in the file")
        }
        lastTokenFileProblem = problem
        return token
    }

    /// Full-jitter exponential backoff: a random delay up to 1 s, 2 s, 4 s … capped.
    private func scheduleReconnect() {
        guard !stopping, exitCode == nil else { return }
        if reconnectAtOnce {
            reconnectAtOnce = false
            reconnectTimer.start(after: 0) { [self] in connect() }
            return
        }
        let delay = backoffDelay(attempt: reconnectAttempt, maximum: configuration.reconnectDelayMaximumMilliseconds, random: random)
        reconnectAttempt += 1
        logger.warning("reconnecting in \(delay) ms (attempt \(reconnectAttempt), same access token and client token)")
        // systemctl start returns once the first attempt is over, connected or not.
        serviceManager.ready(status: "not connected; reconnecting (attempt \(reconnectAttempt))")
        reconnectTimer.start(after: UInt64(delay)) { [self] in connect() }
    }

    private func stop(_ why: String) {
        guard !stopping else { return }
        stopping = true
        serviceManager.stopping()
        logger.info("stopping \(why): closing local connections and the tunnel")
        sessionEnded()
        if let t = tunnel {
            t.stop()
        } else {
            finish(ExitCode.normal)
        }
    }

    /// Records the exit code and closes every handle so that the loop ends. Local connections
    /// still writing what the tunnel delivered get `shutdownGraceMilliseconds` to finish, then
    /// are reset: a local application that does not read cannot hold the exit back.
    func finish(_ code: Int32) {
        let first = exitCode == nil
        if first { exitCode = code }
        if !stopping { serviceManager.stopping() }
        stopping = true
        reconnectTimer.close()
        stallTimer.close()
        tokenWait?.close()
        tokenWait = nil
        for w in signalWatchers { w.close() }
        signalWatchers.removeAll()
        tunnel?.abort("stopping")
        // Only this runtime's lookups: an agent's session has a resolver of its own, so the
        // agent's (the MQTT broker's name) go on.
        resolver.cancelAll()
        releaseHandles()
        for (_, link) in links { link.closeAfterFlush() }
        if links.isEmpty {
            shutdownTimer.close()
        } else {
            shutdownTimer.start(after: TunnelRuntime.shutdownGraceMilliseconds) { [self] in
                logger.warning("\(links.count) local connection(s) still writing \(TunnelRuntime.shutdownGraceMilliseconds) ms after the tunnel ended: resetting them")
                for (_, link) in links { link.reset() }
            }
        }
        if first, let done = onFinished {
            onFinished = nil
            done(exitCode ?? code)
        }
    }

    // MARK: Operations

    /// SIGHUP (`systemctl reload`): reads `--access-token-file` again. A different, usable token
    /// replaces the current one at once: a connected tunnel is replaced, a wait for a token or
    /// a backoff ends, and the new session starts with a new client token (as after a rotation).
    /// The same token, or one that cannot be used, changes nothing.
    private func reload() {
        guard !stopping else { return }
        serviceManager.reloading()
        defer { serviceManager.ready(status: tunnel != nil && connectedAt != nil ? "connected to \(configuration.endpointHost):\(configuration.endpointPort)" : "reloaded; connecting") }
        guard let file = configuration.accessTokenFile else {
            logger.warning("SIGHUP: nothing to reload: the access token was not read from a file (use --access-token-file)")
            return
        }
        lastTokenFileProblem = nil
        guard let token = readTokenFile(file) else {
            logger.error("SIGHUP: \(lastTokenFileProblem == nil ? "\(file) is missing or empty" : "the token in \(file) cannot be used"): keeping the current access token")
            return
        }
        guard !token.bytesEqual(accessToken) else {
            logger.info("SIGHUP: the access token in \(file) is unchanged")
            return
        }
        accessToken = token
        clientToken = configuration.clientToken ?? random.uuid()
        reconnectAttempt = 0
        logger.info("SIGHUP: new access token in \(file) (fingerprint \(fingerprint(token))): connecting with it")
        if let timer = tokenWait {
            timer.close()
            tokenWait = nil
            connect()
        } else if let tunnel {
            reconnectAtOnce = true
            tunnel.abort("the access token was reloaded")
        } else {
            reconnectTimer.stop()
            connect()
        }
    }

    /// One line for SIGUSR1: uptime, the tunnel, totals and each local connection (32 of them
    /// at most, in no particular order; the count says how many more).
    func statistics() -> String { "statistics: " + statisticsBody() }

    func statisticsBody() -> String {
        let now = loop.now
        var toLocal = closedBytesToLocal
        var fromLocal = closedBytesFromLocal
        var each: [String] = []
        for (_, link) in links {
            toLocal &+= link.bytesToLocal
            fromLocal &+= link.bytesFromLocal
            if each.count < 32 {
                each.append("#\(link.id.rawValue) \((now &- link.createdAt) / 1000) s, \(link.bytesToLocal) to local, \(link.bytesFromLocal) from local")
            }
        }
        let tunnelText = connectedAt.map { "connected for \((now &- $0) / 1000) s" } ?? "not connected"
        var line = "up \((now &- startedAt) / 1000) s; tunnel \(tunnelText); \(sessionsOpened) session(s), \(max(0, sessionsOpened - 1)) reconnect(s); local connections: \(links.count) open, \(linksMade) in all; bytes \(toLocal) to local, \(fromLocal) from local"
        if !each.isEmpty {
            line += "; open: " + each.joined(separator: "; ")
            if links.count > each.count { line += "; and \(links.count - each.count) more" }
        }
        return line
    }

    // MARK: Session outcomes shared by both modes

    /// The session found the peer's stream untrustworthy: start a new WebSocket session.
    func sessionNeedsReconnect(_ reason: SessionEndReason) {
        tunnel?.abort("\(reason)")
    }

    /// The configuration cannot serve this tunnel: stop with exit code 1.
    func sessionCannotContinue(_ reason: SessionEndReason) {
        logger.fatal("\(reason)")
        finish(ExitCode.configuration)
    }

    // MARK: Local links

    func linkConnected(_ link: LocalLink) {}
    func linkConnectFailed(_ link: LocalLink, reason: String) { link.closeAfterFlush() }
    func linkRetryDue(_ link: LocalLink) {}
    func linkEnded(_ link: LocalLink) { link.closeAfterFlush() }
    /// Writing to the local side failed: the local peer is gone in both directions.
    func linkBroken(_ link: LocalLink) { linkEnded(link) }
    func dataHeader(for link: LocalLink) -> TunnelMessage? { nil }

    func linkClosed(_ link: LocalLink) {
        links[link.id] = nil
        closedBytesToLocal &+= link.bytesToLocal
        closedBytesFromLocal &+= link.bytesFromLocal
        waitingForTunnel.removeAll { $0 === link }
        if stopping && links.isEmpty { shutdownTimer.close() }
        watchStalls()
    }

    func linkCongestion(_ link: LocalLink, congested: Bool) {
        congestedLinks += congested ? 1 : -1
        if congestedLinks == 0 { tunnel?.resumeReading() }
    }

    /// Runs the stall checks while there are links: a few times per deadline, so a stall is
    /// acted on within a quarter of it.
    private func watchStalls() {
        if links.isEmpty || stopping || configuration.stallTimeoutMilliseconds == 0 {
            if stallTimerRunning {
                stallTimerRunning = false
                stallTimer.stop()
            }
        } else if !stallTimerRunning {
            let period = UInt64(max(50, configuration.stallTimeoutMilliseconds / 4))
            stallTimerRunning = true
            stallTimer.start(after: period, repeat: period) { [self] in checkStalls() }
        }
    }

    /// Resets every link that has held the tunnel back for the stall deadline without taking a
    /// byte: the protocol has no per-connection flow control, so one local application that
    /// stops reading would otherwise stop every connection of the tunnel (docs/RELIABILITY.md).
    /// A closing link that cannot write what it holds is reset too, so that it does not keep its
    /// buffers and socket forever.
    private func checkStalls() {
        let limit = UInt64(configuration.stallTimeoutMilliseconds)
        let now = loop.now
        var stalled: [LocalLink] = []
        for (_, link) in links where link.stalledMilliseconds(now: now) >= limit { stalled.append(link) }
        for link in stalled { linkStalled(link, milliseconds: Int(link.stalledMilliseconds(now: now))) }
    }

    /// A link is past the stall deadline: the modes tell the session (which resets it on both
    /// sides); without a session it is only reset locally.
    func linkStalled(_ link: LocalLink, milliseconds: Int) {
        logger.warning("local connection \(link.id) took no data for \(milliseconds) ms: resetting it")
        link.reset()
    }

    func linkWaitsForTunnel(_ link: LocalLink) {
        if !waitingForTunnel.contains(where: { $0 === link }) { waitingForTunnel.append(link) }
    }

    /// A new link for `id`, registered; nil (logged) if there are already `maximumLinks` or its
    /// buffers cannot be allocated.
    func makeLink(_ id: LocalConnectionID) -> LocalLink? {
        guard links.count < TunnelRuntime.maximumLinks else {
            logger.warning("refusing local connection \(id): \(links.count) local connections are open or still closing (at most \(TunnelRuntime.maximumLinks))")
            return nil
        }
        do {
            let link = try LocalLink(id: id, owner: self, loop: loop, resolver: resolver, logger: logger, maximumPayload: configuration.maximumPayload)
            links[id] = link
            linksMade += 1
            watchStalls()
            return link
        } catch {
            logger.error("cannot allocate buffers for a local connection: \(error)")
            return nil
        }
    }
}

/// Carries out the actions a session produced. Re-entrant: an action may cause events (a
/// connect failing at once, say) whose actions run inside the outer call; the outermost call
/// reuses one buffer so the per-message path does not allocate.
final class ActionRunner<Action> {
    private var buffer: [Action] = []
    private var depth = 0

    func perform(_ body: (inout [Action]) -> Void, _ execute: (Action) -> Void) {
        var actions: [Action] = depth == 0 ? buffer : []
        if depth == 0 { buffer = [] }
        depth += 1
        body(&actions)
        for action in actions { execute(action) }
        depth -= 1
        if depth == 0 {
            actions.removeAll(keepingCapacity: true)
            buffer = actions
        }
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
