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
    case reconnect(SessionEndReason)
    case fatal(SessionEndReason)
}

public struct SourceSessionSettings {
    /// Message format the destination understands: V3 (default), or V1/V2 for old destinations.
    public var destinationFormat: MessageFormat = .v3
    /// Most simultaneous connections per service (the reference's limit).
    public var maximumConnectionsPerService: Int = 128

    public init() {}
}

public final class SourceSession {
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
        var listening = false
        var streamId: Int32? = nil
        var nextConnectionId: UInt32 = 1
        /// connection id → local id, for the current stream.
        var connections: [UInt32: LocalConnectionID] = [:]
    }

    private struct Connection {
        var service: Int
        var streamId: Int32
        var connectionId: UInt32
    }

    public let settings: SourceSessionSettings
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
    public var listeningServices: [String] { services.filter { $0.listening }.map { $0.serviceId } }

    private var format: MessageFormat { settings.destinationFormat }

    // MARK: Tunnel messages

    public func handle(_ message: TunnelMessage, into actions: inout [SourceAction]) {
        switch message.type {
        case .serviceIds: handleServiceIds(message, &actions)
        case .data:
            guard let (index, connectionId) = route(message), let id = services[index].connections[connectionId] else {
                actions.append(.log(.trace, "dropping stale DATA for stream \(message.streamId)"))
                return
            }
            if message.payload.count > 0 { actions.append(.deliver(id, message.payload)) }
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
                actions.append(.reconnect(.unknownMessageType(message.type.rawValue)))
            }
        }
    }

    /// SERVICE_IDS decides what to listen for: each tunnel service gets its `-s` port, a single
    /// unnamed `-s PORT` serves a single-service (or service-less) tunnel, and a tunnel service
    /// without a port gets a free one (logged).
    private func handleServiceIds(_ message: TunnelMessage, _ actions: inout [SourceAction]) {
        if !services.isEmpty {
            // Already listening (the service may repeat SERVICE_IDS): nothing new to set up.
            return
        }
        let (ids, refused) = message.checkedServiceIds
        for line in refused { actions.append(.log(.error, line)) }
        if ids.isEmpty {
            guard mappings.count == 1 else {
                actions.append(.fatal(.sourceServiceMismatch(mapped: mappings.map { $0.serviceId }, tunnel: [])))
                return
            }
            services.append(Service(serviceId: "", serviceIdBytes: [], port: mappings[0].port))
        } else if mappings.count == 1 && mappings[0].serviceId.isEmpty {
            if ids.count > 1 {
                actions.append(.fatal(.sourceServiceMismatch(mapped: [""], tunnel: ids)))
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
        for (i, s) in services.enumerated() {
            services[i].listening = true
            actions.append(.listen(service: i, serviceId: s.serviceId, port: s.port))
        }
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
        guard index < services.count else { return nil }
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

    /// The local connection is over (after its bytes went out): tell the destination.
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
    }
}
