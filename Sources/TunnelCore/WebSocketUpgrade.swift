/// The opening handshake of the tunnel's WebSocket (docs/PROTOCOL.md §3): the client's request, the
/// client's incremental reading of the response, and the server side (for the emulator).

/// The role a proxy plays in a tunnel, as named in `local-proxy-mode`.
public enum TunnelMode: Equatable, CustomStringConvertible {
    case source
    case destination

    public var description: String { self == .source ? "source" : "destination" }

    public init?(_ text: String) {
        switch Bytewise(text) {
        case "source": self = .source
        case "destination": self = .destination
        default: return nil
        }
    }
}

public enum TunnelSubprotocol {
    public static let v1 = "aws.iot.securetunneling-1.0"
    public static let v2 = "aws.iot.securetunneling-2.0"
    public static let v3 = "aws.iot.securetunneling-3.0"
    public static let all = [v3, v2, v1]
}

public enum WebSocketUpgradeError: Error, Equatable, CustomStringConvertible {
    /// The request would exceed the service's 4 KB limit.
    case requestTooLarge(Int)
    /// A value that cannot go into a header (empty, too long, or with control characters).
    case invalidHeaderValue(name: String, problem: String)
    case head(HTTPHeadError)
    /// A 101 that does not complete a WebSocket upgrade correctly.
    case invalidSwitchingResponse(String)
    /// A response status line that is not `HTTP/1.x NNN reason`.
    case malformedStatusLine(String)
    /// The error body's framing is broken (bad chunk size or Content-Length).
    case malformedBody(String)
    /// A request the server side cannot accept as a WebSocket upgrade; `status` is what to answer.
    case invalidUpgradeRequest(status: Int, problem: String)

    public var description: String {
        switch self {
        case .requestTooLarge(let n):
            return "WebSocket upgrade request of \(n) bytes exceeds the service's limit of \(WebSocketUpgradeRequest.maximumLength) bytes (is the access token much longer than ~1 KB?)"
        case .invalidHeaderValue(let name, let problem):
            return "cannot send header \(name): \(problem)"
        case .head(let error):
            return error.description
        case .invalidSwitchingResponse(let problem):
            return "the service answered 101 but the upgrade is invalid: \(problem)"
        case .malformedStatusLine(let line):
            return "the service's response does not start with an HTTP/1.1 status line: \"\(line)\""
        case .malformedBody(let problem):
            return "the service's error response body is malformed: \(problem)"
        case .invalidUpgradeRequest(let status, let problem):
            return "invalid WebSocket upgrade request (answered \(status)): \(problem)"
        }
    }
}

// MARK: Client request

public struct WebSocketUpgradeRequest {
    /// The whole request must fit in 4 KB (docs/PROTOCOL.md §3.1).
    public static let maximumLength = 4096

    /// Value of the `Host` header (the endpoint host; the reference omits the port).
    public var host: String
    public var mode: TunnelMode
    public var accessToken: String
    public var clientToken: String?
    /// Offered subprotocols, most preferred first.
    public var protocols: [String]
    /// `Sec-WebSocket-Key`: base64 of 16 random bytes.
    public var key: String
    public var userAgent: String?

    /// `keyBytes` must be 16 random bytes (RFC 6455 §4.1).
    public init(host: String, mode: TunnelMode, accessToken: String, clientToken: String?,
                protocols: [String] = [TunnelSubprotocol.v3], keyBytes: [UInt8], userAgent: String? = nil) {
        precondition(keyBytes.count == 16, "Sec-WebSocket-Key must encode 16 bytes")
        self.host = host
        self.mode = mode
        self.accessToken = accessToken
        self.clientToken = clientToken
        self.protocols = protocols
        self.key = HandshakeCrypto.base64Encode(keyBytes)
        self.userAgent = userAgent
    }

    /// The request bytes. Refuses values that could break the header block (CR, LF, other
    /// control characters) and requests over 4 KB.
    public func encoded() throws(WebSocketUpgradeError) -> [UInt8] {
        try checkHeaderValue("Host", host)
        guard !accessToken.isEmpty else {
            throw .invalidHeaderValue(name: "access-token", problem: "the access token is empty")
        }
        try checkHeaderValue("access-token", accessToken)
        if let token = clientToken {
            guard isValidClientToken(token) else {
                throw .invalidHeaderValue(name: "client-token", problem: "must be 32 to 128 characters of A-Z, a-z, 0-9 and '-'")
            }
        }
        for p in protocols { try checkHeaderValue("Sec-WebSocket-Protocol", p) }
        if let agent = userAgent { try checkHeaderValue("User-Agent", agent) }

        var text = "GET /tunnel?local-proxy-mode=\(mode) HTTP/1.1\r\n"
        text += "Host: \(host)\r\n"
        text += "Upgrade: websocket\r\n"
        text += "Connection: Upgrade\r\n"
        text += "Sec-WebSocket-Version: 13\r\n"
        text += "Sec-WebSocket-Key: \(key)\r\n"
        text += "Sec-WebSocket-Protocol: \(joined(protocols))\r\n"
        text += "access-token: \(accessToken)\r\n"
        if let token = clientToken { text += "client-token: \(token)\r\n" }
        if let agent = userAgent { text += "User-Agent: \(agent)\r\n" }
        text += "\r\n"
        let bytes = Array(text.utf8)
        guard bytes.count <= WebSocketUpgradeRequest.maximumLength else { throw .requestTooLarge(bytes.count) }
        return bytes
    }
}

/// `client-token`: 32 to 128 characters of `[A-Za-z0-9-]` (docs/PROTOCOL.md §3.1).
public func isValidClientToken(_ token: String) -> Bool {
    let bytes = Array(token.utf8)
    guard bytes.count >= 32 && bytes.count <= 128 else { return false }
    for b in bytes {
        switch b {
        case 0x30...0x39, 0x41...0x5A, 0x61...0x7A, 0x2D: continue
        default: return false
        }
    }
    return true
}

private func checkHeaderValue(_ name: String, _ value: String) throws(WebSocketUpgradeError) {
    guard value.utf8.count <= WebSocketUpgradeRequest.maximumLength else {
        throw .invalidHeaderValue(name: name, problem: "\(value.utf8.count) bytes is longer than the whole request may be")
    }
    for b in value.utf8 where b < 0x20 || b == 0x7F {
        throw .invalidHeaderValue(name: name, problem: "contains a control character (code \(b))")
    }
}

private func joined(_ items: [String]) -> String {
    var out = ""
    for (i, item) in items.enumerated() {
        if i > 0 { out += ", " }
        out += item
    }
    return out
}

// MARK: Client: reading the response

/// What the service answered to the upgrade request.
public enum WebSocketUpgradeOutcome: Equatable {
    /// 101 with a valid accept key and one of the offered subprotocols.
    case accepted(subprotocol: String, channelId: String?)
    /// Any other status. `body` holds at most `maximumBodyKept` bytes of the body, for the log.
    case rejected(status: Int, reason: String, body: String, channelId: String?)
}

/// Reads the response to a `WebSocketUpgradeRequest` incrementally and checks it.
///
/// For a 101 it stops exactly at the end of the head: the bytes after it belong to the WebSocket
/// and are left in the caller's input. For other statuses it also reads the body (by
/// `Content-Length`, chunked, or up to the end of the stream, see `finish()`), keeping only its
/// first `maximumBodyKept` bytes so that a hostile body cannot grow memory.
public struct WebSocketUpgradeResponseReader {
    public static let defaultHeadLimit = 8192
    public static let defaultBodyKept = 2048

    private let expectedAccept: String
    private let offeredProtocols: [String]
    private let maximumBodyKept: Int
    private var head: HTTPHeadReader
    private var pending: (status: Int, reason: String, channelId: String?)? = nil
    private var body = BodyReader()

    public init(request: WebSocketUpgradeRequest, headLimit: Int = defaultHeadLimit, maximumBodyKept: Int = defaultBodyKept) {
        expectedAccept = HandshakeCrypto.webSocketAccept(forKey: request.key)
        offeredProtocols = request.protocols
        self.maximumBodyKept = maximumBodyKept
        head = HTTPHeadReader(limit: headLimit)
    }

    /// Feeds response bytes. Returns the outcome once known, or nil if more bytes are needed.
    public mutating func read(_ input: inout UnsafeRawBufferPointer) throws(WebSocketUpgradeError) -> WebSocketUpgradeOutcome? {
        if pending == nil {
            let parsed: HTTPHead?
            do { parsed = try head.read(&input) } catch { throw .head(error) }
            guard let response = parsed else { return nil }
            let (version, code, reason) = response.startLine
            guard version.bytesEqual("HTTP/1.1") || version.bytesEqual("HTTP/1.0"), code.utf8.count == 3, let status = parseDecimal(code) else {
                throw .malformedStatusLine(version + " " + code + " " + reason)
            }
            let channelId = response.headers.first("channel-id")
            if status == 101 {
                return try checkSwitching(response.headers, channelId: channelId)
            }
            pending = (status, reason, channelId)
            body = try BodyReader(headers: response.headers, keep: maximumBodyKept)
        }
        guard body.read(&input) else { return nil }
        if let problem = body.failure { throw .malformedBody(problem) }
        return rejectedOutcome()
    }

    /// Call when the stream ends before `read` returned an outcome. Returns the rejection with
    /// whatever body arrived, or throws if the response itself never arrived complete.
    public func finish() throws(WebSocketUpgradeError) -> WebSocketUpgradeOutcome {
        guard pending != nil else {
            throw .malformedStatusLine("connection closed before a complete response head arrived")
        }
        return rejectedOutcome()
    }

    private func rejectedOutcome() -> WebSocketUpgradeOutcome {
        let p = pending!
        return .rejected(status: p.status, reason: p.reason, body: String(decoding: body.kept, as: UTF8.self), channelId: p.channelId)
    }

    private func checkSwitching(_ headers: HTTPHeaders, channelId: String?) throws(WebSocketUpgradeError) -> WebSocketUpgradeOutcome {
        guard headers.contains("upgrade", token: "websocket") else {
            throw .invalidSwitchingResponse("the Upgrade header is not 'websocket'")
        }
        guard headers.contains("connection", token: "upgrade") else {
            throw .invalidSwitchingResponse("the Connection header does not list 'upgrade'")
        }
        guard let accept = headers.first("sec-websocket-accept") else {
            throw .invalidSwitchingResponse("Sec-WebSocket-Accept is missing")
        }
        guard accept.bytesEqual(expectedAccept) else {
            throw .invalidSwitchingResponse("Sec-WebSocket-Accept is '\(accept)', expected '\(expectedAccept)'")
        }
        let chosen = headers.values("sec-websocket-protocol")
        guard chosen.count == 1, let subprotocol = chosen.first else {
            throw .invalidSwitchingResponse(chosen.isEmpty
                ? "no Sec-WebSocket-Protocol was chosen (the tunnel needs one)"
                : "more than one Sec-WebSocket-Protocol header")
        }
        guard offeredProtocols.containsBytes(subprotocol) else {
            throw .invalidSwitchingResponse("the chosen subprotocol '\(subprotocol)' was not offered")
        }
        if let extensions = headers.first("sec-websocket-extensions") {
            throw .invalidSwitchingResponse("extensions '\(extensions)' were not requested")
        }
        return .accepted(subprotocol: subprotocol, channelId: channelId)
    }
}

/// Reads an error response body by Content-Length, chunked coding, or until the stream ends,
/// keeping a bounded prefix of it.
struct BodyReader {
    private enum Framing {
        case length(remaining: Int)
        case chunked
        case untilClose
        case done
    }
    private enum ChunkState {
        case size(digits: Int, value: Int, sawExtension: Bool)
        case sizeLF
        case data(remaining: Int)
        case dataCR
        case dataLF
        /// After the last (zero-size) chunk: trailer lines until an empty one.
        case trailer(lineLength: Int)
        case trailerLF(lineLength: Int)
    }

    private var framing = Framing.done
    private var chunk = ChunkState.size(digits: 0, value: 0, sawExtension: false)
    private var keep = 0
    private(set) var kept: [UInt8] = []
    private(set) var failure: String? = nil

    init() {}

    init(headers: HTTPHeaders, keep: Int) throws(WebSocketUpgradeError) {
        self.keep = keep
        if headers.contains("transfer-encoding", token: "chunked") {
            framing = .chunked
        } else if let value = headers.first("content-length") {
            guard let n = parseDecimal(value, maxDigits: 12) else { throw .malformedBody("Content-Length '\(value)' is not a number") }
            framing = n == 0 ? .done : .length(remaining: n)
        } else {
            framing = .untilClose
        }
    }

    private mutating func keepByte(_ b: UInt8) {
        if kept.count < keep { kept.append(b) }
    }

    /// Consumes body bytes; returns true when the body is complete or broken (then `failure`
    /// says why).
    mutating func read(_ input: inout UnsafeRawBufferPointer) -> Bool {
        switch framing {
        case .done:
            return true
        case .untilClose:
            for b in input { keepByte(b) }
            input = UnsafeRawBufferPointer(rebasing: input[input.count...])
            return false
        case .length(let remaining):
            let n = min(remaining, input.count)
            for b in input[0..<n] { keepByte(b) }
            input = UnsafeRawBufferPointer(rebasing: input[n...])
            framing = remaining == n ? .done : .length(remaining: remaining - n)
            return remaining == n
        case .chunked:
            var i = 0
            defer { input = UnsafeRawBufferPointer(rebasing: input[i...]) }
            while i < input.count {
                let b = input[i]
                i += 1
                if !step(b) { return true }
                if case .done = framing { return true }
            }
            return false
        }
    }

    /// Advances the chunked decoder by one byte; false on a framing error.
    private mutating func step(_ b: UInt8) -> Bool {
        switch chunk {
        case .size(let digits, let value, let sawExtension):
            if b == 0x0D {
                guard digits > 0 else { return fail("chunk size missing") }
                chunk = .sizeLF
                pendingChunkSize = value
            } else if sawExtension {
                break
            } else if b == 0x3B {
                chunk = .size(digits: digits, value: value, sawExtension: true)
            } else if let d = hexValue(b), digits < 7 { // 7 hex digits fit a 32-bit Int
                chunk = .size(digits: digits + 1, value: value << 4 | d, sawExtension: false)
            } else {
                return fail("invalid chunk size")
            }
        case .sizeLF:
            guard b == 0x0A else { return fail("chunk size line not ended by CRLF") }
            chunk = pendingChunkSize == 0 ? .trailer(lineLength: 0) : .data(remaining: pendingChunkSize)
        case .data(let remaining):
            keepByte(b)
            chunk = remaining == 1 ? .dataCR : .data(remaining: remaining - 1)
        case .dataCR:
            guard b == 0x0D else { return fail("chunk data not followed by CRLF") }
            chunk = .dataLF
        case .dataLF:
            guard b == 0x0A else { return fail("chunk data not followed by CRLF") }
            chunk = .size(digits: 0, value: 0, sawExtension: false)
        case .trailer(let length):
            chunk = b == 0x0D ? .trailerLF(lineLength: length) : .trailer(lineLength: length + 1)
        case .trailerLF(let length):
            guard b == 0x0A else { return fail("trailer line not ended by CRLF") }
            if length == 0 { framing = .done } else { chunk = .trailer(lineLength: 0) }
        }
        return true
    }

    private var pendingChunkSize = 0

    private mutating func fail(_ problem: String) -> Bool {
        failure = problem
        framing = .done
        return false
    }
}

func hexValue(_ b: UInt8) -> Int? {
    switch b {
    case 0x30...0x39: return Int(b - 0x30)
    case 0x41...0x46: return Int(b - 0x41 + 10)
    case 0x61...0x66: return Int(b - 0x61 + 10)
    default: return nil
    }
}

// MARK: Server side (the emulator)

/// A client's upgrade request, checked as a WebSocket handshake. Tunnel-specific admission
/// (tokens, mode, path) is the emulator's business; this only reads what the request says.
public struct WebSocketUpgradeRequestHead {
    public var method: String
    /// The request target as sent, e.g. `/tunnel?local-proxy-mode=source`.
    public var target: String
    public var headers: HTTPHeaders
    /// `Sec-WebSocket-Key` as sent (validated: base64 of 16 bytes).
    public var key: String
    /// Offered subprotocols, in the client's order.
    public var protocols: [String]

    /// The path part of the target (before `?`).
    public var path: String {
        let bytes = Array(target.utf8)
        guard let q = bytes.firstIndex(of: 0x3F) else { return target }
        return String(decoding: bytes[0..<q], as: UTF8.self)
    }

    /// Values of a query parameter (no percent-decoding: the tunnel's parameters are plain).
    public func queryValues(_ name: String) -> [String] {
        let bytes = Array(target.utf8)
        guard let q = bytes.firstIndex(of: 0x3F) else { return [] }
        var out: [String] = []
        for pair in bytes[(q + 1)...].split(separator: 0x26) {
            let parts = pair.split(separator: 0x3D, maxSplits: 1, omittingEmptySubsequences: false)
            if parts[0].elementsEqual(name.utf8) {
                out.append(parts.count > 1 ? String(decoding: parts[1], as: UTF8.self) : "")
            }
        }
        return out
    }

    /// Checks an HTTP head as a WebSocket upgrade request (RFC 6455 §4.2.1).
    public init(_ head: HTTPHead) throws(WebSocketUpgradeError) {
        let (method, target, version) = head.startLine
        guard method.bytesEqual("GET") else { throw .invalidUpgradeRequest(status: 405, problem: "method \(method) is not GET") }
        guard version.bytesEqual("HTTP/1.1") else {
            throw .invalidUpgradeRequest(status: 400, problem: "version '\(version)' is not HTTP/1.1")
        }
        let headers = head.headers
        guard headers.contains("upgrade", token: "websocket") else {
            throw .invalidUpgradeRequest(status: 400, problem: "the Upgrade header does not name websocket")
        }
        guard headers.contains("connection", token: "upgrade") else {
            throw .invalidUpgradeRequest(status: 400, problem: "the Connection header does not list upgrade")
        }
        let versions = headers.values("sec-websocket-version")
        guard versions.count == 1, versions[0].bytesEqual("13") else {
            throw .invalidUpgradeRequest(status: 426, problem: "Sec-WebSocket-Version must be 13")
        }
        let keys = headers.values("sec-websocket-key")
        guard keys.count == 1, let key = keys.first, HandshakeCrypto.base64Decode(key)?.count == 16 else {
            throw .invalidUpgradeRequest(status: 400, problem: "Sec-WebSocket-Key must be one base64 value of 16 bytes")
        }
        var protocols: [String] = []
        for value in headers.values("sec-websocket-protocol") { protocols.append(contentsOf: splitList(value)) }
        self.method = method
        self.target = target
        self.headers = headers
        self.key = key
        self.protocols = protocols
    }
}

public enum WebSocketUpgradeResponse {
    /// The 101 answer to `key`, choosing `subprotocol`, with extra headers (e.g. `channel-id`).
    public static func switching(key: String, subprotocol: String, extraHeaders: [HTTPHeader] = []) -> [UInt8] {
        var text = "HTTP/1.1 101 Switching Protocols\r\n"
        text += "Upgrade: websocket\r\n"
        text += "Connection: Upgrade\r\n"
        text += "Sec-WebSocket-Accept: \(HandshakeCrypto.webSocketAccept(forKey: key))\r\n"
        text += "Sec-WebSocket-Protocol: \(subprotocol)\r\n"
        for h in extraHeaders { text += "\(h.name): \(h.value)\r\n" }
        text += "\r\n"
        return Array(text.utf8)
    }

    /// An error answer with a plain-text body; the connection is to be closed after it. A 426
    /// names the version this server speaks, as RFC 6455 §4.2.2 requires.
    public static func error(status: Int, reason: String, body: String, extraHeaders: [HTTPHeader] = []) -> [UInt8] {
        var text = "HTTP/1.1 \(status) \(reason)\r\n"
        if status == 426 { text += "Sec-WebSocket-Version: 13\r\n" }
        text += "Content-Type: text/plain; charset=utf-8\r\n"
        text += "Content-Length: \(body.utf8.count)\r\n"
        text += "Connection: close\r\n"
        for h in extraHeaders { text += "\(h.name): \(h.value)\r\n" }
        text += "\r\n"
        text += body
        return Array(text.utf8)
    }

    /// The reason phrase for the statuses the handshake uses.
    public static func reasonPhrase(_ status: Int) -> String {
        switch status {
        case 101: return "Switching Protocols"
        case 400: return "Bad Request"
        case 401: return "Unauthorized"
        case 403: return "Forbidden"
        case 404: return "Not Found"
        case 405: return "Method Not Allowed"
        case 410: return "Gone"
        case 426: return "Upgrade Required"
        case 431: return "Request Header Fields Too Large"
        case 500: return "Internal Server Error"
        case 503: return "Service Unavailable"
        default: return "Error"
        }
    }
}
