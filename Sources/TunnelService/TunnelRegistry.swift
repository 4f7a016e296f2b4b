import TunnelCore

/// The emulator's one source of truth about tunnels and access tokens. It does no I/O and reads
/// no clock: every call that depends on time takes `now` (epoch seconds), and every change that
/// the data plane must act on comes back as `ServiceEffect`s. The control plane and the data
/// plane share one registry on the single event-loop thread.
public final class TunnelRegistry {
    /// The account the ARNs name; any fixed value does, since nothing checks it.
    public static let accountId = "123456789012"
    /// The service's default and maximum tunnel lifetime (docs/PROTOCOL.md §1).
    public static let defaultLifetimeMinutes = 720

    public let region: String
    /// How long a "minute" of `maxLifetimeTimeoutMinutes` lasts. 60 normally; tests shrink it so
    /// that expiry can be observed in seconds.
    public let minuteSeconds: Double
    /// Open tunnels allowed at once; OpenTunnel beyond it fails with LimitExceededException.
    public let maximumOpenTunnels: Int

    public private(set) var tunnels: [String: TunnelRecord] = [:]
    private var tokens: [String: AccessTokenRecord] = [:]
    /// The current (not revoked) token of each side of each tunnel.
    private var currentTokens: [String: [Side: String]] = [:]
    private var nextSequence = 1

    private let makeToken: () -> String
    private let makeTunnelId: () -> String
    /// Called after every change worth persisting (tunnels, tokens, token use).
    public var onChange: (() -> Void)?

    public init(region: String, minuteSeconds: Double = 60, maximumOpenTunnels: Int = 300,
                makeToken: @escaping () -> String, makeTunnelId: @escaping () -> String) {
        self.region = region
        self.minuteSeconds = minuteSeconds
        self.maximumOpenTunnels = maximumOpenTunnels
        self.makeToken = makeToken
        self.makeTunnelId = makeTunnelId
    }

    public func arn(_ tunnelId: String) -> String { "arn:aws:iot:\(region):\(TunnelRegistry.accountId):tunnel/\(tunnelId)" }

    // MARK: Control plane

    public struct Opened: Equatable {
        public var tunnel: TunnelRecord
        public var sourceAccessToken: String
        public var destinationAccessToken: String
    }

    /// OpenTunnel, with inputs already validated against the model.
    public func open(description: String?, tags: [Tag], destinationConfig: DestinationConfig?,
                     lifetimeMinutes: Int?, now: Double) throws(ServiceError) -> Opened {
        let open = tunnels.values.filter { $0.status == .open }.count
        guard open < maximumOpenTunnels else {
            throw .limitExceeded("The maximum number of open tunnels (\(maximumOpenTunnels)) has been reached.")
        }
        var id = makeTunnelId()
        while tunnels[id] != nil { id = makeTunnelId() }
        let record = TunnelRecord(
            tunnelId: id, tunnelArn: arn(id), sequence: nextSequence, status: .open, closedBy: nil,
            description: description, tags: mergeTags([], tags), destinationConfig: destinationConfig,
            maxLifetimeTimeoutMinutes: lifetimeMinutes ?? TunnelRegistry.defaultLifetimeMinutes,
            createdAt: now, lastUpdatedAt: now,
            sourceConnection: ConnectionState(connected: false, lastUpdatedAt: now),
            destinationConnection: ConnectionState(connected: false, lastUpdatedAt: now))
        nextSequence += 1
        tunnels[id] = record
        let source = issueToken(tunnelId: id, side: .source)
        let destination = issueToken(tunnelId: id, side: .destination)
        onChange?()
        return Opened(tunnel: record, sourceAccessToken: source, destinationAccessToken: destination)
    }

    private func issueToken(tunnelId: String, side: Side) -> String {
        var token = makeToken()
        while tokens[token] != nil { token = makeToken() }
        tokens[token] = AccessTokenRecord(tunnelId: tunnelId, side: side, revoked: false, use: .unused)
        currentTokens[tunnelId, default: [:]][side] = token
        return token
    }

    public func describe(_ tunnelId: String) throws(ServiceError) -> TunnelRecord {
        guard let record = tunnels[tunnelId] else { throw notFound(tunnelId) }
        return record
    }

    private func notFound(_ tunnelId: String) -> ServiceError {
        .notFound("Tunnel \(tunnelId) not found.")
    }

    /// ListTunnels: newest first; `after` is the sequence number the previous page ended at.
    public func list(thingName: String?, maxResults: Int, after: Int?) -> (page: [TunnelRecord], nextAfter: Int?) {
        let matching = tunnels.values
            .filter { thingName == nil || $0.destinationConfig?.thingName == thingName }
            .filter { after == nil || $0.sequence < after! }
            .sorted { $0.sequence > $1.sequence }
        let page = Array(matching.prefix(maxResults))
        let more = matching.count > page.count
        return (page, more ? page.last?.sequence : nil)
    }

    public struct Rotated: Equatable {
        public var tunnelArn: String
        public var tokens: [Side: String]
        public var effects: [ServiceEffect]
    }

    /// RotateTunnelAccessToken: revokes the current token of each side in `sides`, issues new
    /// ones, and disconnects the clients that came in with the old ones.
    public func rotate(_ tunnelId: String, sides: [Side], destinationConfig: DestinationConfig?,
                       now: Double) throws(ServiceError) -> Rotated {
        guard var record = tunnels[tunnelId] else { throw notFound(tunnelId) }
        // The model allows only ResourceNotFoundException here; a closed tunnel's tokens can
        // never be used again, so it is reported as not found for rotation.
        guard record.status == .open else { throw .notFound("Tunnel \(tunnelId) is closed; its access tokens cannot be rotated.") }
        var issued: [Side: String] = [:]
        for side in sides {
            if let old = currentTokens[tunnelId]?[side] { tokens[old]?.revoked = true }
            issued[side] = issueToken(tunnelId: tunnelId, side: side)
        }
        if let destinationConfig { record.destinationConfig = destinationConfig }
        record.lastUpdatedAt = now
        tunnels[tunnelId] = record
        onChange?()
        let effects: [ServiceEffect] = [.disconnect(tunnelId: tunnelId, sides: sides,
                                                    code: DataPlaneClose.tokenRotated.code,
                                                    reason: DataPlaneClose.tokenRotated.reason)]
        return Rotated(tunnelArn: record.tunnelArn, tokens: issued, effects: effects)
    }

    /// CloseTunnel. Closing a closed tunnel is not an error (the call may be retried); `delete`
    /// also forgets it, tokens included, so that later calls say it was not found.
    public func close(_ tunnelId: String, delete: Bool, now: Double) throws(ServiceError) -> [ServiceEffect] {
        guard var record = tunnels[tunnelId] else { throw notFound(tunnelId) }
        var effects: [ServiceEffect] = []
        if record.status == .open {
            record.status = .closed
            record.closedBy = .request
            record.lastUpdatedAt = now
            tunnels[tunnelId] = record
            effects = [.disconnect(tunnelId: tunnelId, sides: Side.allCases, code: DataPlaneClose.tunnelClosed.code,
                                   reason: DataPlaneClose.tunnelClosed.reason),
                       .forget(tunnelId: tunnelId)]
        }
        if delete {
            tunnels[tunnelId] = nil
            currentTokens[tunnelId] = nil
            tokens = tokens.filter { $0.value.tunnelId != tunnelId }
            if effects.isEmpty { effects = [.forget(tunnelId: tunnelId)] }
        }
        onChange?()
        return effects
    }

    private func tunnelId(forArn arn: String) throws(ServiceError) -> String {
        for record in tunnels.values where record.tunnelArn == arn { return record.tunnelId }
        throw .notFound("Resource \(arn) not found.")
    }

    public func tags(resourceArn: String) throws(ServiceError) -> [Tag] {
        tunnels[try tunnelId(forArn: resourceArn)]!.tags
    }

    public func tag(resourceArn: String, tags newTags: [Tag], now: Double) throws(ServiceError) {
        let id = try tunnelId(forArn: resourceArn)
        tunnels[id]!.tags = mergeTags(tunnels[id]!.tags, newTags)
        tunnels[id]!.lastUpdatedAt = now
        onChange?()
    }

    public func untag(resourceArn: String, keys: [String], now: Double) throws(ServiceError) {
        let id = try tunnelId(forArn: resourceArn)
        tunnels[id]!.tags.removeAll { keys.contains($0.key) }
        tunnels[id]!.lastUpdatedAt = now
        onChange?()
    }

    /// Adds tags, a later value for a key replacing an earlier one, keeping first-seen order.
    private func mergeTags(_ existing: [Tag], _ added: [Tag]) -> [Tag] {
        var out = existing
        for tag in added {
            if let i = out.firstIndex(where: { $0.key == tag.key }) { out[i].value = tag.value } else { out.append(tag) }
        }
        return out
    }

    // MARK: Expiry

    /// The earliest moment an open tunnel expires, if any is open.
    public func nextDeadline() -> Double? {
        tunnels.values.filter { $0.status == .open }.map { $0.deadline(minuteSeconds: minuteSeconds) }.min()
    }

    /// Closes every open tunnel whose lifetime has run out by `now`.
    public func expireDue(now: Double) -> [ServiceEffect] {
        var effects: [ServiceEffect] = []
        for (id, record) in tunnels where record.status == .open && record.deadline(minuteSeconds: minuteSeconds) <= now {
            tunnels[id]!.status = .closed
            tunnels[id]!.closedBy = .expiry
            tunnels[id]!.lastUpdatedAt = now
            effects.append(.disconnect(tunnelId: id, sides: Side.allCases, code: DataPlaneClose.tunnelExpired.code,
                                       reason: DataPlaneClose.tunnelExpired.reason))
            effects.append(.forget(tunnelId: id))
        }
        if !effects.isEmpty { onChange?() }
        return effects
    }

    // MARK: Data plane

    public struct Admitted: Equatable {
        public var tunnelId: String
        public var side: Side
        public var services: [String]
        /// True when the token had been used before with the same client token: the new
        /// connection replaces the side's current one.
        public var reused: Bool
    }

    /// Decides whether a well-formed upgrade may attach, and consumes the token if so
    /// (single use, docs/PROTOCOL.md §10.1).
    public func admit(_ request: AdmissionRequest) -> Result<Admitted, Rejection> {
        guard var token = tokens[request.accessToken], let record = tunnels[token.tunnelId] else {
            return .failure(.unknownToken)
        }
        guard token.side == request.side else {
            return .failure(Rejection(400, "Invalid access token: The access token is for local-proxy-mode=\(token.side), "
                                        + "not \(request.side)."))
        }
        guard record.status == .open else {
            return .failure(record.closedBy == .expiry ? .tunnelExpired : .tunnelClosed)
        }
        guard !token.revoked else { return .failure(.revokedToken) }
        var reused = false
        switch token.use {
        case .unused:
            token.use = .used(clientToken: request.clientToken)
            tokens[request.accessToken] = token
            onChange?()
        case .used(clientToken: nil):
            return .failure(.tokenPreviouslyUsed)
        case .used(clientToken: let bound?):
            guard request.clientToken == bound else { return .failure(.clientTokenMismatch) }
            reused = true
        }
        return .success(Admitted(tunnelId: record.tunnelId, side: request.side, services: record.services, reused: reused))
    }

    /// Records a side's connection state for DescribeTunnel. Not persisted: after a restart no
    /// client is connected anyway.
    public func setConnected(_ tunnelId: String, side: Side, connected: Bool, now: Double) {
        guard var record = tunnels[tunnelId] else { return }
        record.setConnection(side, ConnectionState(connected: connected, lastUpdatedAt: now))
        tunnels[tunnelId] = record
    }

    // MARK: Persistence

    public struct Snapshot: Codable, Equatable {
        public var version: Int
        public var nextSequence: Int
        public var tunnels: [TunnelRecord]
        public var tokens: [String: AccessTokenRecord]
    }

    public func snapshot() -> Snapshot {
        Snapshot(version: 1, nextSequence: nextSequence, tunnels: tunnels.values.sorted { $0.sequence < $1.sequence },
                 tokens: tokens)
    }

    /// Replaces the state with a snapshot. Every side is marked disconnected as of `now`: no
    /// client survives a restart.
    public func restore(_ snapshot: Snapshot, now: Double) {
        tunnels = [:]
        for var record in snapshot.tunnels {
            for side in Side.allCases where record.connection(side).connected {
                record.setConnection(side, ConnectionState(connected: false, lastUpdatedAt: now))
            }
            tunnels[record.tunnelId] = record
        }
        tokens = snapshot.tokens.filter { tunnels[$0.value.tunnelId] != nil }
        currentTokens = [:]
        for (token, record) in tokens where !record.revoked { currentTokens[record.tunnelId, default: [:]][record.side] = token }
        nextSequence = max(snapshot.nextSequence, (snapshot.tunnels.map(\.sequence).max() ?? 0) + 1)
    }

    /// The current token of a side, for tests and diagnostics.
    public func currentToken(_ tunnelId: String, side: Side) -> String? { currentTokens[tunnelId]?[side] }
}

/// Close codes and reasons the data plane sends to clients for events outside the WebSocket
/// itself. The service documents none of them (docs/PROTOCOL.md §4); these are the emulator's choices.
public enum DataPlaneClose {
    public struct Frame: Equatable, Sendable {
        public var code: UInt16
        public var reason: String
    }

    /// CloseTunnel: a normal end of the tunnel.
    public static let tunnelClosed = Frame(code: WebSocketCloseCode.normal, reason: "tunnel closed")
    /// maxLifetimeTimeoutMinutes reached: also a normal end.
    public static let tunnelExpired = Frame(code: WebSocketCloseCode.normal, reason: "tunnel expired")
    /// RotateTunnelAccessToken revoked the token this connection used. 1008 (policy) rather than
    /// 1000, so that a client can tell "reconnect with the new token" from "the tunnel is over".
    public static let tokenRotated = Frame(code: WebSocketCloseCode.policyViolation, reason: "access token rotated")
    /// A newer connection with the same token and client token took this side's place.
    public static let replaced = Frame(code: WebSocketCloseCode.normal, reason: "replaced by a newer connection")
    /// The emulator is stopping (SIGTERM/SIGINT).
    public static let shuttingDown = Frame(code: WebSocketCloseCode.goingAway, reason: "service shutting down")
}
