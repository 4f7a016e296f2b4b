/// The notification AWS IoT Secure Tunneling publishes on the MQTT topic
/// `$aws/things/THING/tunnels/notify` when a tunnel is opened for the thing (or its destination
/// access token is rotated): a JSON object (RFC 8259) such as
///
///     {"clientAccessToken":"AQGAAXi…","clientMode":"destination","region":"us-east-1","services":["SSH"]}
///
/// `parse` reads it with a small JSON reader written for this payload alone: no I/O, no
/// allocation beyond the values it returns, every input bounded (`maximumLength` bytes, nesting
/// to `maximumDepth`), bytes compared as bytes (Sources/TunnelCore/ByteText.swift says why).
///
/// What is accepted:
/// - the payload is valid UTF-8 and one JSON object, with nothing but whitespace (space, tab,
///   line feed, carriage return) around it; a byte order mark is not accepted;
/// - the four keys below, each at most once, in any order; any other key with a value of any
///   type is skipped (its value must still be valid JSON, nested at most `maximumDepth` deep),
///   so that keys the service adds later do no harm;
/// - `clientAccessToken`: a non-empty string of visible ASCII (it goes into an HTTP header);
/// - `clientMode`: a string of 1 to 64 letters, digits, '-' and '_' (`destination` is what a
///   device expects; the agent decides what to do with any other);
/// - `region`: required and non-empty, 1 to 64 bytes of a-z, 0-9 and '-' as `-r/--region`
///   takes (`isValidRegionName`): the data-plane host name is built from it, and a notification
///   without one could only be served by guessing the endpoint;
/// - `services`: an array of 1 to 3 distinct service ids (`isServiceIdByte`, 1 to 128 bytes):
///   a tunnel has at most three services.
///
/// Strings may hold every JSON escape, `\uXXXX` included; a UTF-16 surrogate must be half of
/// a pair. No error text ever shows the token, only its length: the token is a secret.
public struct TunnelNotification: Equatable, Sendable, CustomStringConvertible {
    /// The destination's access token, for the `access-token` header of the WebSocket upgrade.
    public var clientAccessToken: String
    /// `destination` for the device; the agent decides what to do with other modes.
    public var clientMode: String
    /// The AWS region of the tunnel, e.g. `us-east-1`.
    public var region: String
    /// The tunnel's service ids, e.g. `["SSH"]` (1 to 3, distinct).
    public var services: [String]

    /// The longest payload `parse` reads (a notification is a few hundred bytes).
    public static let maximumLength = 16_384
    /// How deep arrays and objects may nest, the top-level object counting as 1.
    public static let maximumDepth = 16
    /// A tunnel has at most this many services.
    public static let maximumServices = 3
    /// The longest `clientMode` accepted.
    public static let maximumClientModeLength = 64

    public init(clientAccessToken: String, clientMode: String, region: String, services: [String]) {
        self.clientAccessToken = clientAccessToken
        self.clientMode = clientMode
        self.region = region
        self.services = services
    }

    /// Byte-wise, as everything in the device modules compares text.
    public static func == (a: TunnelNotification, b: TunnelNotification) -> Bool {
        guard a.clientAccessToken.bytesEqual(b.clientAccessToken), a.clientMode.bytesEqual(b.clientMode),
              a.region.bytesEqual(b.region), a.services.count == b.services.count else { return false }
        for i in 0..<a.services.count where !a.services[i].bytesEqual(b.services[i]) { return false }
        return true
    }

    /// For the log: everything but the token, of which only the length is shown.
    public var description: String {
        var list = ""
        for s in services { list += (list.isEmpty ? "" : ",") + s }
        return "clientMode " + clientMode + ", region " + region + ", services " + list
            + ", access token of " + String(clientAccessToken.utf8.count) + " bytes"
    }

    /// Parses the JSON payload of `$aws/things/THING/tunnels/notify`.
    public static func parse(_ payload: UnsafeRawBufferPointer) throws(TunnelNotificationError) -> TunnelNotification {
        guard payload.count <= maximumLength else { throw .tooLong(payload.count) }
        guard isValidUTF8(payload) else { throw .notUTF8 }
        var reader = NotificationReader(payload)
        // The string values by NotificationField.rawValue (token, mode, region), then services.
        var strings: [[UInt8]?] = [nil, nil, nil]
        var services: [[UInt8]]?

        reader.skipWhitespace()
        guard reader.peek() == 0x7B else {
            if reader.atEnd { throw .malformed(offset: reader.at, key: nil, problem: "the payload is empty") }
            guard let kind = reader.valueKind() else { throw reader.malformed("expected a JSON object") }
            throw .notAnObject(found: kind)
        }
        reader.at += 1
        reader.skipWhitespace()
        if reader.peek() == 0x7D {
            reader.at += 1
        } else {
            while true {
                guard reader.peek() == 0x22 else { throw reader.malformed("expected a key in double quotes") }
                let key = try reader.string(keep: true)
                reader.skipWhitespace()
                guard reader.peek() == 0x3A else { throw reader.malformed("expected ':' after a key") }
                reader.at += 1
                reader.skipWhitespace()
                if let field = NotificationField(key) {
                    reader.field = field
                    if field == .services {
                        guard services == nil else { throw .duplicateKey(field.name) }
                        services = try reader.serviceList()
                    } else {
                        guard strings[field.rawValue] == nil else { throw .duplicateKey(field.name) }
                        strings[field.rawValue] = try reader.stringValue()
                    }
                    reader.field = nil
                } else {
                    try reader.skipValue(depth: 2)
                }
                reader.skipWhitespace()
                if reader.peek() == 0x2C {
                    reader.at += 1
                    reader.skipWhitespace()
                    continue
                }
                guard reader.peek() == 0x7D else { throw reader.malformed("expected ',' or '}' after a value") }
                reader.at += 1
                break
            }
        }
        reader.skipWhitespace()
        guard reader.atEnd else { throw .trailingBytes(offset: reader.at) }

        for field in [NotificationField.clientAccessToken, .clientMode, .region] where strings[field.rawValue] == nil {
            throw .missingKey(field.name)
        }
        guard let services else { throw .missingKey(NotificationField.services.name) }
        let token = strings[0]!, mode = strings[1]!, region = strings[2]!

        let tokenName = NotificationField.clientAccessToken.name
        guard !token.isEmpty else { throw .invalidValue(key: tokenName, problem: "is empty") }
        for b in token where b < 0x21 || b > 0x7E {
            throw .invalidValue(key: tokenName, problem: "(" + String(token.count) + " bytes) holds a space, a control character or a non-ASCII character, which the access-token header cannot carry")
        }
        guard !mode.isEmpty, mode.count <= maximumClientModeLength else {
            throw .invalidValue(key: NotificationField.clientMode.name, problem: "must be 1 to " + String(maximumClientModeLength) + " bytes, not " + String(mode.count))
        }
        for b in mode where !(isASCIILetterOrDigit(b) || b == 0x2D || b == 0x5F) {
            throw .invalidValue(key: NotificationField.clientMode.name, problem: "may only contain letters, digits, '-' and '_'")
        }
        let regionText = utf8Text(region)
        guard isValidRegionName(regionText) else {
            throw .invalidValue(key: NotificationField.region.name, problem: region.isEmpty
                ? "is empty" : "'" + printableText(region) + "' is not a region name like us-east-1 (1 to 64 of a-z, 0-9 and '-')")
        }
        var ids: [String] = []
        for id in services {
            guard !id.isEmpty, id.count <= TunnelMessage.maximumServiceIdLength else {
                throw .invalidValue(key: NotificationField.services.name, problem: "has a service id of " + String(id.count) + " bytes; service ids are 1 to " + String(TunnelMessage.maximumServiceIdLength))
            }
            for b in id where !isServiceIdByte(b) {
                throw .invalidValue(key: NotificationField.services.name, problem: "has the service id '" + printableText(id) + "', but service ids may only contain letters, digits, '_', '-' and ':'")
            }
            let text = utf8Text(id)
            guard !ids.containsBytes(text) else {
                throw .invalidValue(key: NotificationField.services.name, problem: "lists the service id '" + text + "' twice")
            }
            ids.append(text)
        }
        guard !ids.isEmpty else { throw .invalidValue(key: NotificationField.services.name, problem: "is empty; a tunnel has 1 to " + String(maximumServices) + " services") }
        return TunnelNotification(clientAccessToken: utf8Text(token), clientMode: utf8Text(mode), region: regionText,
                                  services: ids)
    }
}

/// Why a notification payload was refused. No case ever carries the token or a part of it.
public enum TunnelNotificationError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The payload has more than `TunnelNotification.maximumLength` bytes (this many).
    case tooLong(Int)
    /// The payload is not valid UTF-8 (RFC 8259 §8.1).
    case notUTF8
    /// Not JSON at byte `offset` (counted from 0), inside the value of `key` when that is one of
    /// the four the notification defines.
    case malformed(offset: Int, key: String?, problem: String)
    /// Arrays and objects nested deeper than `TunnelNotification.maximumDepth`, at byte `offset`.
    case tooDeep(offset: Int)
    /// The payload is JSON, but a `found` (e.g. "an array") rather than an object.
    case notAnObject(found: String)
    /// Something other than whitespace follows the object, from byte `offset`.
    case trailingBytes(offset: Int)
    /// One of the four keys appears twice.
    case duplicateKey(String)
    /// One of the four keys is missing.
    case missingKey(String)
    /// A key holds a value of another type.
    case wrongType(key: String, expected: String, found: String)
    /// A key's value breaks a rule of the notification.
    case invalidValue(key: String, problem: String)

    public var description: String {
        switch self {
        case .tooLong(let n):
            return "the tunnel notification has " + String(n) + " bytes, more than the " + String(TunnelNotification.maximumLength) + " it may have"
        case .notUTF8:
            return "the tunnel notification is not valid UTF-8"
        case .malformed(let offset, let key, let problem):
            let place = key.map { " in the value of \"" + $0 + "\"" } ?? ""
            return "the tunnel notification is not valid JSON at byte " + String(offset) + place + ": " + problem
        case .tooDeep(let offset):
            return "the tunnel notification nests arrays and objects more than " + String(TunnelNotification.maximumDepth) + " deep (at byte " + String(offset) + ")"
        case .notAnObject(let found):
            return "the tunnel notification is " + found + ", not a JSON object"
        case .trailingBytes(let offset):
            return "the tunnel notification has bytes after its JSON object, from byte " + String(offset)
        case .duplicateKey(let key):
            return "the tunnel notification has \"" + key + "\" twice"
        case .missingKey(let key):
            return "the tunnel notification has no \"" + key + "\""
        case .wrongType(let key, let expected, let found):
            return "\"" + key + "\" of the tunnel notification must be " + expected + ", not " + found
        case .invalidValue(let key, let problem):
            return "\"" + key + "\" of the tunnel notification " + problem
        }
    }
}

// MARK: Names shared with the configuration

/// Whether `byte` may appear in a service id: letters, digits, '_', '-' and ':', the characters
/// the service allows (and `-d`/`-s` mappings take).
public func isServiceIdByte(_ byte: UInt8) -> Bool {
    isASCIILetterOrDigit(byte) || byte == 0x5F || byte == 0x2D || byte == 0x3A
}

/// Whether `region` is an AWS region name as the data plane's host name holds it
/// (`data.tunneling.iot.REGION.amazonaws.com`): 1 to 64 bytes of a-z, 0-9 and '-'.
public func isValidRegionName(_ region: String) -> Bool {
    let n = region.utf8.count
    guard n >= 1 && n <= 64 else { return false }
    for b in region.utf8 where !((b >= 0x61 && b <= 0x7A) || (b >= 0x30 && b <= 0x39) || b == 0x2D) { return false }
    return true
}

/// Text from bytes already known to be valid UTF-8 (one call site for the four values).
@inline(never)
private func utf8Text(_ bytes: [UInt8]) -> String { String(decoding: bytes, as: UTF8.self) }

private func isASCIILetterOrDigit(_ b: UInt8) -> Bool {
    (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A) || (b >= 0x30 && b <= 0x39)
}

/// A value for an error text: at most 64 bytes, anything but printable ASCII as '?'. Never
/// called with the token.
private func printableText(_ bytes: [UInt8]) -> String {
    var out: [UInt8] = []
    for b in bytes.prefix(64) { out.append(b >= 0x20 && b < 0x7F ? b : 0x3F) }
    if bytes.count > 64 { out += [0x2E, 0x2E, 0x2E] }
    return String(decoding: out, as: UTF8.self)
}

// MARK: The JSON reader

/// The keys the notification defines.
enum NotificationField: Int {
    case clientAccessToken, clientMode, region, services

    init?(_ key: [UInt8]) {
        if matches(key, "clientAccessToken") { self = .clientAccessToken }
        else if matches(key, "clientMode") { self = .clientMode }
        else if matches(key, "region") { self = .region }
        else if matches(key, "services") { self = .services }
        else { return nil }
    }

    var name: String {
        switch self {
        case .clientAccessToken: return "clientAccessToken"
        case .clientMode: return "clientMode"
        case .region: return "region"
        case .services: return "services"
        }
    }
}

private func matches(_ key: [UInt8], _ name: StaticString) -> Bool {
    guard key.count == name.utf8CodeUnitCount else { return false }
    let p = name.utf8Start
    for i in 0..<key.count where key[i] != p[i] { return false }
    return true
}

/// A cursor over the payload, reading JSON values (RFC 8259 §2 to §7). The payload is already
/// known to be valid UTF-8, so only the grammar is checked here. Internal (not private) so that
/// the tests and the fuzz target can decode strings with it directly.
struct NotificationReader {
    let bytes: UnsafeRawBufferPointer
    var at = 0
    /// The known key whose value is being read, for error texts.
    var field: NotificationField?

    init(_ bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

    var atEnd: Bool { at >= bytes.count }

    func peek() -> UInt8? { at < bytes.count ? bytes[at] : nil }

    func malformed(_ problem: String) -> TunnelNotificationError {
        .malformed(offset: at, key: field?.name, problem: atEnd ? "the payload ends early (" + problem + ")" : problem)
    }

    /// RFC 8259 §2: space, tab, line feed, carriage return.
    mutating func skipWhitespace() {
        while at < bytes.count {
            let b = bytes[at]
            guard b == 0x20 || b == 0x09 || b == 0x0A || b == 0x0D else { return }
            at += 1
        }
    }

    /// The JSON type of the value whose first byte is next ("a number"), nil if no value
    /// starts there.
    func valueKind() -> String? {
        guard let b = peek() else { return nil }
        switch b {
        case 0x22: return "a string"
        case 0x5B: return "an array"
        case 0x7B: return "an object"
        case 0x74, 0x66: return "a boolean"
        case 0x6E: return "null"
        case 0x2D, 0x30...0x39: return "a number"
        default: return nil
        }
    }

    /// The error for a value of another type than `expected`, once the value has been read
    /// through (so that broken JSON is reported as such, not as a wrong type).
    mutating func wrongType(_ expected: String, inArray: Bool = false) -> TunnelNotificationError {
        guard let kind = valueKind() else { return malformed("expected a value") }
        do { try skipValue(depth: inArray ? 3 : 2) } catch { return error }
        return .wrongType(key: field?.name ?? "", expected: expected, found: inArray ? "an array holding " + kind : kind)
    }

    /// A string value of one of the notification's keys.
    mutating func stringValue() throws(TunnelNotificationError) -> [UInt8] {
        guard peek() == 0x22 else { throw wrongType("a string") }
        return try string(keep: true)
    }

    /// `services`: an array of strings, stopped as soon as it lists more than a tunnel can have.
    mutating func serviceList() throws(TunnelNotificationError) -> [[UInt8]] {
        let name = NotificationField.services.name
        guard peek() == 0x5B else { throw wrongType("an array of strings") }
        at += 1
        var list: [[UInt8]] = []
        skipWhitespace()
        if peek() == 0x5D {
            at += 1
            return list
        }
        while true {
            skipWhitespace()
            guard peek() == 0x22 else { throw wrongType("an array of strings", inArray: true) }
            guard list.count < TunnelNotification.maximumServices else {
                throw .invalidValue(key: name, problem: "lists more than " + String(TunnelNotification.maximumServices) + " services; a tunnel has 1 to " + String(TunnelNotification.maximumServices))
            }
            list.append(try string(keep: true))
            skipWhitespace()
            if peek() == 0x2C {
                at += 1
                continue
            }
            guard peek() == 0x5D else { throw malformed("expected ',' or ']' after an array element") }
            at += 1
            return list
        }
    }

    /// Reads a string (the cursor on its opening quote) and returns its decoded UTF-8 bytes,
    /// or nothing when `keep` is false (a skipped value: checked, not stored).
    mutating func string(keep: Bool) throws(TunnelNotificationError) -> [UInt8] {
        at += 1
        var out: [UInt8] = []
        while true {
            guard at < bytes.count else { throw malformed("a string has no closing quote") }
            let b = bytes[at]
            if b == 0x22 {
                at += 1
                return out
            }
            if b < 0x20 {
                // RFC 8259 §7: control characters must be escaped.
                throw malformed("a string holds a raw control character (code " + String(b) + "); it must be escaped")
            }
            if b != 0x5C {
                if keep { out.append(b) }
                at += 1
                continue
            }
            guard at + 1 < bytes.count else { throw malformed("a string ends in the middle of an escape") }
            let escaped = bytes[at + 1]
            var literal: UInt8 = 0
            switch escaped {
            case 0x22, 0x5C, 0x2F: literal = escaped
            case 0x62: literal = 0x08
            case 0x66: literal = 0x0C
            case 0x6E: literal = 0x0A
            case 0x72: literal = 0x0D
            case 0x74: literal = 0x09
            case 0x75:
                let scalar = try unicodeEscape()
                if keep { appendUTF8(scalar, to: &out) }
                continue
            default:
                throw malformed("a backslash in a string is followed by a byte that is none of \" \\ / b f n r t u")
            }
            if keep { out.append(literal) }
            at += 2
        }
    }

    /// `\uXXXX`, or a surrogate pair `\uD8xx\uDCxx`, the cursor on the backslash; returns the
    /// Unicode scalar value and leaves the cursor after the escape.
    private mutating func unicodeEscape() throws(TunnelNotificationError) -> UInt32 {
        let first = try hex4(at + 2)
        if first >= 0xDC00 && first <= 0xDFFF {
            throw malformed("a \\u escape is the second half of a UTF-16 surrogate pair without the first")
        }
        at += 6
        guard first >= 0xD800 && first <= 0xDBFF else { return first }
        guard at + 1 < bytes.count, bytes[at] == 0x5C, bytes[at + 1] == 0x75 else {
            throw malformed("a \\u escape is the first half of a UTF-16 surrogate pair without the second")
        }
        let second = try hex4(at + 2)
        guard second >= 0xDC00 && second <= 0xDFFF else {
            throw malformed("a \\u escape is the first half of a UTF-16 surrogate pair without the second")
        }
        at += 6
        return 0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
    }

    /// Four hex digits at `start`.
    private func hex4(_ start: Int) throws(TunnelNotificationError) -> UInt32 {
        guard start + 4 <= bytes.count else { throw malformed("a string ends in the middle of a \\u escape") }
        var value: UInt32 = 0
        for i in start..<(start + 4) {
            let c = bytes[i]
            var digit: UInt8
            switch c {
            case 0x30...0x39: digit = c - 0x30
            case 0x41...0x46: digit = c - 0x41 + 10
            case 0x61...0x66: digit = c - 0x61 + 10
            default: throw malformed("a \\u escape needs four hex digits")
            }
            value = value << 4 | UInt32(digit)
        }
        return value
    }

    /// Skips any JSON value (the cursor on its first byte), checking its grammar. `depth` is the
    /// nesting level an array or object starting here would have.
    mutating func skipValue(depth: Int) throws(TunnelNotificationError) {
        guard let b = peek() else { throw malformed("expected a value") }
        switch b {
        case 0x22:
            _ = try string(keep: false)
        case 0x7B, 0x5B:
            guard depth <= TunnelNotification.maximumDepth else { throw .tooDeep(offset: at) }
            let isObject = b == 0x7B
            let close: UInt8 = isObject ? 0x7D : 0x5D
            at += 1
            skipWhitespace()
            if peek() == close {
                at += 1
                return
            }
            while true {
                skipWhitespace()
                if isObject {
                    guard peek() == 0x22 else { throw malformed("expected a key in double quotes") }
                    _ = try string(keep: false)
                    skipWhitespace()
                    guard peek() == 0x3A else { throw malformed("expected ':' after a key") }
                    at += 1
                    skipWhitespace()
                }
                try skipValue(depth: depth + 1)
                skipWhitespace()
                if peek() == 0x2C {
                    at += 1
                    continue
                }
                guard peek() == close else {
                    throw malformed(isObject ? "expected ',' or '}' after a value" : "expected ',' or ']' after an array element")
                }
                at += 1
                return
            }
        case 0x74: try literal("true")
        case 0x66: try literal("false")
        case 0x6E: try literal("null")
        case 0x2D, 0x30...0x39: try number()
        default: throw malformed("expected a value (a string, number, object, array, true, false or null)")
        }
    }

    private mutating func literal(_ word: StaticString) throws(TunnelNotificationError) {
        let n = word.utf8CodeUnitCount
        let p = word.utf8Start
        for i in 0..<n {
            guard at + i < bytes.count, bytes[at + i] == p[i] else { throw malformed("expected true, false or null") }
        }
        at += n
    }

    /// RFC 8259 §6: `-? (0 | [1-9][0-9]*) (.[0-9]+)? ([eE][+-]?[0-9]+)?`.
    private mutating func number() throws(TunnelNotificationError) {
        if peek() == 0x2D { at += 1 }
        guard let first = peek(), first >= 0x30 && first <= 0x39 else { throw malformed("a number needs a digit") }
        at += 1
        if first != 0x30 { skipDigits() }
        if peek() == 0x2E {
            at += 1
            guard skipDigits() > 0 else { throw malformed("a number needs a digit after '.'") }
        }
        if peek() == 0x65 || peek() == 0x45 {
            at += 1
            if peek() == 0x2B || peek() == 0x2D { at += 1 }
            guard skipDigits() > 0 else { throw malformed("a number needs a digit in its exponent") }
        }
    }

    @discardableResult
    private mutating func skipDigits() -> Int {
        let start = at
        while let b = peek(), b >= 0x30 && b <= 0x39 { at += 1 }
        return at - start
    }
}

/// Appends the UTF-8 form of a Unicode scalar value (never a surrogate: `unicodeEscape` pairs them).
private func appendUTF8(_ scalar: UInt32, to out: inout [UInt8]) {
    switch scalar {
    case 0..<0x80:
        out.append(UInt8(scalar))
    case 0x80..<0x800:
        out.append(UInt8(0xC0 | scalar >> 6))
        out.append(UInt8(0x80 | scalar & 0x3F))
    case 0x800..<0x10000:
        out.append(UInt8(0xE0 | scalar >> 12))
        out.append(UInt8(0x80 | scalar >> 6 & 0x3F))
        out.append(UInt8(0x80 | scalar & 0x3F))
    default:
        out.append(UInt8(0xF0 | scalar >> 18))
        out.append(UInt8(0x80 | scalar >> 12 & 0x3F))
        out.append(UInt8(0x80 | scalar >> 6 & 0x3F))
        out.append(UInt8(0x80 | scalar & 0x3F))
    }
}
