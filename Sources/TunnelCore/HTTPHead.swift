/// The HTTP/1.1 message heads exchanged while opening the tunnel's WebSocket, and a bounded,
/// incremental reader for them. Only what the upgrade needs is parsed: a start line and header
/// fields, with no line folding and no bare CR or LF.

/// One header field. Names are kept as sent; compare them with `HTTPHeaders.name(_:equals:)`.
public struct HTTPHeader: Equatable {
    public var name: String
    public var value: String

    public init(_ name: String, _ value: String) {
        self.name = name
        self.value = value
    }
}

public struct HTTPHeaders {
    public var fields: [HTTPHeader] = []

    public init(_ fields: [HTTPHeader] = []) { self.fields = fields }

    /// All values of the fields called `name` (case-insensitive), in order.
    public func values(_ name: String) -> [String] {
        var out: [String] = []
        for field in fields where HTTPHeaders.name(field.name, equals: name) { out.append(field.value) }
        return out
    }

    /// The first value of `name`, if any.
    public func first(_ name: String) -> String? {
        for field in fields where HTTPHeaders.name(field.name, equals: name) { return field.value }
        return nil
    }

    /// Whether a comma-separated header (like `Connection`) lists `token` (case-insensitive).
    public func contains(_ name: String, token: String) -> Bool {
        for value in values(name) {
            for item in splitList(value) where item.equalsIgnoringASCIICase(token) { return true }
        }
        return false
    }

    /// ASCII case-insensitive comparison of header names (names are ASCII tokens).
    public static func name(_ a: String, equals b: String) -> Bool {
        a.equalsIgnoringASCIICase(b)
    }
}

/// A parsed start line and header block.
public struct HTTPHead {
    /// Request: method, target, version. Response: version, status code, reason phrase.
    public var startLine: (String, String, String)
    public var headers: HTTPHeaders
}

public enum HTTPHeadError: Error, Equatable, CustomStringConvertible {
    /// The head did not end within the allowed number of bytes.
    case tooLarge(limit: Int)
    /// A line that is not a valid start line or `name: value` field, with its byte offset.
    case malformedLine(offset: Int, what: String)

    public var description: String {
        switch self {
        case .tooLarge(let limit):
            return "HTTP head longer than \(limit) bytes without an end (no empty line after the headers)"
        case .malformedLine(let offset, let what):
            return "malformed HTTP head at byte \(offset): \(what)"
        }
    }
}

/// Gathers bytes up to the empty line that ends an HTTP head, never more than `limit` bytes,
/// then splits it into a start line and header fields.
public struct HTTPHeadReader {
    public let limit: Int
    private var bytes: [UInt8] = []

    public init(limit: Int) {
        self.limit = limit
    }

    /// Consumes bytes from `input` up to and including the end of the head. Returns the head once
    /// complete; the bytes after it stay in `input` (for a 101 they are the first WebSocket bytes).
    public mutating func read(_ input: inout UnsafeRawBufferPointer) throws(HTTPHeadError) -> HTTPHead? {
        var i = 0
        while i < input.count {
            let byte = input[i]
            i += 1
            bytes.append(byte)
            if byte == 0x0A && (bytes.count < 2 || bytes[bytes.count - 2] != 0x0D) {
                // Refuse at once: a peer using bare LF would otherwise leave us waiting for a
                // CRLF CRLF that never comes.
                input = UnsafeRawBufferPointer(rebasing: input[i...])
                throw HTTPHeadError.malformedLine(offset: bytes.count - 1, what: "line feed without carriage return")
            }
            if byte == 0x0A && endsWithBlankLine() {
                input = UnsafeRawBufferPointer(rebasing: input[i...])
                return try parse()
            }
            if bytes.count >= limit {
                input = UnsafeRawBufferPointer(rebasing: input[i...])
                throw HTTPHeadError.tooLarge(limit: limit)
            }
        }
        input = UnsafeRawBufferPointer(rebasing: input[i...])
        return nil
    }

    private func endsWithBlankLine() -> Bool {
        let n = bytes.count
        return n >= 4 && bytes[n - 4] == 0x0D && bytes[n - 3] == 0x0A && bytes[n - 2] == 0x0D
    }

    private func parse() throws(HTTPHeadError) -> HTTPHead {
        // Split into CRLF-terminated lines; a bare CR or LF anywhere is an error.
        var lines: [(start: Int, text: [UInt8])] = []
        var lineStart = 0
        var i = 0
        while i < bytes.count {
            let b = bytes[i]
            if b == 0x0D {
                guard i + 1 < bytes.count, bytes[i + 1] == 0x0A else {
                    throw HTTPHeadError.malformedLine(offset: i, what: "carriage return without line feed")
                }
                lines.append((lineStart, Array(bytes[lineStart..<i])))
                i += 2
                lineStart = i
                continue
            }
            if b == 0x0A { throw HTTPHeadError.malformedLine(offset: i, what: "line feed without carriage return") }
            if b == 0 { throw HTTPHeadError.malformedLine(offset: i, what: "NUL byte") }
            i += 1
        }
        guard let first = lines.first, !first.text.isEmpty else {
            throw HTTPHeadError.malformedLine(offset: 0, what: "empty start line")
        }
        let parts = first.text.split(separator: 0x20, maxSplits: 2, omittingEmptySubsequences: false)
        guard parts.count == 3 || (parts.count == 2) else {
            throw HTTPHeadError.malformedLine(offset: 0, what: "start line needs three space-separated parts")
        }
        let startLine = (
            String(decoding: parts[0], as: UTF8.self),
            String(decoding: parts[1], as: UTF8.self),
            parts.count == 3 ? String(decoding: parts[2], as: UTF8.self) : ""
        )
        var headers = HTTPHeaders()
        for line in lines.dropFirst() where !line.text.isEmpty {
            let text = line.text
            if text[0] == 0x20 || text[0] == 0x09 {
                throw HTTPHeadError.malformedLine(offset: line.start, what: "folded header line (obsolete line folding is not accepted)")
            }
            guard let colon = text.firstIndex(of: 0x3A), colon > 0 else {
                throw HTTPHeadError.malformedLine(offset: line.start, what: "header line without a name and a colon")
            }
            for (k, b) in text[0..<colon].enumerated() where !isTokenByte(b) {
                throw HTTPHeadError.malformedLine(offset: line.start + k, what: "invalid character in header name")
            }
            headers.fields.append(HTTPHeader(
                String(decoding: text[0..<colon], as: UTF8.self),
                String(decoding: trimOWS(text[(colon + 1)...]), as: UTF8.self)))
        }
        return HTTPHead(startLine: startLine, headers: headers)
    }
}

// MARK: Small ASCII helpers (no Foundation, no locale)

func asciiLowercased(_ s: String) -> String {
    var out: [UInt8] = []
    out.reserveCapacity(s.utf8.count)
    for b in s.utf8 { out.append(b >= 0x41 && b <= 0x5A ? b + 0x20 : b) }
    return String(decoding: out, as: UTF8.self)
}

func trimOWS(_ bytes: ArraySlice<UInt8>) -> ArraySlice<UInt8> {
    var s = bytes
    while let f = s.first, f == 0x20 || f == 0x09 { s = s.dropFirst() }
    while let l = s.last, l == 0x20 || l == 0x09 { s = s.dropLast() }
    return s
}

/// Splits a comma-separated header value into trimmed, non-empty items.
func splitList(_ value: String) -> [String] {
    var out: [String] = []
    for part in Array(value.utf8).split(separator: 0x2C) {
        let item = trimOWS(part)
        if !item.isEmpty { out.append(String(decoding: item, as: UTF8.self)) }
    }
    return out
}

/// RFC 9110 token characters.
func isTokenByte(_ b: UInt8) -> Bool {
    switch b {
    case 0x30...0x39, 0x41...0x5A, 0x61...0x7A: return true
    case 0x21, 0x23, 0x24, 0x25, 0x26, 0x27, 0x2A, 0x2B, 0x2D, 0x2E, 0x5E, 0x5F, 0x60, 0x7C, 0x7E: return true
    default: return false
    }
}

/// Parses a decimal number of at most `maxDigits` digits; nil for anything else, including a
/// number too large for Int (32 bits on armv7).
func parseDecimal(_ s: String, maxDigits: Int = 18) -> Int? {
    let bytes = Array(s.utf8)
    guard !bytes.isEmpty, bytes.count <= maxDigits else { return nil }
    var n = 0
    for b in bytes {
        guard b >= 0x30 && b <= 0x39 else { return nil }
        let (times10, o1) = n.multipliedReportingOverflow(by: 10)
        let (sum, o2) = times10.addingReportingOverflow(Int(b - 0x30))
        if o1 || o2 { return nil }
        n = sum
    }
    return n
}
