/// The source (laptop-side) half of a tunnel session, as a state machine with no I/O
/// (docs/PROTOCOL.md §9). Local clients connect to a port per service; each accepted connection
/// becomes a stream or a connection of the tunnel.
///
/// Numbering: stream ids come from a counter that the runtime carries across sessions, so they
/// never restart at 1 after a reconnect (the reference's quirk §16.11: a restarted id can match
/// stale state on the destination). In V3 the first connection of a service starts a stream
/// (STREAM_START with connection id n) and later ones join it (CONNECTION_START, n+1, n+2 …);
/// after the stream is reset the next connection starts a new stream. Toward V1/V2 destinations
/// (`-y V1|V2`) every connection is its own stream, so a new connection replaces the previous one.
///
/// Lifecycle of the session (`State`). One session lives for one WebSocket connection:
///
///     awaitingServiceIds --SERVICE_IDS matched--> serving --closeAll--> closed
///            |                                       |                    ^
///            +--mismatch (fatal), unknown message----+--> ending(reason) -+ closeAll
///               not marked ignorable (reconnect)
///
/// | state              | next                      | why                                                   |
/// |--------------------|---------------------------|-------------------------------------------------------|
/// | awaitingServiceIds | serving, ending, closed   | SERVICE_IDS matched to the `-s` ports (one `listen` each); SERVICE_IDS that `-s` cannot serve (`fatal`) or an unknown message not marked ignorable (`reconnect`); the WebSocket ended first |
/// | serving            | ending, closed            | an unknown message not marked ignorable (`reconnect`); the WebSocket ended (`closeAll`). A repeated SERVICE_IDS changes nothing |
/// | ending(reason)     | closed                    | the session asked for its end: tunnel messages are dropped and new local connections refused until the runtime ends the WebSocket and calls `closeAll` |
/// | closed             | —                         | every local connection was reset; nothing more happens |
///
/// The services and connections are tables beside the state rather than inside `serving`: they
/// are filled while serving but outlive it, because `closeAll` must still reset the connections
/// of a session that is `ending`.
///
/// Lifecycle of a local connection (`Connection.phase`):
///
///     (accepted) --> open --local EOF, its bytes sent--> halfClosed --linger expired--> (gone:
///                      |                                   |   ^      closeLocal + reset sent)
///                      |                                   +---+ DATA: delivered, linger restarted
///                      +------------------+----------------+
///                                         v
///         (gone) CONNECTION_RESET, STREAM_RESET, SESSION_RESET, replaced (V1/V2), local close,
///                stall, closeAll
///
/// | phase      | next              | why                                                        |
/// |------------|-------------------|------------------------------------------------------------|
/// | open       | halfClosed, gone  | `localEnded`: the client ended its sending direction and its bytes went out (`startLinger`); the destination reset it, its stream ended, the client is gone (`localClosed`), or it stalled |
/// | halfClosed | gone              | `lingerExpired` with no tunnel data since the last restart (`closeLocal` and the reset); DATA keeps it (`deliver`, then `startLinger` again); the other reasons of `open` |
///
/// Half-close: the protocol cannot say "no more data from this side", so a client that only ends
/// its sending direction (a FIN) cannot be told apart from one that closed. Resetting the tunnel
/// connection at once would lose the destination's answer still in flight; so the connection
/// lingers, kept open for that answer, and is reset when the destination resets it or when no
/// tunnel data arrived for `halfCloseLingerMilliseconds`. The runtime owns the timer; the session
/// decides when it starts, restarts and what its expiry means, so a stale expiry changes nothing.

public enum SourceAction {
    /// Start listening for the service (index into the mappings) on `port` (0: any free port).
    case listen(service: Int, serviceId: String, port: UInt16)
    /// Queue these bytes for the local connection. The view is valid only during the call.
    case deliver(LocalConnectionID, UnsafeRawBufferPointer)
    /// Write what is queued, then close the local connection; forget it.
    case closeLocal(LocalConnectionID)
    /// Drop what is queued and close the local connection with a TCP reset (its transfer was
    /// cut off); forget it.
    case resetLocal(LocalConnectionID)
    case send(TunnelMessage)
    case log(LogLevel, String)
    /// Start the half-close linger timer of a local connection, or restart it if it runs; when
    /// it fires, report `lingerExpired`. (Once the connection is closed or reset, its timer is
    /// the runtime's to drop: an expiry the session no longer expects is ignored.)
    case startLinger(LocalConnectionID, milliseconds: Int)
    case reconnect(SessionEndReason)
    case fatal(SessionEndReason)
}

public struct SourceSessionSettings {
    /// Message format the destination understands: V3 (default), or V1/V2 for old destinations.
    public var destinationFormat: MessageFormat = .v3
    /// Most simultaneous connections per service (the reference's limit).
    public var maximumConnectionsPerService: Int = 128
    /// How long a half-closed local connection waits for tunnel data before it is reset
    /// (`--half-close-linger-ms`).
    public var halfCloseLingerMilliseconds: Int = 10_000

    public init() {}
}

public final class SourceSession {
    /// Where the session is in its life (the table is in the file's header).
    public enum State: Equatable {
        /// No SERVICE_IDS yet: nothing is listened for, so no local connection exists.
        case awaitingServiceIds
        /// Listening for the tunnel's services; local connections come and go.
        case serving
        /// The session returned `.fatal` or `.reconnect` with this reason and waits for `closeAll`.
        case ending(SessionEndReason)
        /// `closeAll` ran.
        case closed
    }

    public struct Mapping: Equatable {
        public var serviceId: String
        public var port: UInt16
        public init(serviceId: String, port: UInt16) {
            self.serviceId = serviceId
            self.port = port
        }
    }

    private struct Service {
        var serviceId: String
        var serviceIdBytes: [UInt8]
        var port: UInt16
        var streamId: Int32? = nil
        var nextConnectionId: UInt32 = 1
        /// connection id → local id, for the current stream.
        var connections: [UInt32: LocalConnectionID] = [:]
    }

    private struct Connection {
        var service: Int
        var streamId: Int32
        var connectionId: UInt32
        var phase = Phase.open
    }

    /// A local connection's place in its lifecycle (the table in the file's header).
    private enum Phase {
        case open
        /// The client ended its sending direction; the connection waits for the destination's
        /// answer until the linger timer expires.
        case halfClosed
    }

    public let settings: SourceSessionSettings
    public private(set) var state = State.awaitingServiceIds
    private var mappings: [Mapping]
    private var services: [Service] = []
    private var connections: [LocalConnectionID: Connection] = [:]
    private var nextLocalId: UInt32
    public private(set) var nextStreamId: Int32

    public init(mappings: [Mapping], settings: SourceSessionSettings = SourceSessionSettings(),
                firstStreamId: Int32 = 1, firstLocalId: UInt32 = 1) {
        self.mappings = mappings
        self.settings = settings
        nextStreamId = max(1, firstStreamId)
        nextLocalId = firstLocalId
    }

    public var nextLocalConnectionId: UInt32 { nextLocalId }
    public var connectionCount: Int { connections.count }

    /// The service id each listening service carries (after SERVICE_IDS).
    public var listeningServices: [String] { services.map { $0.serviceId } }

    private var format: MessageFormat { settings.destinationFormat }

    // MARK: Tunnel messages

    public func handle(_ message: TunnelMessage, into actions: inout [SourceAction]) {
        switch state {
        case .awaitingServiceIds, .serving: break
        // The session already asked to end (or ended): what the peer sends now changes nothing.
        case .ending, .closed: return
        }
        switch message.type {
        case .serviceIds: handleServiceIds(message, &actions)
        case .data:
            guard let (index, connectionId) = route(message), let id = services[index].connections[connectionId] else {
                actions.append(.log(.trace, "dropping stale DATA for stream \(message.streamId)"))
                return
            }
            guard message.payload.count > 0 else { return }
            actions.append(.deliver(id, message.payload))
            // An answer to a half-closed client: it is still talking, so the linger starts over.
            if case .halfClosed? = connections[id]?.phase {
                actions.append(.startLinger(id, milliseconds: settings.halfCloseLingerMilliseconds))
            }
        case .streamReset:
            guard let index = serviceIndex(for: message), services[index].streamId == message.streamId else {
                actions.append(.log(.debug, "ignoring STREAM_RESET for stream \(message.streamId): not active"))
                return
            }
            // V1/V2: the normal end of the stream's one connection (delivered, then a FIN). V3:
            // connections end with CONNECTION_RESET, so a STREAM_RESET is abnormal and its
            // connections are reset.
            let abort = format == .v3
            actions.append(.log(.info, "the destination reset stream \(message.streamId) of \(label(index)): \(abort ? "resetting" : "closing") its connections"))
            endStream(index, abort: abort, &actions)
        case .connectionReset:
            guard let (index, connectionId) = route(message), let id = services[index].connections[connectionId] else {
                actions.append(.log(.debug, "ignoring CONNECTION_RESET for stream \(message.streamId) connection \(message.connectionId): not open"))
                return
            }
            services[index].connections[connectionId] = nil
            connections[id] = nil
            actions.append(.log(.debug, "the destination closed connection \(connectionId) of \(label(index))"))
            actions.append(.closeLocal(id))
        case .sessionReset:
            actions.append(.log(.info, "session reset by the service: resetting every local connection"))
            for i in services.indices { endStream(i, abort: true, &actions) }
        case .streamStart, .connectionStart:
            actions.append(.log(.warning, "ignoring \(message.type) sent to the source (only a source starts streams)"))
        default:
            if message.ignorable {
                actions.append(.log(.debug, "ignoring message of unknown \(message.type) (marked ignorable)"))
            } else {
                actions.append(.log(.error, "received message of unknown \(message.type), not marked ignorable: reconnecting"))
                let reason = SessionEndReason.unknownMessageType(message.type.rawValue)
                state = .ending(reason)
                actions.append(.reconnect(reason))
            }
        }
    }

    /// SERVICE_IDS decides what to listen for: each tunnel service gets its `-s` port, a single
    /// unnamed `-s PORT` serves a single-service (or service-less) tunnel, and a tunnel service
    /// without a port gets a free one (logged).
    private func handleServiceIds(_ message: TunnelMessage, _ actions: inout [SourceAction]) {
        guard case .awaitingServiceIds = state else {
            // Already listening (the service may repeat SERVICE_IDS): nothing new to set up.
            return
        }
        let (ids, refused) = message.checkedServiceIds
        for line in refused { actions.append(.log(.error, line)) }
        if ids.isEmpty {
            guard mappings.count == 1 else {
                fatal(.sourceServiceMismatch(mapped: mappings.map { $0.serviceId }, tunnel: []), &actions)
                return
            }
            services.append(Service(serviceId: "", serviceIdBytes: [], port: mappings[0].port))
        } else if mappings.count == 1 && mappings[0].serviceId.isEmpty {
            if ids.count > 1 {
                fatal(.sourceServiceMismatch(mapped: [""], tunnel: ids), &actions)
                return
            }
            services.append(Service(serviceId: ids[0], serviceIdBytes: Array(ids[0].utf8), port: mappings[0].port))
        } else {
            for id in ids {
                let port = mappings.first(where: { $0.serviceId.bytesEqual(id) })?.port ?? 0
                if port == 0 { actions.append(.log(.warning, "tunnel service \(loggableServiceId(Array(id.utf8))) has no -s port: listening on a free port")) }
                services.append(Service(serviceId: id, serviceIdBytes: Array(id.utf8), port: port))
            }
            for m in mappings where !ids.containsBytes(m.serviceId) {
                actions.append(.log(.warning, "service \(m.serviceId) is mapped with -s but the tunnel does not offer it"))
            }
        }
        state = .serving
        for (i, s) in services.enumerated() {
            actions.append(.listen(service: i, serviceId: s.serviceId, port: s.port))
        }
    }

    private func fatal(_ reason: SessionEndReason, _ actions: inout [SourceAction]) {
        state = .ending(reason)
        actions.append(.fatal(reason))
    }

    /// A message without serviceId goes to the only service, or to the service whose current
    /// stream has its id.
    private func serviceIndex(for message: TunnelMessage) -> Int? {
        if !message.serviceId.isEmpty {
            for (i, s) in services.enumerated() where s.serviceIdBytes == message.serviceId { return i }
            return nil
        }
        if services.count == 1 { return 0 }
        for (i, s) in services.enumerated() where s.streamId == message.streamId { return i }
        return nil
    }

    /// Service and connection a message addresses, if its stream is current.
    private func route(_ message: TunnelMessage) -> (Int, UInt32)? {
        guard let index = serviceIndex(for: message), services[index].streamId == message.streamId else { return nil }
        let connectionId: UInt32
        if format == .v3 {
            connectionId = message.connectionId == 0 ? 1 : message.connectionId
        } else {
            connectionId = services[index].connections.keys.first ?? 0
        }
        return (index, connectionId)
    }

    private func label(_ index: Int) -> String {
        services[index].serviceId.isEmpty ? "the tunnel's service" : "service \(services[index].serviceId)"
    }

    private func endStream(_ index: Int, abort: Bool = false, _ actions: inout [SourceAction]) {
        for (_, id) in services[index].connections {
            connections[id] = nil
            actions.append(abort ? .resetLocal(id) : .closeLocal(id))
        }
        services[index].connections = [:]
        services[index].streamId = nil
    }

    private func newStreamId() -> Int32 {
        let id = nextStreamId
        nextStreamId = nextStreamId == Int32.max ? 1 : nextStreamId + 1
        return id
    }

    // MARK: Local events

    /// A local client connected to the service's port. Returns its id, or nil when the service
    /// already has its maximum of connections (the runtime then closes the socket).
    public func accepted(service index: Int, into actions: inout [SourceAction]) -> LocalConnectionID? {
        guard case .serving = state, index < services.count else { return nil }
        if services[index].connections.count >= settings.maximumConnectionsPerService {
            actions.append(.log(.warning, "refusing a connection to \(label(index)): \(settings.maximumConnectionsPerService) are already open"))
            return nil
        }
        let id = LocalConnectionID(nextLocalId)
        nextLocalId &+= 1
        let serviceId = format == .v1 ? [] : services[index].serviceIdBytes
        if format != .v3 {
            // One connection per stream: a new one replaces the previous, as the destination
            // will do when it sees the new STREAM_START.
            if services[index].streamId != nil {
                actions.append(.log(.info, "a new connection to \(label(index)) replaces the previous one (the destination speaks \(format))"))
                endStream(index, &actions)
            }
            let stream = newStreamId()
            services[index].streamId = stream
            services[index].connections[0] = id
            connections[id] = Connection(service: index, streamId: stream, connectionId: 0)
            actions.append(.send(TunnelMessage(type: .streamStart, streamId: stream, serviceId: serviceId)))
            return id
        }
        let connectionId = services[index].nextConnectionId
        services[index].nextConnectionId = connectionId == UInt32.max ? 1 : connectionId + 1
        if let stream = services[index].streamId {
            services[index].connections[connectionId] = id
            connections[id] = Connection(service: index, streamId: stream, connectionId: connectionId)
            actions.append(.send(TunnelMessage(type: .connectionStart, streamId: stream, serviceId: serviceId, connectionId: connectionId)))
        } else {
            let stream = newStreamId()
            services[index].streamId = stream
            services[index].connections[connectionId] = id
            connections[id] = Connection(service: index, streamId: stream, connectionId: connectionId)
            actions.append(.send(TunnelMessage(type: .streamStart, streamId: stream, serviceId: serviceId, connectionId: connectionId)))
        }
        return id
    }

    /// The local client ended its sending direction (EOF or a read error) and every byte read
    /// from it went to the tunnel. The connection lingers for the destination's answer (see the
    /// file's header); a second report changes nothing. A connection no longer in the session
    /// has nothing to wait for and is closed.
    public func localEnded(_ id: LocalConnectionID, into actions: inout [SourceAction]) {
        guard var c = connections[id] else {
            actions.append(.closeLocal(id))
            return
        }
        guard case .open = c.phase else { return }
        c.phase = .halfClosed
        connections[id] = c
        actions.append(.startLinger(id, milliseconds: settings.halfCloseLingerMilliseconds))
    }

    /// The linger timer of a half-closed connection fired: no tunnel data came for the linger
    /// time, so the connection is closed and the destination told. An expiry for a connection
    /// that is gone or not half-closed (a timer the runtime did not stop in time) is ignored.
    public func lingerExpired(_ id: LocalConnectionID, into actions: inout [SourceAction]) {
        guard case .halfClosed? = connections[id]?.phase else { return }
        actions.append(.log(.debug, "local connection \(id): no answer for \(settings.halfCloseLingerMilliseconds) ms after its half-close: closing"))
        localClosed(id, into: &actions)
    }

    /// The local connection is over (after its bytes went out), or a write to a half-closed
    /// client failed (it is gone both ways): tell the destination.
    public func localClosed(_ id: LocalConnectionID, into actions: inout [SourceAction]) {
        guard let c = connections[id] else { return }
        actions.append(.closeLocal(id))
        forget(id, c, &actions)
    }

    /// A local client has taken nothing for the stall deadline while the tunnel waits for it:
    /// it is reset here and at the destination so that the other connections can go on.
    public func localStalled(_ id: LocalConnectionID, milliseconds: Int, into actions: inout [SourceAction]) {
        guard let c = connections[id] else {
            actions.append(.resetLocal(id))
            return
        }
        actions.append(.log(.warning, "local connection \(id) of \(label(c.service)) took no data for \(milliseconds) ms while the tunnel waited for it: resetting it so that the other connections can go on (--stall-timeout-ms)"))
        actions.append(.resetLocal(id))
        forget(id, c, &actions)
    }

    /// Removes a connection from its stream and tells the destination.
    private func forget(_ id: LocalConnectionID, _ c: Connection, _ actions: inout [SourceAction]) {
        connections[id] = nil
        guard services[c.service].streamId == c.streamId else { return }
        let serviceId = format == .v1 ? [] : services[c.service].serviceIdBytes
        services[c.service].connections[c.connectionId] = nil
        if format == .v3 {
            actions.append(.send(TunnelMessage(type: .connectionReset, streamId: c.streamId, serviceId: serviceId, connectionId: c.connectionId)))
        } else {
            actions.append(.send(TunnelMessage(type: .streamReset, streamId: c.streamId, serviceId: serviceId)))
            services[c.service].streamId = nil
        }
    }

    /// DATA fields for bytes read from `id`, or nil if it is no longer part of a stream.
    public func dataHeader(for id: LocalConnectionID) -> TunnelMessage? {
        guard let c = connections[id], services[c.service].streamId == c.streamId else { return nil }
        return TunnelMessage(type: .data, streamId: c.streamId,
                             serviceId: format == .v1 ? [] : services[c.service].serviceIdBytes,
                             connectionId: format == .v3 ? c.connectionId : 0)
    }

    /// Ends the session (WebSocket gone): every local connection is reset, since whatever it
    /// was carrying is cut off.
    public func closeAll(into actions: inout [SourceAction]) {
        for i in services.indices { endStream(i, abort: true, &actions) }
        connections.removeAll()
        state = .closed
    }
}
