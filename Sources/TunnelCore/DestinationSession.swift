/// The destination (device-side) half of a tunnel session, as a state machine with no I/O
/// (docs/PROTOCOL.md §8 and §17, without the reference's quirks of §16).
///
/// Events go in (a tunnel message, a local connect result, a local close, a retry timer) and
/// actions come out (connect, deliver bytes to a local socket, close one, send a control message,
/// log, reconnect, stop). The caller performs the actions. One session lives for one WebSocket
/// connection; a reconnect starts a new one.
///
/// Lifecycle of the session (`State`):
///
///     awaitingServiceIds --SERVICE_IDS--> serving(tunnelServices) --closeAll--> closed
///            |                               |   ^                                ^
///            |                               +---+ SERVICE_IDS again: checked again |
///            +--------------+----------------+                                    |
///                           v                                                     |
///     SERVICE_IDS that -d cannot serve (fatal), unknown message --> ending(reason) +
///
/// | state                   | next                     | why                                          |
/// |-------------------------|--------------------------|----------------------------------------------|
/// | awaitingServiceIds      | serving, ending, closed  | SERVICE_IDS that the mappings serve; SERVICE_IDS naming a service `-d` does not map (`fatal`) or an unknown message not marked ignorable (`reconnect`); the WebSocket ended (`closeAll`). Streams are served already: a single unnamed mapping takes the name of the first stream's service |
/// | serving(tunnelServices) | serving, ending, closed  | a repeated SERVICE_IDS is checked again (and may end the session); the other reasons as above |
/// | ending(reason)          | closed                   | the session asked for its end: tunnel messages are dropped until the runtime ends the WebSocket and calls `closeAll`; local events still update the connections, which `closeAll` resets |
/// | closed                  | —                        | every local connection was reset; nothing more happens |
///
/// Lifecycle of a local connection, as this session sees it (`Connection.phase`):
///
///     connecting(attempt n) --connected--> open --local EOF/error, stall--> (gone, reset sent)
///          |  ^                               |
///          |  +--failed, n <= retries: retry  +--reset from the peer, stream replaced,
///          +--failed, n > retries: reset sent       session reset: closeLocal (gone)
///
/// A stream (per service) is created by STREAM_START and lives until STREAM_RESET, SESSION_RESET,
/// a newer STREAM_START for the same service, or (V1/V2 format only) the close of its connection.
/// In V3 a stream survives with zero connections: the source adds more with CONNECTION_START.

public enum DestinationAction {
    /// Open a local connection to `endpoint` (attempt 1) for the given id.
    case connect(LocalConnectionID, Endpoint)
    /// Try connecting again after `delayMilliseconds` (then report `retryTimerFired`).
    case scheduleRetry(LocalConnectionID, delayMilliseconds: Int)
    /// Queue these bytes for writing to the local connection (connected or still connecting).
    /// The view is valid only during the call that returned this action.
    case deliver(LocalConnectionID, UnsafeRawBufferPointer)
    /// Write what is queued, then close the local connection; forget it.
    case closeLocal(LocalConnectionID)
    /// Drop what is queued and close the local connection with a TCP reset, so the local
    /// application cannot take a cut-off transfer for a complete one; forget it.
    case resetLocal(LocalConnectionID)
    /// Send a control message (no payload) to the tunnel.
    case send(TunnelMessage)
    case log(LogLevel, String)
    /// Drop this WebSocket session and reconnect with the same tokens.
    case reconnect(SessionEndReason)
    /// Stop the proxy with an error: the configuration cannot work with this tunnel.
    case fatal(SessionEndReason)
}

public struct DestinationSessionSettings {
    /// Connect attempts after the first one before giving up on a local connection.
    public var connectRetries: Int = 3
    public var connectRetryDelayMilliseconds: Int = 1000
    /// Most simultaneous connections accepted in one stream.
    public var maximumConnectionsPerStream: Int = 128

    public init() {}
}

public final class DestinationSession {
    /// Where the session is in its life (the table is in the file's header).
    public enum State: Equatable {
        /// No SERVICE_IDS yet; streams are served already.
        case awaitingServiceIds
        /// SERVICE_IDS arrived and the mappings serve it: the services the tunnel announced.
        case serving(tunnelServices: [String])
        /// The session returned `.fatal` or `.reconnect` with this reason and waits for `closeAll`.
        case ending(SessionEndReason)
        /// `closeAll` ran.
        case closed
    }

    private struct Service {
        var mapping: ServiceMapping
        var serviceIdBytes: [UInt8]
        var stream: Stream? = nil
    }

    private struct Stream {
        var id: Int32
        var format: MessageFormat
        /// connectionId (1 for V1/V2 streams) → local id.
        var connections: [UInt32: LocalConnectionID] = [:]
    }

    private struct Connection {
        var service: Int
        var streamId: Int32
        var connectionId: UInt32
        var format: MessageFormat
        var phase: Phase
        /// Whether this connection was created by STREAM_START (reset with STREAM_RESET) or by
        /// CONNECTION_START (reset with CONNECTION_RESET).
        var startedStream: Bool
    }

    /// A local connection's place in its lifecycle (the diagram in the file's header).
    private enum Phase {
        /// Connect attempt `attempt` (1: the first) is under way, or waits for its retry timer.
        case connecting(attempt: Int)
        case open
    }

    public let settings: DestinationSessionSettings
    public private(set) var state = State.awaitingServiceIds
    private var services: [Service]
    private var connections: [LocalConnectionID: Connection] = [:]
    private var nextLocalId: UInt32

    /// Service ids the tunnel announced, while serving.
    public var tunnelServices: [String]? {
        if case .serving(let ids) = state { return ids }
        return nil
    }

    /// `firstLocalId` lets a runtime keep ids unique across sessions of one process.
    public init(mappings: [ServiceMapping], settings: DestinationSessionSettings = DestinationSessionSettings(), firstLocalId: UInt32 = 1) {
        self.settings = settings
        services = mappings.map { Service(mapping: $0, serviceIdBytes: Array($0.serviceId.utf8)) }
        nextLocalId = firstLocalId
    }

    /// The next local id this session would hand out (for the runtime's next session).
    public var nextLocalConnectionId: UInt32 { nextLocalId }

    /// Local connections currently known (connecting or open).
    public var connectionCount: Int { connections.count }

    // MARK: Tunnel messages

    public func handle(_ message: TunnelMessage, into actions: inout [DestinationAction]) {
        switch state {
        case .awaitingServiceIds, .serving: break
        // The session already asked to end (or ended): what the peer sends now changes nothing.
        case .ending, .closed: return
        }
        switch message.type {
        case .data: handleData(message, &actions)
        case .streamStart: handleStreamStart(message, &actions)
        case .connectionStart: handleConnectionStart(message, &actions)
        case .streamReset: handleStreamReset(message, &actions)
        case .connectionReset: handleConnectionReset(message, &actions)
        case .sessionReset:
            // The service lost the other side: whatever the connections carried is cut off.
            actions.append(.log(.info, "session reset by the service: resetting every local connection"))
            for index in services.indices { endStream(index, abort: true, &actions) }
        case .serviceIds: handleServiceIds(message, &actions)
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

    private func handleServiceIds(_ message: TunnelMessage, _ actions: inout [DestinationAction]) {
        let (ids, refused) = message.checkedServiceIds
        for line in refused { actions.append(.log(.error, line)) }
        state = .serving(tunnelServices: ids)
        // A single unnamed mapping serves a tunnel with a single service under that name.
        if services.count == 1 && services[0].mapping.serviceId.isEmpty {
            if ids.count == 1 {
                services[0].mapping.serviceId = ids[0]
                services[0].serviceIdBytes = Array(ids[0].utf8)
                actions.append(.log(.info, "tunnel service \(ids[0]) -> \(services[0].mapping.endpoint)"))
                return
            }
            if ids.isEmpty { return }
            fatal(.serviceMismatch(missing: ids, tunnel: ids), &actions)
            return
        }
        if services.count == 1 && ids.isEmpty { return }
        var missing: [String] = []
        for id in ids where index(ofService: Array(id.utf8)) == nil { missing.append(id) }
        if !missing.isEmpty {
            fatal(.serviceMismatch(missing: missing, tunnel: ids), &actions)
            return
        }
        for (i, service) in services.enumerated() {
            if ids.containsBytes(service.mapping.serviceId) {
                actions.append(.log(.info, "tunnel service \(service.mapping.serviceId) -> \(service.mapping.endpoint)"))
            } else {
                actions.append(.log(.warning, "service \(service.mapping.serviceId) is mapped locally but the tunnel does not offer it"))
                if services[i].stream != nil { endStream(i, &actions) }
            }
        }
    }

    private func fatal(_ reason: SessionEndReason, _ actions: inout [DestinationAction]) {
        state = .ending(reason)
        actions.append(.fatal(reason))
    }

    private func index(ofService id: [UInt8]) -> Int? {
        for (i, s) in services.enumerated() where s.serviceIdBytes == id { return i }
        return nil
    }

    /// Which local service a message is for. A message without serviceId (V1 format) goes to the
    /// only service, or to the service whose V1 stream has this stream id.
    private func resolveService(_ message: TunnelMessage) -> Int? {
        if !message.serviceId.isEmpty {
            if let i = index(ofService: message.serviceId) { return i }
            // A single unnamed mapping (`-d 22`) serves whatever the tunnel's one service is
            // called, even when a stream starts before SERVICE_IDS named it.
            if services.count == 1 && services[0].serviceIdBytes.isEmpty && message.type == .streamStart
                && message.serviceId.count <= TunnelMessage.maximumServiceIdLength {
                services[0].mapping.serviceId = String(decoding: message.serviceId, as: UTF8.self)
                services[0].serviceIdBytes = message.serviceId
                return 0
            }
            return nil
        }
        if services.count == 1 { return 0 }
        for (i, s) in services.enumerated() {
            if let stream = s.stream, stream.format == .v1, stream.id == message.streamId { return i }
        }
        return nil
    }

    private func describe(_ message: TunnelMessage) -> String {
        var text = "\(message.type) stream \(message.streamId)"
        if !message.serviceId.isEmpty { text += " service \(loggableServiceId(message.serviceId))" }
        if message.connectionId != 0 { text += " connection \(message.connectionId)" }
        return text
    }

    private func handleStreamStart(_ message: TunnelMessage, _ actions: inout [DestinationAction]) {
        guard message.streamId != 0 else {
            actions.append(.log(.warning, "ignoring \(describe(message)): stream id 0 is invalid"))
            return
        }
        guard let index = resolveService(message) else {
            let why: String
            if message.serviceId.isEmpty {
                why = "names no service and several are mapped: resetting it (map a single service, or have the source send service ids)"
            } else if message.serviceId.count > TunnelMessage.maximumServiceIdLength {
                why = "has a service id longer than \(TunnelMessage.maximumServiceIdLength) bytes: resetting it"
            } else {
                why = "is for a service that -d does not map: resetting it"
            }
            actions.append(.log(.error, "\(describe(message)) \(why)"))
            actions.append(.send(TunnelMessage(type: .streamReset, streamId: message.streamId, serviceId: message.serviceId)))
            return
        }
        if let current = services[index].stream {
            if current.id == message.streamId {
                actions.append(.log(.debug, "ignoring repeated \(describe(message))"))
                return
            }
            // A newer stream replaces the old one: close the old stream's connections (their
            // queued bytes are still written) and start the new stream right away.
            actions.append(.log(.info, "\(describe(message)) replaces stream \(current.id)"))
            endStream(index, &actions)
        }
        let format: MessageFormat = message.serviceId.isEmpty ? .v1 : (message.connectionId == 0 ? .v2 : .v3)
        services[index].stream = Stream(id: message.streamId, format: format)
        actions.append(.log(.info, "\(describe(message)): new \(format) stream to \(services[index].mapping.endpoint)"))
        openConnection(service: index, connectionId: message.connectionId == 0 ? 1 : message.connectionId,
                       startedStream: true, &actions)
    }

    private func handleConnectionStart(_ message: TunnelMessage, _ actions: inout [DestinationAction]) {
        guard let index = resolveService(message), let stream = services[index].stream, stream.id == message.streamId else {
            actions.append(.log(.warning, "ignoring \(describe(message)): no such active stream"))
            return
        }
        let connectionId = message.connectionId == 0 ? 1 : message.connectionId
        if let existing = stream.connections[connectionId] {
            // The source is confused about this connection; resetting it on both sides keeps
            // the two ends agreeing that it is gone.
            actions.append(.log(.warning, "\(describe(message)) duplicates an open connection: closing and resetting it"))
            var updated = stream
            updated.connections[connectionId] = nil
            services[index].stream = updated
            connections[existing] = nil
            actions.append(.closeLocal(existing))
            actions.append(.send(resetMessage(for: index, stream: stream, connectionId: connectionId, wholeStream: false)))
            return
        }
        guard stream.connections.count < settings.maximumConnectionsPerStream else {
            actions.append(.log(.warning, "\(describe(message)) refused: the stream already has \(settings.maximumConnectionsPerStream) connections"))
            actions.append(.send(resetMessage(for: index, stream: stream, connectionId: connectionId, wholeStream: false)))
            return
        }
        openConnection(service: index, connectionId: connectionId, startedStream: false, &actions)
    }

    private func openConnection(service index: Int, connectionId: UInt32, startedStream: Bool, _ actions: inout [DestinationAction]) {
        guard var stream = services[index].stream else { return }
        let id = LocalConnectionID(nextLocalId)
        nextLocalId &+= 1
        stream.connections[connectionId] = id
        services[index].stream = stream
        connections[id] = Connection(service: index, streamId: stream.id, connectionId: connectionId, format: stream.format,
                                     phase: .connecting(attempt: 1), startedStream: startedStream)
        actions.append(.connect(id, services[index].mapping.endpoint))
    }

    private func handleData(_ message: TunnelMessage, _ actions: inout [DestinationAction]) {
        guard let index = resolveService(message), let stream = services[index].stream, stream.id == message.streamId else {
            actions.append(.log(.trace, "dropping stale \(describe(message))"))
            return
        }
        let connectionId = message.connectionId == 0 ? 1 : message.connectionId
        guard let id = stream.connections[connectionId] else {
            actions.append(.log(.debug, "dropping \(describe(message)): no such connection"))
            return
        }
        if message.payload.count > 0 { actions.append(.deliver(id, message.payload)) }
    }

    private func handleStreamReset(_ message: TunnelMessage, _ actions: inout [DestinationAction]) {
        guard let index = resolveService(message), let stream = services[index].stream, stream.id == message.streamId else {
            actions.append(.log(.debug, "ignoring \(describe(message)): no such active stream"))
            return
        }
        // In V1/V2 a STREAM_RESET is how the source says its one connection closed: what was
        // sent before it is delivered, then a FIN. In V3 connections close with CONNECTION_RESET;
        // a STREAM_RESET ends the stream abnormally (the source went away), so its connections
        // are reset and their applications cannot take a cut-off transfer for a complete one.
        let abort = stream.format == .v3
        actions.append(.log(.info, "\(describe(message)): \(abort ? "resetting" : "closing") its \(stream.connections.count) local connection(s)"))
        endStream(index, abort: abort, &actions)
    }

    private func handleConnectionReset(_ message: TunnelMessage, _ actions: inout [DestinationAction]) {
        let connectionId = message.connectionId == 0 ? 1 : message.connectionId
        guard let index = resolveService(message), var stream = services[index].stream, stream.id == message.streamId,
              let id = stream.connections[connectionId] else {
            // Resets for connections already closed are normal (both sides close at once).
            actions.append(.log(.debug, "ignoring \(describe(message)): no such connection"))
            return
        }
        stream.connections[connectionId] = nil
        services[index].stream = stream
        connections[id] = nil
        actions.append(.log(.debug, "\(describe(message)): closing local connection \(id)"))
        actions.append(.closeLocal(id))
    }

    /// Closes every connection of a service's stream and forgets the stream. Sends nothing: the
    /// callers are resets and replacements that the peer already knows about. `abort` resets
    /// the local connections instead of letting them finish what is queued.
    private func endStream(_ index: Int, abort: Bool = false, _ actions: inout [DestinationAction]) {
        guard let stream = services[index].stream else { return }
        for (_, id) in stream.connections {
            connections[id] = nil
            actions.append(abort ? .resetLocal(id) : .closeLocal(id))
        }
        services[index].stream = nil
    }

    /// CONNECTION_RESET for one connection, or STREAM_RESET for the whole stream, in the stream's
    /// format (no serviceId in V1).
    private func resetMessage(for index: Int, stream: Stream, connectionId: UInt32, wholeStream: Bool) -> TunnelMessage {
        let serviceId = stream.format == .v1 ? [] : services[index].serviceIdBytes
        if wholeStream {
            return TunnelMessage(type: .streamReset, streamId: stream.id, serviceId: serviceId)
        }
        return TunnelMessage(type: .connectionReset, streamId: stream.id, serviceId: serviceId, connectionId: connectionId)
    }

    // MARK: Local connection events

    public func connected(_ id: LocalConnectionID, into actions: inout [DestinationAction]) {
        guard var c = connections[id] else {
            // Closed while connecting (stream reset): the runtime closes the socket it just got.
            actions.append(.closeLocal(id))
            return
        }
        c.phase = .open
        connections[id] = c
        actions.append(.log(.debug, "local connection \(id) to \(services[c.service].mapping.endpoint) open"))
    }

    /// A connect attempt failed (`reason` is for the log).
    public func connectFailed(_ id: LocalConnectionID, reason: String, into actions: inout [DestinationAction]) {
        guard var c = connections[id], case .connecting(let attempt) = c.phase else { return }
        let endpoint = services[c.service].mapping.endpoint
        if attempt <= settings.connectRetries {
            actions.append(.log(.warning, "connecting to \(endpoint) failed (\(reason)); retry \(attempt) of \(settings.connectRetries) in \(settings.connectRetryDelayMilliseconds) ms"))
            c.phase = .connecting(attempt: attempt + 1)
            connections[id] = c
            actions.append(.scheduleRetry(id, delayMilliseconds: settings.connectRetryDelayMilliseconds))
            return
        }
        actions.append(.log(.error, "connecting to \(endpoint) failed (\(reason)) after \(attempt) attempts: resetting the tunnel connection"))
        closeAndReset(id, c, connectFailed: true, &actions)
    }

    /// The retry delay for `id` has passed.
    public func retryTimerFired(_ id: LocalConnectionID, into actions: inout [DestinationAction]) {
        guard let c = connections[id], case .connecting = c.phase else { return }
        actions.append(.connect(id, services[c.service].mapping.endpoint))
    }

    /// The local side ended (EOF or error) after the runtime forwarded every byte it had read.
    public func localClosed(_ id: LocalConnectionID, into actions: inout [DestinationAction]) {
        guard let c = connections[id] else { return }
        actions.append(.log(.debug, "local connection \(id) closed"))
        closeAndReset(id, c, connectFailed: false, &actions)
    }

    /// Forgets a connection and tells the peer: CONNECTION_RESET in V3 (the stream stays), or
    /// STREAM_RESET in V1/V2 (the stream ends with its only connection). A V3 stream whose first
    /// connection could not be made at all, and that has no other connection, is reset whole:
    /// the stream never worked, and the source learns it the way V1/V2 sources would.
    private func closeAndReset(_ id: LocalConnectionID, _ c: Connection, connectFailed: Bool, abort: Bool = false,
                               _ actions: inout [DestinationAction]) {
        connections[id] = nil
        actions.append(abort ? .resetLocal(id) : .closeLocal(id))
        guard var stream = services[c.service].stream, stream.id == c.streamId else { return }
        let wholeStream = c.format != .v3 || (connectFailed && c.startedStream && stream.connections.count <= 1)
        let reset = resetMessage(for: c.service, stream: stream, connectionId: c.connectionId, wholeStream: wholeStream)
        actions.append(.send(reset))
        if reset.type == .streamReset {
            for (_, other) in stream.connections where other != id {
                connections[other] = nil
                actions.append(abort ? .resetLocal(other) : .closeLocal(other))
            }
            services[c.service].stream = nil
        } else {
            stream.connections[c.connectionId] = nil
            services[c.service].stream = stream
        }
    }

    /// The fields of DATA messages carrying bytes read from `id`, or nil if the connection is no
    /// longer part of a stream (its bytes are then not sent).
    public func dataHeader(for id: LocalConnectionID) -> TunnelMessage? {
        guard let c = connections[id] else { return nil }
        let serviceId = c.format == .v1 ? [] : services[c.service].serviceIdBytes
        return TunnelMessage(type: .data, streamId: c.streamId, serviceId: serviceId,
                             connectionId: c.format == .v3 ? c.connectionId : 0)
    }

    /// A local connection has taken nothing for the stall deadline while the tunnel waits for
    /// it: it is reset on both sides (CONNECTION_RESET in V3, STREAM_RESET in V1/V2) so that the
    /// tunnel's other connections can move again. Its queued bytes are dropped.
    public func localStalled(_ id: LocalConnectionID, milliseconds: Int, into actions: inout [DestinationAction]) {
        guard let c = connections[id] else {
            actions.append(.resetLocal(id))
            return
        }
        actions.append(.log(.warning, "local connection \(id) to \(services[c.service].mapping.endpoint) took no data for \(milliseconds) ms while the tunnel waited for it: resetting it so that the other connections can go on (--stall-timeout-ms)"))
        closeAndReset(id, c, connectFailed: false, abort: true, &actions)
    }

    /// Ends the session (WebSocket gone): every local connection is reset, since whatever it
    /// was carrying is cut off.
    public func closeAll(into actions: inout [DestinationAction]) {
        for index in services.indices { endStream(index, abort: true, &actions) }
        connections.removeAll()
        state = .closed
    }
}
