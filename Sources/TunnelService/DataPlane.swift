import TunnelCore
import TunnelIO
import TunnelTLS

/// The two connection slots of one tunnel and what the relay remembers between connections.
final class TunnelRelay {
    let tunnelId: String
    var connections: [Side: ServiceConnection] = [:]
    /// Sides that were connected at some point: the next connection of such a side is a
    /// reconnect, which `--on-reconnect` reports to the other side.
    var hadConnection: Set<Side> = []
    var streams = ActiveStreams()

    init(tunnelId: String) { self.tunnelId = tunnelId }
}

/// An upgrade the data plane accepted, as the connection needs it to answer.
struct AcceptedUpgrade {
    var key: String
    var request: AdmissionRequest
    var admitted: TunnelRegistry.Admitted
}

/// The TLS WebSocket endpoint (docs/PROTOCOL.md §14): accepts connections, admits them against the
/// registry, pairs the source and destination of each tunnel, and relays tunnel messages
/// between them with back-pressure.
///
/// Messages a side sends while the other side is not connected are dropped after validation:
/// the service documents nothing about them, peers must not rely on them, and queueing them
/// would let a lone client grow the emulator's memory.
final class DataPlane {
    let loop: EventLoop
    let registry: TunnelRegistry
    let tlsConfiguration: TLSConfiguration
    let options: ServiceOptions
    let log: ServiceLog
    let random: SecureRandom
    let clock: () -> Double

    private var listener: Listener? = nil
    private var connections: [Int: ServiceConnection] = [:]
    private var relays: [String: TunnelRelay] = [:]
    private var nextId = 1
    private var channelIds: ChannelIdGenerator
    private var shuttingDown = false
    /// Called once every connection is gone after `shutdown()`.
    private var onIdle: (() -> Void)? = nil

    init(loop: EventLoop, registry: TunnelRegistry, tlsConfiguration: TLSConfiguration, options: ServiceOptions,
         log: ServiceLog, random: SecureRandom, processId: UInt32, clock: @escaping () -> Double) {
        self.loop = loop
        self.registry = registry
        self.tlsConfiguration = tlsConfiguration
        self.options = options
        self.log = log
        self.random = random
        self.clock = clock
        let instance = random.bytes(8).reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        channelIds = ChannelIdGenerator(instance: instance, processId: processId)
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
        // Connections past the admission limit still get their 503, but a flood beyond that is
        // cut at once: each connection holds about a megabyte of buffers.
        guard !shuttingDown, connections.count < options.maximumConnections + 64 else {
            stream.close()
            return
        }
        let id = nextId
        nextId += 1
        let random64 = random.bytes(8).reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        let channelId = channelIds.next(random: random64, epochSeconds: UInt32(truncatingIfNeeded: Int64(clock())))
        let connection: ServiceConnection
        do {
            connection = try ServiceConnection(id: id, channelId: channelId, plane: self, loop: loop, socket: stream,
                                               tlsConfiguration: tlsConfiguration, framing: options.framing)
        } catch {
            log.error("cannot set up a connection: \(error)")
            stream.close()
            return
        }
        connections[id] = connection
        log.debug("connection \(id): accepted, channel-id \(channelId)")
        connection.start()
    }

    // MARK: Admission and pairing

    func admit(_ connection: ServiceConnection, head: HTTPHead) -> Result<AcceptedUpgrade, Rejection> {
        let request: WebSocketUpgradeRequestHead
        let admission: AdmissionRequest
        switch Admission.check(head) {
        case .failure(let rejection): return .failure(rejection)
        case .success(let checked): (request, admission) = checked
        }
        let attached = relays.values.reduce(0) { $0 + $1.connections.count }
        guard attached < options.maximumConnections else { return .failure(.busy) }
        switch registry.admit(admission) {
        case .failure(let rejection):
            return .failure(rejection)
        case .success(let admitted):
            return .success(AcceptedUpgrade(key: request.key, request: admission, admitted: admitted))
        }
    }

    /// Puts an admitted connection into its tunnel's slot, replacing any current one, and sends
    /// what the service sends on connect.
    func attach(_ connection: ServiceConnection, _ upgrade: AcceptedUpgrade) {
        let tunnelId = upgrade.admitted.tunnelId
        let side = upgrade.admitted.side
        let relay = relays[tunnelId] ?? TunnelRelay(tunnelId: tunnelId)
        relays[tunnelId] = relay
        let isReconnect = relay.hadConnection.contains(side)
        if let old = relay.connections[side] {
            log.info("tunnel \(tunnelId): \(side) connection \(old.id) replaced by connection \(connection.id)")
            old.close(code: DataPlaneClose.replaced.code, reason: DataPlaneClose.replaced.reason)
        }
        relay.connections[side] = connection
        relay.hadConnection.insert(side)
        connection.attachment = Attachment(relay: relay, side: side, subprotocol: upgrade.request.subprotocol,
                                           rules: ConnectionRules(side: side, services: upgrade.admitted.services))
        registry.setConnected(tunnelId, side: side, connected: true, now: clock())
        log.info("tunnel \(tunnelId): \(side) connected (connection \(connection.id), \(upgrade.request.subprotocol), channel-id \(connection.channelId))")

        if Admission.receivesServiceIds(upgrade.request.subprotocol) {
            connection.enqueueServiceMessage(ServiceMessages.serviceIds(upgrade.admitted.services))
        }
        if isReconnect, options.onReconnect != .none {
            if let peer = relay.connections[side.other] {
                switch options.onReconnect {
                case .streamReset:
                    let resets = relay.streams.resetMessages()
                    if !resets.isEmpty { log.info("tunnel \(tunnelId): \(side) reconnected; STREAM_RESET x\(resets.count) to the \(side.other)") }
                    for reset in resets { peer.enqueueServiceMessage(reset) }
                case .sessionReset:
                    log.info("tunnel \(tunnelId): \(side) reconnected; SESSION_RESET to the \(side.other)")
                    peer.enqueueServiceMessage(ServiceMessages.sessionReset())
                case .none:
                    break
                }
            }
            relay.streams.removeAll()
        }
    }

    /// Takes a connection out of its tunnel (it is closing or gone). Safe to call repeatedly.
    func detach(_ connection: ServiceConnection) {
        guard let attachment = connection.attachment else { return }
        connection.attachment = nil
        let relay = attachment.relay
        guard relay.connections[attachment.side] === connection else { return }
        relay.connections[attachment.side] = nil
        registry.setConnected(relay.tunnelId, side: attachment.side, connected: false, now: clock())
        log.info("tunnel \(relay.tunnelId): \(attachment.side) disconnected (connection \(connection.id))")
        if let peer = relay.connections[attachment.side.other] {
            peer.peerDetached()
            // The peer may have been waiting for room here; its messages are now dropped.
            peer.drive()
        }
    }

    func removed(_ connection: ServiceConnection, why: String) {
        connections[connection.id] = nil
        log.debug("connection \(connection.id): ended (\(why))")
        if shuttingDown && connections.isEmpty {
            let done = onIdle
            onIdle = nil
            done?()
        }
    }

    // MARK: Relaying

    private func peer(of connection: ServiceConnection) -> ServiceConnection? {
        guard let attachment = connection.attachment else { return nil }
        return attachment.relay.connections[attachment.side.other]
    }

    /// Whether `sender` may parse its next message: its peer has room, or there is no peer and
    /// the message will be dropped.
    func canRelay(from sender: ServiceConnection) -> Bool {
        guard let peer = peer(of: sender), peer.state == .open else { return true }
        return peer.canAcceptMessage
    }

    func relay(from sender: ServiceConnection, message: UnsafeRawBufferPointer, summary: MessageSummary) {
        guard let attachment = sender.attachment else { return }
        attachment.relay.streams.note(summary)
        guard let peer = attachment.relay.connections[attachment.side.other], peer.state == .open else {
            log.trace("tunnel \(attachment.relay.tunnelId): \(summary.type) from the \(attachment.side) dropped: no \(attachment.side.other) connected")
            return
        }
        log.trace("tunnel \(attachment.relay.tunnelId): \(summary.type) stream \(summary.streamId) \(attachment.side) -> \(attachment.side.other) (\(message.count) bytes)")
        peer.enqueue(message: message, summary: summary)
    }

    /// Frames and sends what `sender` relayed so far.
    func flushPeer(of sender: ServiceConnection) {
        peer(of: sender)?.flush()
    }

    func messageEnded(from sender: ServiceConnection) {
        peer(of: sender)?.senderMessageEnded()
    }

    /// `receiver` sent frames and has room again: let its sender go on.
    func drained(_ receiver: ServiceConnection) {
        peer(of: receiver)?.drive()
    }

    // MARK: Control-plane effects and shutdown

    func apply(_ effects: [ServiceEffect]) {
        for effect in effects {
            switch effect {
            case .disconnect(let tunnelId, let sides, let code, let reason):
                guard let relay = relays[tunnelId] else { continue }
                for side in sides {
                    if let connection = relay.connections[side] {
                        log.info("tunnel \(tunnelId): closing the \(side) connection (\(code) \(reason))")
                        connection.close(code: code, reason: reason)
                    }
                }
            case .forget(let tunnelId):
                relays[tunnelId] = nil
            case .notifyDestination:
                // Not the data plane's business: the control server hands it to the notifier.
                continue
            }
        }
    }

    /// Stops accepting, sends every WebSocket a close frame; `done` runs when all are gone.
    func shutdown(_ done: @escaping () -> Void) {
        shuttingDown = true
        listener?.close()
        listener = nil
        onIdle = done
        for connection in Array(connections.values) {
            if connection.state == .open {
                connection.close(code: DataPlaneClose.shuttingDown.code, reason: DataPlaneClose.shuttingDown.reason)
            } else if connection.state != .closing && connection.state != .draining && connection.state != .rejecting {
                connection.abort("service shutting down")
            }
        }
        if connections.isEmpty {
            onIdle = nil
            done()
        }
    }

    /// Last resort of shutdown: drops whatever is still open.
    func abortAll() {
        for connection in Array(connections.values) { connection.abort("service shutting down") }
    }
}
