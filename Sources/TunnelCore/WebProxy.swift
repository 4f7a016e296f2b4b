/// A web proxy between the device and the tunnelling service, crossed with HTTP CONNECT
/// (RFC 9110 §9.3.6; docs/PROTOCOL.md §2.3): the proxy URL from `https_proxy`, the `no_proxy` test,
/// the CONNECT request, and a bounded reader of the proxy's answer. No I/O: the connection
/// sends `connectRequest` and feeds what the proxy answers to `WebProxyAnswerReader`.

/// Where the proxy is, and the credentials for it (user and password, percent-decoded).
public struct WebProxy: Equatable, CustomStringConvertible {
    /// The port a proxy URL without one means (squid's and the reference proxy's default).
    public static let defaultPort: UInt16 = 3128

    /// Lower-cased name or address; an IPv6 address without its brackets.
    public var host: String
    public var port: UInt16
    /// `user:password` as decoded bytes, nil without credentials. Never logged.
    public var credentials: [UInt8]?

    public init(host: String, port: UInt16, credentials: [UInt8]? = nil) {
        self.host = host
        self.port = port
        self.credentials = credentials
    }

    /// `http://host:port`: what logs show. It never carries the credentials.
    public var description: String { "http://" + address }
    /// `host:port`, an IPv6 host in brackets.
    public var address: String { authority(host, port) }

    /// Parses `[http://][user[:password]@]host[:port][/]`. IPv6 hosts go in brackets; the port
    /// defaults to 3128; user and password are percent-decoded (`%00` is refused; `+` stays a
    /// plus sign, as RFC 3986 has it). Error texts never quote the URL, which may hold a password.
    ///
    /// Written with byte indices and the helpers other parsers already use: each generic
    /// collection operation used here for the first time would add code to the armv7 binary.
    public init(url text: String) throws(WebProxyError) {
        let b = Array(text.utf8)
        var start = 0
        var end = b.count
        while start < end && (b[start] == 0x20 || b[start] == 0x09) { start += 1 }
        while end > start && (b[end - 1] == 0x20 || b[end - 1] == 0x09) { end -= 1 }
        guard start < end else { throw .invalidURL("it is empty") }
        for i in start..<end where b[i] <= 0x20 || b[i] >= 0x7F {
            throw .invalidURL("it contains a space, a control character or a non-ASCII byte (percent-encode them in the user or password)")
        }
        // The scheme, if any, ends at the first "://".
        var i = start
        while i + 2 < end && !(b[i] == 0x3A && b[i + 1] == 0x2F && b[i + 2] == 0x2F) { i += 1 }
        if i + 2 < end {
            let scheme = asciiLowercased(String(decoding: b[start..<i], as: UTF8.self))
            if scheme.bytesEqual("https") {
                throw .invalidURL("https:// proxies (TLS to the proxy itself) are not supported; give the proxy's plain http:// address (the tunnel stays TLS end to end inside CONNECT)")
            }
            guard scheme.bytesEqual("http") else { throw .invalidURL("the scheme '" + scheme + "' is not supported; only http:// proxies are") }
            start = i + 3
        }
        // User and password end at the last '@' (a host cannot contain one); the user at the first ':'.
        credentials = nil
        i = end
        while i > start && b[i - 1] != 0x40 { i -= 1 }
        if i > start {
            let at = i - 1
            var colon = start
            while colon < at && b[colon] != 0x3A { colon += 1 }
            let user = try percentDecoded(b, start, colon)
            guard !user.isEmpty else { throw .invalidURL("the user name before '@' is empty") }
            for c in user where c == 0x3A { throw .invalidURL("the user name contains ':', which Basic authentication cannot carry") }
            credentials = user + [0x3A] + (colon < at ? try percentDecoded(b, colon + 1, at) : [])
            start = at + 1
        }
        i = start
        while i < end && b[i] != 0x2F { i += 1 }
        if i < end {
            guard i == end - 1 else { throw .invalidURL("it has a path after the host; a proxy URL ends at the port") }
            end = i
        }
        var portStart = end
        if start < end && b[start] == 0x5B {
            var close = start
            while close < end && b[close] != 0x5D { close += 1 }
            guard close < end else { throw .invalidURL("'[' without ']' around an IPv6 address") }
            host = asciiLowercased(String(decoding: b[(start + 1)..<close], as: UTF8.self))
            guard let address = IPAddress(host), address.family == .v6 else {
                throw .invalidURL("the part in brackets is not an IPv6 address")
            }
            if close + 1 < end {
                guard b[close + 1] == 0x3A else { throw .invalidURL("only ':PORT' may follow ']'") }
                portStart = close + 2
            }
        } else {
            var colon = end
            for k in start..<end where b[k] == 0x3A {
                guard colon == end else { throw .invalidURL("an IPv6 address needs brackets, e.g. http://[2001:db8::1]:3128") }
                colon = k
            }
            guard colon > start, colon - start <= 253 else { throw .invalidURL("the host name is empty or longer than 253 characters") }
            for k in start..<colon {
                let c = b[k] | 0x20
                guard (c >= 0x61 && c <= 0x7A) || (b[k] >= 0x30 && b[k] <= 0x39) || b[k] == 0x2E || b[k] == 0x2D || b[k] == 0x5F else {
                    throw .invalidURL("the host name may only contain letters, digits, '.', '-' and '_'")
                }
            }
            host = asciiLowercased(String(decoding: b[start..<colon], as: UTF8.self))
            if colon < end { portStart = colon + 1 }
        }
        port = WebProxy.defaultPort
        if portStart < end || (portStart == end && end > 0 && b[end - 1] == 0x3A) {
            guard let n = parseDecimal(String(decoding: b[portStart..<end], as: UTF8.self), maxDigits: 5), n >= 1 && n <= 65535 else {
                throw .invalidURL("the port must be a number from 1 to 65535")
            }
            port = UInt16(n)
        }
    }

    /// The CONNECT request for the tunnel endpoint `host:port` (RFC 9110 §9.3.6), with Basic
    /// credentials (RFC 7617) when the URL had them. `host` must already be a valid host name
    /// or address (the configuration checks the endpoint); IPv6 goes in brackets.
    public func connectRequest(host targetHost: String, port targetPort: UInt16) -> [UInt8] {
        // Concatenation rather than interpolation: it compiles to less code (the armv7 budget).
        let target = authority(targetHost, targetPort)
        var text = "CONNECT " + target + " HTTP/1.1\r\nHost: " + target + "\r\n"
        if let credentials { text += "Proxy-Authorization: Basic " + HandshakeCrypto.base64Encode(credentials) + "\r\n" }
        return Array((text + "\r\n").utf8)
    }

    /// Whether the `no_proxy` list `list` says `host` is reached directly: comma-separated
    /// entries, each `*` (every host), an exact name or IP address, or a domain (with or without
    /// a leading `.` or `*.`) that also covers every name below it. Case-insensitive; entries
    /// with a port or a CIDR prefix match nothing.
    public static func bypasses(_ list: String, host: String) -> Bool {
        let target = Array(asciiLowercased(host).utf8)
        let targetAddress = IPAddress(host)
        for item in splitList(list) {
            var entry = Array(asciiLowercased(item).utf8)
            if entry == [0x2A] { return true }
            if entry.first == 0x2A { entry.removeFirst() }
            if entry.first == 0x2E { entry.removeFirst() }
            if entry.first == 0x5B && entry.last == 0x5D && entry.count > 2 { entry = Array(entry[1..<(entry.count - 1)]) }
            let n = target.count, m = entry.count
            if m == 0 { continue }
            if let targetAddress {
                // Addresses compare as addresses (::1 is 0:0::1), never as a suffix of a name.
                if IPAddress(text: entry) == targetAddress { return true }
                continue
            }
            // The whole name, or a suffix that starts after a dot.
            guard n == m || (n > m && target[n - m - 1] == 0x2E) else { continue }
            var same = true
            for k in 0..<m where target[n - m + k] != entry[k] { same = false }
            if same { return true }
        }
        return false
    }
}

/// What a web proxy answered to CONNECT.
public enum WebProxyAnswer: Equatable, Sendable {
    /// A 2xx: from here on the connection carries the bytes of the endpoint (TLS).
    case established(status: Int)
    /// Any other status, with its reason phrase (made printable and cut to 128 bytes).
    case refused(status: Int, reason: String)
}

public enum WebProxyError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The proxy URL cannot be used; the text says why.
    case invalidURL(String)
    /// The answer's head is not HTTP/1.x: too long, broken lines, or no status line.
    case malformedAnswer(String)

    public var description: String {
        switch self {
        case .invalidURL(let problem): return problem
        case .malformedAnswer(let problem): return problem
        }
    }
}

/// Reads a proxy's answer to CONNECT: the status line and the header fields up to the empty
/// line, never more than `limit` bytes. It stops exactly after the head, so the bytes after it
/// (with a 2xx, the service's first TLS bytes) stay in the caller's input.
public struct WebProxyAnswerReader {
    public static let defaultLimit = 8192
    private var head: HTTPHeadReader

    public init(limit: Int = defaultLimit) {
        head = HTTPHeadReader(limit: limit)
    }

    /// Returns the answer once the whole head is in, nil while more bytes are needed.
    public mutating func read(_ input: inout UnsafeRawBufferPointer) throws(WebProxyError) -> WebProxyAnswer? {
        let parsed: HTTPHead?
        do { parsed = try head.read(&input) } catch { throw .malformedAnswer(error.description) }
        guard let answer = parsed else { return nil }
        let (version, code, reason) = answer.startLine
        guard version.bytesEqual("HTTP/1.1") || version.bytesEqual("HTTP/1.0"), code.utf8.count == 3, let status = parseDecimal(code), status >= 100 else {
            throw .malformedAnswer("not an HTTP/1.x status line: \"\(printable(version + " " + code + (reason.isEmpty ? "" : " " + reason)))\"")
        }
        return status / 100 == 2 ? .established(status: status) : .refused(status: status, reason: printable(reason))
    }
}

// MARK: Helpers

/// `host:port`, with an IPv6 address in brackets.
func authority(_ host: String, _ port: UInt16) -> String {
    // Loops over Array(utf8), not over the String's views: those are not specialised elsewhere
    // in the device binary and would add their code (as would `contains` or `prefix` on them).
    var v6 = false
    for b in Array(host.utf8) where b == 0x3A { v6 = true }
    return (v6 ? "[" + host + "]" : host) + ":\(port)"
}

/// Peer-supplied text for a log line: at most 128 bytes, control bytes shown as '?'.
func printable(_ text: String) -> String {
    var out = Array(text.utf8)
    if out.count > 128 { out.removeLast(out.count - 128) }
    for i in 0..<out.count where out[i] < 0x20 || out[i] == 0x7F { out[i] = 0x3F }
    return String(decoding: out, as: UTF8.self)
}

/// Percent-decodes `b[from..<to]` (the user or the password of a proxy URL).
private func percentDecoded(_ b: [UInt8], _ from: Int, _ to: Int) throws(WebProxyError) -> [UInt8] {
    var out: [UInt8] = []
    var i = from
    while i < to {
        guard b[i] == 0x25 else {
            out.append(b[i])
            i += 1
            continue
        }
        guard i + 2 < to, let hi = hexValue(b[i + 1]), let lo = hexValue(b[i + 2]) else {
            throw .invalidURL("a '%' in the user or password is not followed by two hex digits")
        }
        guard hi | lo != 0 else { throw .invalidURL("the user or password contains %00, which cannot be sent") }
        out.append(UInt8(hi << 4 | lo))
        i += 3
    }
    return out
}
