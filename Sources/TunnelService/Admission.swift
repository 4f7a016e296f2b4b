import TunnelCore

/// The data plane's admission of a WebSocket upgrade (docs/PROTOCOL.md §3, §10.1, §14.1), split in two
/// pure steps so that every decision can be tested from request text alone:
/// `Admission.read` checks the request itself (size, path, mode, tokens, subprotocol), then
/// `TunnelRegistry.admit` checks the token against the tunnels.
///
/// Status codes for cases the service does not document are choices of this emulator; all of
/// them are the named values of `Rejection`, so the list is in one place.

/// A refused upgrade: the HTTP status and the plain-text body sent with it.
public struct Rejection: Error, Equatable, CustomStringConvertible, Sendable {
    public var status: Int
    public var body: String

    public init(_ status: Int, _ body: String) {
        self.status = status
        self.body = body
    }

    public var description: String { "\(status) \(body)" }

    // The wording of the first two follows the service's own messages (docs/PROTOCOL.md §3.3).
    public static let tokenPreviouslyUsed = Rejection(
        400, "Invalid access token: The access token was previously used and can not be used again.")
    public static let clientTokenMismatch = Rejection(
        400, "Invalid client token: The provided client token does not match the client token that was previously set.")
    /// A token the service never issued, or one of a deleted tunnel.
    public static let unknownToken = Rejection(401, "Invalid access token: The access token is not valid.")
    /// A token replaced by RotateTunnelAccessToken.
    public static let revokedToken = Rejection(
        401, "Invalid access token: The access token was revoked by a token rotation and can not be used.")
    public static let tunnelClosed = Rejection(410, "Tunnel closed: The tunnel was closed and no longer accepts connections.")
    public static let tunnelExpired = Rejection(
        410, "Tunnel expired: The tunnel reached its maximum lifetime and no longer accepts connections.")
    /// More connections than the emulator serves at once: retryable, like the service's 5xx.
    public static let busy = Rejection(503, "Service unavailable: Too many connections, try again later.")
}

/// What a well-formed upgrade request asks for.
public struct AdmissionRequest: Equatable, Sendable {
    public var side: Side
    public var accessToken: String
    public var clientToken: String?
    /// The subprotocol the 101 will carry: the highest version the client offered.
    public var subprotocol: String

    public init(side: Side, accessToken: String, clientToken: String?, subprotocol: String) {
        self.side = side
        self.accessToken = accessToken
        self.clientToken = clientToken
        self.subprotocol = subprotocol
    }
}

public enum Admission {
    /// The request head must fit in 4 KB (docs/PROTOCOL.md §3.1).
    public static let maximumHeadLength = 4096
    public static let cookieName = "awsiot-tunnel-token"

    /// Reads a complete request head (the bytes up to and including the blank line). For tests
    /// and tools: the connection feeds `HTTPHeadReader` incrementally and calls `check`.
    public static func read(_ bytes: [UInt8]) -> Result<(WebSocketUpgradeRequestHead, AdmissionRequest), Rejection> {
        var reader = HTTPHeadReader(limit: maximumHeadLength)
        let parsed: Result<HTTPHead?, HTTPHeadError> = bytes.withUnsafeBytes { raw in
            var input = raw
            do throws(HTTPHeadError) { return .success(try reader.read(&input)) } catch { return .failure(error) }
        }
        let head: HTTPHead?
        switch parsed {
        case .success(let h): head = h
        case .failure(let error): return .failure(rejection(for: error))
        }
        guard let head else { return .failure(Rejection(400, "Bad request: incomplete HTTP request head.")) }
        return check(head)
    }

    /// The answer to a head the reader could not accept.
    public static func rejection(for error: HTTPHeadError) -> Rejection {
        switch error {
        // 431 rather than 400: the request is well formed up to the point it grew too long,
        // and 431 tells a client author exactly which limit was hit.
        case .tooLarge:
            return Rejection(431, "Request header fields too large: The upgrade request must not exceed \(maximumHeadLength) bytes.")
        case .malformedLine(_, let what):
            return Rejection(400, "Bad request: malformed HTTP request head (\(what)).")
        }
    }

    /// Checks a parsed head as a tunnel upgrade, in the order a client author would fix things:
    /// WebSocket basics, path, mode, tokens, subprotocol.
    public static func check(_ head: HTTPHead) -> Result<(WebSocketUpgradeRequestHead, AdmissionRequest), Rejection> {
        let request: WebSocketUpgradeRequestHead
        do {
            request = try WebSocketUpgradeRequestHead(head)
        } catch {
            if case .invalidUpgradeRequest(let status, let problem) = error {
                return .failure(Rejection(status, "Bad request: \(problem)."))
            }
            return .failure(Rejection(400, "Bad request: \(error)."))
        }
        switch admissionRequest(request) {
        case .success(let admission): return .success((request, admission))
        case .failure(let rejection): return .failure(rejection)
        }
    }

    public static func admissionRequest(_ request: WebSocketUpgradeRequestHead) -> Result<AdmissionRequest, Rejection> {
        guard request.path == "/tunnel" else {
            return .failure(Rejection(400, "Bad request: Unknown path \(printable(request.path)); the tunnel endpoint is /tunnel."))
        }
        let modes = request.queryValues("local-proxy-mode")
        guard modes.count == 1, let mode = TunnelMode(modes[0]) else {
            return .failure(Rejection(400, "Bad request: The query parameter local-proxy-mode must be source or destination."))
        }
        var tokens: [String] = []
        for value in request.headers.values("access-token") where !value.isEmpty { tokens.append(value) }
        tokens.append(contentsOf: cookieValues(request.headers, name: cookieName))
        guard tokens.count == 1 else {
            return .failure(Rejection(400, tokens.isEmpty
                ? "Invalid access token: No access token was provided (header access-token or cookie \(cookieName))."
                : "Invalid access token: Exactly one access token must be provided, \(tokens.count) were found."))
        }
        // What a client can send in the header: visible ASCII without spaces. A cookie value with
        // a space (`token= abc`) would otherwise name a token no header could carry (found by
        // the upgrade-request fuzz target).
        for b in tokens[0].utf8 where b < 0x21 || b > 0x7E {
            return .failure(Rejection(400, "Invalid access token: An access token is printable ASCII without spaces."))
        }
        let clientTokens = request.headers.values("client-token")
        guard clientTokens.count <= 1 else {
            return .failure(Rejection(400, "Invalid client token: At most one client token may be provided."))
        }
        if let clientToken = clientTokens.first, !isValidClientToken(clientToken) {
            return .failure(Rejection(400, "Invalid client token: A client token must be 32 to 128 characters of A-Z, a-z, 0-9 and '-'."))
        }
        guard let subprotocol = chooseSubprotocol(request.protocols) else {
            return .failure(Rejection(400, "Bad request: Sec-WebSocket-Protocol must offer one of aws.iot.securetunneling-3.0, -2.0 or -1.0."))
        }
        return .success(AdmissionRequest(side: Side(mode), accessToken: tokens[0], clientToken: clientTokens.first,
                                         subprotocol: subprotocol))
    }

    /// The highest tunnel subprotocol among those offered, or nil.
    public static func chooseSubprotocol(_ offered: [String]) -> String? {
        for candidate in TunnelSubprotocol.all where offered.contains(candidate) { return candidate }
        return nil
    }

    /// Whether a client that negotiated `subprotocol` understands SERVICE_IDS (V2 and later).
    public static func receivesServiceIds(_ subprotocol: String) -> Bool { subprotocol != TunnelSubprotocol.v1 }

    /// Values of the cookie `name` across every Cookie header (`a=1; b=2` lists, RFC 6265).
    static func cookieValues(_ headers: HTTPHeaders, name: String) -> [String] {
        var out: [String] = []
        for header in headers.values("cookie") {
            for pair in header.split(separator: ";") {
                let trimmed = pair.trimmingSpaces()
                guard let equals = trimmed.firstIndex(of: "=") else { continue }
                if trimmed[..<equals] == name[...] {
                    var value = trimmed[trimmed.index(after: equals)...]
                    if value.count >= 2, value.first == "\"", value.last == "\"" { value = value.dropFirst().dropLast() }
                    if !value.isEmpty { out.append(String(value)) }
                }
            }
        }
        return out
    }

    /// A request path as it may appear in an error body: bounded, control characters removed.
    static func printable(_ text: String) -> String {
        var out = ""
        for scalar in text.unicodeScalars.prefix(200) where scalar.value >= 0x20 && scalar.value != 0x7F {
            out.unicodeScalars.append(scalar)
        }
        return out
    }
}

extension Substring {
    func trimmingSpaces() -> Substring {
        var s = self
        while let f = s.first, f == " " || f == "\t" { s = s.dropFirst() }
        while let l = s.last, l == " " || l == "\t" { s = s.dropLast() }
        return s
    }
}

/// Identifiers shaped like the service's `channel-id` (docs/PROTOCOL.md §3.2): five dash-separated
/// hexadecimal groups of 16, 8, 8, 16 and 8 digits. Here they are an instance id, the process
/// id, a connection counter, random bits and the time, which makes them unique and lets a log
/// reader see which emulator run and which connection a channel belongs to.
public struct ChannelIdGenerator {
    private let instance: UInt64
    private let processId: UInt32
    private var counter: UInt32 = 0

    public init(instance: UInt64, processId: UInt32) {
        self.instance = instance
        self.processId = processId
    }

    public mutating func next(random: UInt64, epochSeconds: UInt32) -> String {
        counter &+= 1
        return hex(instance, 16) + "-" + hex(UInt64(processId), 8) + "-" + hex(UInt64(counter), 8) + "-"
            + hex(random, 16) + "-" + hex(UInt64(epochSeconds), 8)
    }

    private func hex(_ value: UInt64, _ digits: Int) -> String {
        let text = String(value, radix: 16)
        return String(repeating: "0", count: max(0, digits - text.count)) + text
    }
}
