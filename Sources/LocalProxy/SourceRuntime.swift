import TunnelCore
import TunnelIO
import TunnelTLS

/// The laptop side: listens on a local port per tunnel service and turns each accepted
/// connection into a stream or connection of the tunnel, through a `SourceSession`.
///
/// Listeners are opened after the first SERVICE_IDS and kept for the life of the process, so a
/// port chosen by the system (`SVC=` without a port) stays the same across reconnects; while the
/// tunnel is down, new local connections are closed at once.
///
/// Local half-close: the protocol cannot say "no more data from this side". When a local client
/// ends its sending direction, the bytes it sent go out, then the connection stays open for the
/// destination's answer; the reset is sent when the destination resets it, or when no tunnel data
/// arrived for `--half-close-linger-ms`. Answers in flight are therefore not lost to an early reset.
/// The session decides all of this (SourceSession.swift); this runtime only runs the timers it
/// asks for (`startLinger`) and reports when one fires.
public final class SourceRuntime: TunnelRuntime {
    private var session: SourceSession? = nil
    private var nextLocalId: UInt32 = 1
    private var nextStreamId: Int32 = 1
    /// Keyed by service id, compared as bytes (`Bytewise`: a `String` key would link the
    /// Unicode tables into the device binary).
    private var listeners: [Bytewise: Listener] = [:]
    /// Service index in the current session for each listener's service id.
    private var serviceIndex: [Bytewise: Int] = [:]
    /// The half-close linger timers the session started, one per connection at most; each is
    /// dropped with its connection.
    private var lingering: [LocalConnectionID: Timer] = [:]
    private let runner = ActionRunner<SourceAction>()

    public init(configuration: Configuration, logger: Logger, loop: EventLoop, resolver: Resolver, random: SecureRandom, tls: TLSConfiguration) {
        super.init(configuration: configuration, logger: logger, loop: loop, resolver: resolver, random: random, tls: tls)
    }

    override func sessionOpened() {
        var settings = SourceSessionSettings()
        settings.destinationFormat = configuration.destinationClientType ?? .v3
        settings.halfCloseLingerMilliseconds = configuration.halfCloseLingerMilliseconds
        let mappings = configuration.sourceMappings.map { SourceSession.Mapping(serviceId: $0.serviceId, port: $0.port) }
        session = SourceSession(mappings: mappings, settings: settings, firstStreamId: nextStreamId, firstLocalId: nextLocalId)
        serviceIndex = [:]
    }

    override func sessionMessage(_ message: TunnelMessage) {
        guard let session else { return }
        perform { session.handle(message, into: &$0) }
    }

    override func sessionEnded() {
        guard let s = session else { return }
        session = nil
        nextLocalId = s.nextLocalConnectionId
        nextStreamId = s.nextStreamId
        serviceIndex = [:]
        perform { s.closeAll(into: &$0) }
    }

    override func releaseHandles() {
        for (_, l) in listeners { l.close() }
        listeners.removeAll()
        for (_, t) in lingering { t.close() }
        lingering.removeAll()
    }

    private func perform(_ body: (inout [SourceAction]) -> Void) {
        runner.perform(body, execute)
    }

    private func execute(_ action: SourceAction) {
        switch action {
        case .listen(let index, let serviceId, let port):
            serviceIndex[Bytewise(serviceId)] = index
            if listeners[Bytewise(serviceId)] == nil { listen(serviceId: serviceId, port: port) }
        case .deliver(let id, let payload):
            links[id]?.enqueue(payload)
        case .closeLocal(let id):
            stopLinger(id)
            links[id]?.closeAfterFlush()
        case .resetLocal(let id):
            stopLinger(id)
            links[id]?.reset()
        case .startLinger(let id, let milliseconds):
            startLinger(id, milliseconds)
        case .send(let message):
            tunnel?.send(message)
        case .log(let level, let text):
            logger.log(level, text)
        case .reconnect(let reason):
            sessionNeedsReconnect(reason)
        case .fatal(let reason):
            sessionCannotContinue(reason)
        }
    }

    private func listen(serviceId: String, port: UInt16) {
        let host = configuration.bindAddress ?? "127.0.0.1"
        guard let address = SocketAddress(ip: host.bytesEqual("localhost") ? "127.0.0.1" : host, port: port) else {
            logger.fatal("-b/--local-bind-address '\(host)' must be an IP address (or localhost)")
            finish(ExitCode.configuration)
            return
        }
        let listener = Listener(loop: loop)
        do {
            try listener.listen(on: address) { [self] stream in accept(stream, serviceId: serviceId) }
        } catch {
            listener.close()
            logger.fatal("cannot listen for \(serviceId.isEmpty ? "the tunnel" : serviceId) on \(address): \(error). Is another program using the port? Choose another with -s")
            finish(ExitCode.configuration)
            return
        }
        listeners[Bytewise(serviceId)] = listener
        let actual = listener.localAddress.map { "\($0)" } ?? "\(address)"
        logger.info("listening for \(serviceId.isEmpty ? "the tunnel" : "service \(serviceId)") on \(actual)")
    }

    private func accept(_ stream: SocketStream, serviceId: String) {
        guard let s = session, let index = serviceIndex[Bytewise(serviceId)], tunnel != nil else {
            logger.warning("refusing a local connection for \(serviceId.isEmpty ? "the tunnel" : serviceId) with a reset: the tunnel is not connected")
            stream.closeWithReset()
            return
        }
        var actions: [SourceAction] = []
        let accepted = s.accepted(service: index, into: &actions)
        guard let id = accepted, let link = makeLink(id) else {
            stream.closeWithReset()
            perform { $0 = actions }
            if let id = accepted { perform { s.localClosed(id, into: &$0) } }
            return
        }
        logger.debug("local connection \(id) accepted for \(serviceId.isEmpty ? "the tunnel" : serviceId)")
        // The STREAM_START/CONNECTION_START goes out before the link reads anything.
        perform { $0 = actions }
        link.adopt(stream)
    }

    /// Starts (or restarts) the linger timer of `id`; its expiry goes to the session.
    private func startLinger(_ id: LocalConnectionID, _ milliseconds: Int) {
        guard links[id] != nil else { return }
        let timer = lingering[id] ?? Timer(loop: loop)
        lingering[id] = timer
        timer.start(after: UInt64(milliseconds)) { [self] in
            stopLinger(id)
            guard let s = session else { return }
            perform { s.lingerExpired(id, into: &$0) }
        }
    }

    private func stopLinger(_ id: LocalConnectionID) {
        lingering[id]?.close()
        lingering[id] = nil
    }

    override func linkEnded(_ link: LocalLink) {
        guard let s = session else {
            link.closeAfterFlush()
            return
        }
        perform { s.localEnded(link.id, into: &$0) }
    }

    /// A half-closed client that also stopped reading: no answer can reach it, so the linger
    /// ends now.
    override func linkBroken(_ link: LocalLink) {
        stopLinger(link.id)
        guard let s = session else {
            link.closeAfterFlush()
            return
        }
        perform { s.localClosed(link.id, into: &$0) }
    }

    override func linkClosed(_ link: LocalLink) {
        stopLinger(link.id)
        super.linkClosed(link)
    }

    override func linkStalled(_ link: LocalLink, milliseconds: Int) {
        guard let s = session else { return super.linkStalled(link, milliseconds: milliseconds) }
        perform { s.localStalled(link.id, milliseconds: milliseconds, into: &$0) }
    }

    override func dataHeader(for link: LocalLink) -> TunnelMessage? {
        session?.dataHeader(for: link.id)
    }
}
