/// A web proxy between the device and the tunnelling service, crossed with HTTP CONNECT
/// (RFC 9110 §9.3.6; PROTOCOL.md §2.3): the proxy URL from `https_proxy`, the `no_proxy` test,
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
    public init(url text: String) throws(WebProxyError) {
        var rest = Array(text.utf8)[...]
        while let f = rest.first, f == 0x20 || f == 0x09 { rest = rest.dropFirst() }
        while let l = rest.last, l == 0x20 || l == 0x09 { rest = rest.dropLast() }
        guard !rest.isEmpty else { throw .invalidURL("it is empty") }
        for b in rest where b <= 0x20 || b >= 0x7F {
            throw .invalidURL("it contains a space, a control character or a non-ASCII byte (percent-encode them in the user or password)")
        }
        if let s = find(rest, Array("://".utf8)) {
            switch lowerBytes(rest[..<s]) {
            case Array("http".utf8): break
            case Array("https".utf8):
                throw .invalidURL("https:// proxies (TLS to the proxy itself) are not supported; give the proxy's plain http:// address (the tunnel stays TLS end to end inside CONNECT)")
            default:
                throw .invalidURL("the scheme '\(String(decoding: rest[..<s], as: UTF8.self))' is not supported; only http:// proxies are")
            }
            rest = rest[(s + 3)...]
        }
        if let at = rest.lastIndex(of: 0x40) {
            let info = rest[..<at]
            let colon = info.firstIndex(of: 0x3A) ?? info.endIndex
            let user = try percentDecoded(info[..<colon])
            guard !user.isEmpty else { throw .invalidURL("the user name before '@' is empty") }
            guard !user.contains(0x3A) else { throw .invalidURL("the user name contains ':', which Basic authentication cannot carry") }
            credentials = user + [0x3A] + (colon < info.endIndex ? try percentDecoded(info[(colon + 1)...]) : [])
            rest = rest[(at + 1)...]
        } else {
            credentials = nil
        }
        if let slash = rest.firstIndex(of: 0x2F) {
            guard slash == rest.endIndex - 1 else { throw .invalidURL("it has a path after the host; a proxy URL ends at the port") }
            rest = rest.dropLast()
        }
        var portText: ArraySlice<UInt8>? = nil
        if rest.first == 0x5B {
            guard let close = rest.firstIndex(of: 0x5D) else { throw .invalidURL("'[' without ']' around an IPv6 address") }
            guard let address = IPAddress(text: rest[(rest.startIndex + 1)..<close]), address.family == .v6 else {
                throw .invalidURL("the part in brackets is not an IPv6 address")
            }
            host = lowerString(rest[(rest.startIndex + 1)..<close])
            let after = rest[(close + 1)...]
            if !after.isEmpty {
                guard after.first == 0x3A else { throw .invalidURL("only ':PORT' may follow ']'") }
                portText = after.dropFirst()
            }
        } else {
            let colons = rest.filter { $0 == 0x3A }.count
            guard colons <= 1 else { throw .invalidURL("an IPv6 address needs brackets, e.g. http://[2001:db8::1]:3128") }
            let colon = rest.firstIndex(of: 0x3A) ?? rest.endIndex
            let name = rest[..<colon]
            guard !name.isEmpty, name.count <= 253 else { throw .invalidURL("the host name is empty or longer than 253 characters") }
            for b in name where !(isAlphanumeric(b) || b == 0x2E || b == 0x2D || b == 0x5F) {
                throw .invalidURL("the host name may only contain letters, digits, '.', '-' and '_'")
            }
            host = lowerString(name)
            if colon < rest.endIndex { portText = rest[(colon + 1)...] }
        }
        if let portText {
            guard let n = parseDecimal(String(decoding: portText, as: UTF8.self), maxDigits: 5), n >= 1 && n <= 65535 else {
                throw .invalidURL("the port must be a number from 1 to 65535")
            }
            port = UInt16(n)
        } else {
            port = WebProxy.defaultPort
        }
    }

    /// The CONNECT request for the tunnel endpoint `host:port` (RFC 9110 §9.3.6), with Basic
    /// credentials (RFC 7617) when the URL had them. `host` must already be a valid host name
    /// or address (the configuration checks the endpoint); IPv6 goes in brackets.
    public func connectRequest(host targetHost: String, port targetPort: UInt16) -> [UInt8] {
        let target = authority(targetHost, targetPort)
        var text = "CONNECT \(target) HTTP/1.1\r\nHost: \(target)\r\n"
        if let credentials { text += "Proxy-Authorization: Basic \(HandshakeCrypto.base64Encode(credentials))\r\n" }
        return Array((text + "\r\n").utf8)
    }

    /// Whether the `no_proxy` list `list` says `host` is reached directly: comma-separated
    /// entries, each `*` (every host), an exact name or IP address, or a domain (with or without
    /// a leading `.` or `*.`) that also covers every name below it. Case-insensitive; entries
    /// with a port or a CIDR prefix match nothing.
    public static func bypasses(_ list: String, host: String) -> Bool {
        let target = lowerBytes(Array(host.utf8)[...])
        let targetAddress = IPAddress(text: target)
        for item in Array(list.utf8).split(separator: 0x2C) {
            var entry = lowerBytes(trimOWS(item))
            if entry == [0x2A] { return true }
            if entry.first == 0x2A { entry.removeFirst() }
            if entry.first == 0x2E { entry.removeFirst() }
            if entry.first == 0x5B && entry.last == 0x5D { entry = Array(entry.dropFirst().dropLast()) }
            if entry.isEmpty { continue }
            if let targetAddress {
                // Addresses compare as addresses (::1 is 0:0::1), never as a suffix of a name.
                if IPAddress(text: entry) == targetAddress { return true }
            } else if target == entry || (target.count > entry.count && target.suffix(entry.count).elementsEqual(entry)
                                          && target[target.count - entry.count - 1] == 0x2E) {
                return true
            }
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
        guard version == "HTTP/1.1" || version == "HTTP/1.0", code.utf8.count == 3, let status = parseDecimal(code), status >= 100 else {
            throw .malformedAnswer("not an HTTP/1.x status line: \"\(printable(version + " " + code + (reason.isEmpty ? "" : " " + reason)))\"")
        }
        return status / 100 == 2 ? .established(status: status) : .refused(status: status, reason: printable(reason))
    }
}

// MARK: Helpers

/// `host:port`, with an IPv6 address in brackets.
func authority(_ host: String, _ port: UInt16) -> String {
    host.utf8.contains(0x3A) ? "[\(host)]:\(port)" : "\(host):\(port)"
}

/// Peer-supplied text for a log line: at most 128 bytes, control bytes shown as '?'.
func printable(_ text: String) -> String {
    String(decoding: text.utf8.prefix(128).map { $0 < 0x20 || $0 == 0x7F ? 0x3F : $0 }, as: UTF8.self)
}

private func percentDecoded(_ bytes: ArraySlice<UInt8>) throws(WebProxyError) -> [UInt8] {
    var out: [UInt8] = []
    var i = bytes.startIndex
    while i < bytes.endIndex {
        guard bytes[i] == 0x25 else {
            out.append(bytes[i])
            i += 1
            continue
        }
        guard i + 2 < bytes.endIndex, let hi = hexValue(bytes[i + 1]), let lo = hexValue(bytes[i + 2]) else {
            throw .invalidURL("a '%' in the user or password is not followed by two hex digits")
        }
        guard hi | lo != 0 else { throw .invalidURL("the user or password contains %00, which cannot be sent") }
        out.append(UInt8(hi << 4 | lo))
        i += 3
    }
    return out
}

private func find(_ bytes: ArraySlice<UInt8>, _ needle: [UInt8]) -> Int? {
    guard bytes.count >= needle.count else { return nil }
    for i in bytes.startIndex...(bytes.endIndex - needle.count) where bytes[i..<(i + needle.count)].elementsEqual(needle) {
        return i
    }
    return nil
}

private func lowerBytes(_ bytes: ArraySlice<UInt8>) -> [UInt8] {
    bytes.map { $0 >= 0x41 && $0 <= 0x5A ? $0 + 0x20 : $0 }
}

private func lowerString(_ bytes: ArraySlice<UInt8>) -> String { String(decoding: lowerBytes(bytes), as: UTF8.self) }

private func isAlphanumeric(_ b: UInt8) -> Bool {
    (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A)
}
