import TunnelCore

/// The vocabulary shared by the emulator's control plane and data plane: tunnels, their two
/// sides, their access tokens, and the errors the control plane answers with.

/// One end of a tunnel. Kept separate from `TunnelMode` because the emulator needs it as a
/// dictionary key and in the persisted state, and TunnelCore stays free of those conformances.
public enum Side: String, Codable, Hashable, CaseIterable, CustomStringConvertible, Sendable {
    case source
    case destination

    public init(_ mode: TunnelMode) { self = mode == .source ? .source : .destination }

    public var mode: TunnelMode { self == .source ? .source : .destination }
    public var other: Side { self == .source ? .destination : .source }
    public var description: String { rawValue }
    /// The spelling the control plane uses (`SOURCE`, `DESTINATION`).
    public var apiName: String { self == .source ? "SOURCE" : "DESTINATION" }
}

public enum TunnelStatus: String, Codable, Sendable {
    case open = "OPEN"
    case closed = "CLOSED"
}

/// Why a tunnel is closed: the difference decides the close reason its clients are sent and the
/// body of later refused upgrades.
public enum ClosedBy: String, Codable, Sendable {
    case request
    case expiry
}

public struct DestinationConfig: Equatable, Codable, Sendable {
    public var thingName: String?
    public var services: [String]

    public init(thingName: String?, services: [String]) {
        self.thingName = thingName
        self.services = services
    }
}

public struct Tag: Equatable, Codable, Sendable {
    public var key: String
    public var value: String

    public init(key: String, value: String) {
        self.key = key
        self.value = value
    }
}

/// A side's attachment as `DescribeTunnel` reports it.
public struct ConnectionState: Equatable, Codable, Sendable {
    public var connected: Bool
    /// Epoch seconds of the last change.
    public var lastUpdatedAt: Double

    public init(connected: Bool, lastUpdatedAt: Double) {
        self.connected = connected
        self.lastUpdatedAt = lastUpdatedAt
    }
}

public struct TunnelRecord: Equatable, Codable, Sendable {
    public var tunnelId: String
    public var tunnelArn: String
    /// Creation order, used for listing and for page tokens (it survives deletions of others).
    public var sequence: Int
    public var status: TunnelStatus
    public var closedBy: ClosedBy?
    public var description: String?
    public var tags: [Tag]
    public var destinationConfig: DestinationConfig?
    public var maxLifetimeTimeoutMinutes: Int
    public var createdAt: Double
    public var lastUpdatedAt: Double
    public var sourceConnection: ConnectionState
    public var destinationConnection: ConnectionState

    /// The services the data plane announces in SERVICE_IDS and accepts in STREAM_START.
    public var services: [String] { destinationConfig?.services ?? [] }

    public func connection(_ side: Side) -> ConnectionState {
        side == .source ? sourceConnection : destinationConnection
    }

    public mutating func setConnection(_ side: Side, _ state: ConnectionState) {
        if side == .source { sourceConnection = state } else { destinationConnection = state }
    }

    /// When the tunnel expires, given how many seconds a "minute" lasts (60 except in tests).
    public func deadline(minuteSeconds: Double) -> Double {
        createdAt + Double(maxLifetimeTimeoutMinutes) * minuteSeconds
    }
}

/// Whether a single-use access token was used, and with which client token (docs/PROTOCOL.md §10.1).
public enum TokenUse: Equatable, Codable, Sendable {
    case unused
    case used(clientToken: String?)
}

public struct AccessTokenRecord: Equatable, Codable, Sendable {
    public var tunnelId: String
    public var side: Side
    /// Set by rotation: the token is remembered so that its refusal can say why.
    public var revoked: Bool
    public var use: TokenUse
}

/// A control-plane error as the AWS JSON 1.1 protocol carries it: `__type` and `message`.
public struct ServiceError: Error, Equatable, CustomStringConvertible, Sendable {
    public var type: String
    public var message: String
    public var status: Int

    public init(_ type: String, _ message: String, status: Int = 400) {
        self.type = type
        self.message = message
        self.status = status
    }

    public static func notFound(_ message: String) -> ServiceError { ServiceError("ResourceNotFoundException", message) }
    public static func limitExceeded(_ message: String) -> ServiceError { ServiceError("LimitExceededException", message) }
    /// Input that breaks a constraint of the service model. The model declares no error shape
    /// for this; `ValidationException` is what AWS JSON services return for it.
    public static func validation(_ message: String) -> ServiceError { ServiceError("ValidationException", message) }
    /// A body that is not JSON, or a member of the wrong JSON type.
    public static func serialization(_ message: String) -> ServiceError { ServiceError("SerializationException", message) }

    public var description: String { "\(type): \(message)" }
}

/// What the data plane must do after a control-plane change or an expiry.
public enum ServiceEffect: Equatable, Sendable {
    /// Close the WebSocket of each listed side of the tunnel with this close code and reason.
    case disconnect(tunnelId: String, sides: [Side], code: UInt16, reason: String)
    /// The tunnel is gone from the data plane for good (closed, expired or deleted).
    case forget(tunnelId: String)
    /// Publish the destination token on `$aws/things/THING/tunnels/notify` (OpenTunnel or a
    /// destination rotation of a tunnel with a thing name); done when an MQTT broker is set.
    case notifyDestination(thingName: String, accessToken: String, services: [String])
}
