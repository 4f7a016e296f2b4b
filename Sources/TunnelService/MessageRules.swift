import TunnelCore

/// The checks the service applies to every tunnel message a client sends (docs/PROTOCOL.md §6.2,
/// §14.4). A violation closes the sender's WebSocket; the close code and a reason naming the
/// rule are part of the verdict, so the rules can be tested without any connection.

/// What the relay needs to know about a message that passed the checks.
public struct MessageSummary: Equatable, Sendable {
    public var type: MessageType
    public var streamId: Int32
    /// UTF-8 bytes; empty when absent.
    public var serviceId: [UInt8]
    public var connectionId: UInt32

    public init(type: MessageType, streamId: Int32 = 0, serviceId: [UInt8] = [], connectionId: UInt32 = 0) {
        self.type = type
        self.streamId = streamId
        self.serviceId = serviceId
        self.connectionId = connectionId
    }
}

public enum Verdict: Equatable, Sendable {
    case forward(MessageSummary)
    case close(code: UInt16, reason: String)
}

/// The per-connection state the rules need. One value per WebSocket connection; "session" in
/// the rules means the lifetime of that connection.
public struct ConnectionRules: Sendable {
    public let side: Side
    /// The tunnel's services, as UTF-8 bytes.
    public let services: [[UInt8]]
    /// Services that had a STREAM_START in this session: sent by this connection (source), or
    /// delivered to it (destination). DATA and STREAM_RESET may name only these.
    public private(set) var startedServices: Set<[UInt8]> = []

    /// Whether the connection's stream-scoped messages carry a serviceId. Fixed by its first
    /// stream-scoped message; going from "without" to "with" is refused (docs/PROTOCOL.md §11).
    enum Format: Equatable, Sendable { case undecided, withoutServiceId, withServiceId }
    private(set) var format = Format.undecided

    public init(side: Side, services: [String]) {
        self.side = side
        self.services = services.map { Array($0.utf8) }
    }

    static func violation(_ reason: String) -> Verdict { .close(code: WebSocketCloseCode.policyViolation, reason: reason) }

    /// Checks one message (its protobuf bytes, without the length prefix) and, if it passes,
    /// records what it changes.
    public mutating func inspect(_ bytes: UnsafeRawBufferPointer) -> Verdict {
        if let problem = ConnectionRules.unknownFieldProblem(bytes) { return problem }
        let message: TunnelMessage
        do {
            message = try TunnelMessage.decode(bytes)
        } catch {
            if case .payloadTooLarge = error.reason {
                return .close(code: WebSocketCloseCode.messageTooBig,
                              reason: "DATA payload over \(TunnelMessage.maximumPayloadLength) bytes")
            }
            return .close(code: WebSocketCloseCode.invalidPayload, reason: "malformed protobuf message")
        }
        let type = message.type
        let summary = MessageSummary(type: type, streamId: message.streamId, serviceId: message.serviceId,
                                     connectionId: message.connectionId)
        if type == .unknown { return ConnectionRules.violation("message type 0 (UNKNOWN) is invalid") }
        if !type.isKnown {
            // A type from a later protocol version: its sender marked whether it may be dropped.
            // The service relays it when it may (so receivers' handling can be tested) and
            // refuses it otherwise, as a receiver would.
            return message.ignorable ? .forward(summary) : ConnectionRules.violation("unknown message type \(type.rawValue) not marked ignorable")
        }
        if type == .sessionReset || type == .serviceIds {
            return ConnectionRules.violation("\(type) is sent only by the service")
        }
        if side == .destination && (type == .streamStart || type == .connectionStart) {
            return ConnectionRules.violation("\(type) from a destination")
        }
        // Every known type but the two service-only ones is stream-scoped.
        if message.streamId == 0 { return ConnectionRules.violation("\(type) with streamId 0") }
        let service = message.serviceId
        if (type == .streamStart || type == .connectionStart) && !service.isEmpty && !services.contains(service) {
            return ConnectionRules.violation("\(type) for service \(ConnectionRules.name(service)) not in the tunnel")
        }
        switch (format, service.isEmpty) {
        case (.undecided, true): format = .withoutServiceId
        case (.undecided, false): format = .withServiceId
        case (.withoutServiceId, false):
            return ConnectionRules.violation("\(type) with a serviceId after messages without one")
        default: break
        }
        if (type == .data || type == .streamReset) && !service.isEmpty && !startedServices.contains(service) {
            return ConnectionRules.violation("\(type) for service \(ConnectionRules.name(service)) that had no STREAM_START")
        }
        if type == .streamStart && side == .source { startedServices.insert(service) }
        return .forward(summary)
    }

    /// Notes a message relayed to this connection (the destination learns of streams this way).
    public mutating func delivered(_ summary: MessageSummary) {
        if summary.type == .streamStart { startedServices.insert(summary.serviceId) }
    }

    /// Finds fields the schema does not have (numbers above 7), and known field numbers sent
    /// with the wrong wire type: the service closes the connection for "extra fields".
    static func unknownFieldProblem(_ bytes: UnsafeRawBufferPointer) -> Verdict? {
        var reader = ProtobufReader(bytes)
        while !reader.isAtEnd {
            let field: UInt64
            let wireType: ProtobufWireType
            do {
                (field, wireType) = try reader.readKey()
                if field > TunnelMessage.Field.connectionId {
                    return violation("unknown protobuf field \(field)")
                }
                let expected: ProtobufWireType
                switch field {
                case TunnelMessage.Field.payload, TunnelMessage.Field.serviceId, TunnelMessage.Field.availableServiceIds:
                    expected = .lengthDelimited
                default:
                    expected = .varint
                }
                if wireType != expected {
                    return violation("protobuf field \(field) with wire type \(wireType)")
                }
                try reader.skip(field: field, wireType: wireType)
            } catch {
                return .close(code: WebSocketCloseCode.invalidPayload, reason: "malformed protobuf message")
            }
        }
        return nil
    }

    /// A service id for a close reason: bounded so the reason fits a close frame.
    static func name(_ bytes: [UInt8]) -> String {
        let text = String(decoding: bytes.prefix(32), as: UTF8.self)
        return bytes.count > 32 ? "\"\(text)...\"" : "\"\(text)\""
    }
}

/// The stream each service currently has in a tunnel, as the source started it. Used to tell
/// the other side which streams died when a side reconnects (`--on-reconnect stream-reset`).
public struct ActiveStreams: Equatable, Sendable {
    /// serviceId bytes (empty for V1 format) → streamId, in order of start.
    public private(set) var streams: [(service: [UInt8], streamId: Int32)] = []

    public init() {}

    public static func == (a: ActiveStreams, b: ActiveStreams) -> Bool {
        a.streams.count == b.streams.count && zip(a.streams, b.streams).allSatisfy { $0.service == $1.service && $0.streamId == $1.streamId }
    }

    /// Follows a message that was relayed (from either side).
    public mutating func note(_ summary: MessageSummary) {
        switch summary.type {
        case .streamStart:
            streams.removeAll { $0.service == summary.serviceId }
            streams.append((summary.serviceId, summary.streamId))
        case .streamReset:
            streams.removeAll { $0.service == summary.serviceId && $0.streamId == summary.streamId }
        default:
            break
        }
    }

    public mutating func removeAll() { streams.removeAll() }

    /// STREAM_RESET for every active stream, length-prefixed, ready to queue.
    public func resetMessages() -> [[UInt8]] {
        streams.map { ServiceMessages.streamReset(streamId: $0.streamId, serviceId: $0.service) }
    }
}

/// The messages the service itself originates, length-prefixed.
public enum ServiceMessages {
    public static func serviceIds(_ services: [String]) -> [UInt8] {
        frame(TunnelMessage(type: .serviceIds, availableServiceIds: services.map { Array($0.utf8) }))
    }

    public static func sessionReset() -> [UInt8] { frame(TunnelMessage(type: .sessionReset)) }

    public static func streamReset(streamId: Int32, serviceId: [UInt8]) -> [UInt8] {
        frame(TunnelMessage(type: .streamReset, streamId: streamId, serviceId: serviceId))
    }

    private static func frame(_ message: TunnelMessage) -> [UInt8] {
        do {
            return try TunnelFrame.encode(message)
        } catch {
            // No payload and at most 3 ids of 128 bytes: far below every limit.
            preconditionFailure("service message cannot be encoded: \(error)")
        }
    }
}
