import TunnelCore
import TunnelIO
import TunnelTLS

/// The device side: runs a `DestinationSession` on each tunnel connection and carries out its
/// actions on local connections.
public final class DestinationRuntime: TunnelRuntime {
    private var session: DestinationSession? = nil
    private var nextLocalId: UInt32 = 1
    private let runner = ActionRunner<DestinationAction>()

    public init(configuration: Configuration, logger: Logger, loop: EventLoop, resolver: Resolver, random: SecureRandom, tls: TLSConfiguration) {
        super.init(configuration: configuration, logger: logger, loop: loop, resolver: resolver, random: random, tls: tls)
    }

    /// One tunnel of the MQTT agent: no systemd notifications of its own.
    init(agentSession configuration: Configuration, logger: Logger, loop: EventLoop, resolver: Resolver, random: SecureRandom, tls: TLSConfiguration) {
        super.init(configuration: configuration, logger: logger, loop: loop, resolver: resolver, random: random, tls: tls, serviceManager: false)
    }

    override func sessionOpened() {
        var settings = DestinationSessionSettings()
        settings.connectRetries = configuration.connectRetries
        settings.connectRetryDelayMilliseconds = configuration.connectRetryDelayMilliseconds
        session = DestinationSession(mappings: configuration.destinationMappings, settings: settings, firstLocalId: nextLocalId)
    }

    override func sessionMessage(_ message: TunnelMessage) {
        guard let session else { return }
        perform { session.handle(message, into: &$0) }
    }

    override func sessionEnded() {
        guard let s = session else { return }
        session = nil
        nextLocalId = s.nextLocalConnectionId
        perform { s.closeAll(into: &$0) }
    }

    private func perform(_ body: (inout [DestinationAction]) -> Void) {
        runner.perform(body, execute)
    }

    private func execute(_ action: DestinationAction) {
        switch action {
        case .connect(let id, let endpoint):
            if let link = links[id] {
                link.connect(endpoint)
            } else if let link = makeLink(id) {
                link.connect(endpoint)
            } else if let s = session {
                perform { s.connectFailed(id, reason: "no room for another local connection", into: &$0) }
            }
        case .scheduleRetry(let id, let delay):
            links[id]?.scheduleRetry(after: delay)
        case .deliver(let id, let payload):
            links[id]?.enqueue(payload)
        case .closeLocal(let id):
            links[id]?.closeAfterFlush()
        case .resetLocal(let id):
            links[id]?.reset()
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

    override func linkConnected(_ link: LocalLink) {
        guard let s = session else { return }
        perform { s.connected(link.id, into: &$0) }
    }

    override func linkConnectFailed(_ link: LocalLink, reason: String) {
        guard let s = session else {
            link.closeAfterFlush()
            return
        }
        perform { s.connectFailed(link.id, reason: reason, into: &$0) }
    }

    override func linkRetryDue(_ link: LocalLink) {
        guard let s = session else { return }
        perform { s.retryTimerFired(link.id, into: &$0) }
    }

    override func linkEnded(_ link: LocalLink) {
        guard let s = session else {
            link.closeAfterFlush()
            return
        }
        perform { s.localClosed(link.id, into: &$0) }
    }

    override func linkStalled(_ link: LocalLink, milliseconds: Int) {
        guard let s = session else { return super.linkStalled(link, milliseconds: milliseconds) }
        perform { s.localStalled(link.id, milliseconds: milliseconds, into: &$0) }
    }

    override func dataHeader(for link: LocalLink) -> TunnelMessage? {
        session?.dataHeader(for: link.id)
    }
}
