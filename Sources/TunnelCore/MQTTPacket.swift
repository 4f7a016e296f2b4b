/// MQTT 3.1.1 control packets (OASIS standard, 29 October 2014), as far as a client that connects,
/// subscribes at QoS 0 or 1, publishes at QoS 0 or 1 and keeps the connection alive needs them:
/// the packet values, their encoder, and an incremental, bounded decoder. No I/O.
///
/// Both directions are decoded (what a broker sends and what a client sends), so that tests, the
/// fuzz target (Fuzz/Targets/mqtt-packet.swift) and the local service emulator can read back what
/// the encoder wrote.
///
/// Choices where the standard leaves room, all on the strict side:
/// - QoS 2 is not supported: PUBREC, PUBREL and PUBCOMP, a PUBLISH with QoS 2 and a subscription
///   asking for QoS 2 are refused with `MQTTError.qos2NotSupported`. The device subscribes at
///   QoS 1 at most, so a broker must never send them.
/// - A remaining length written with more bytes than it needs (`80 00` for 0) is refused
///   (§2.2.3 gives the one algorithm that writes it; every encoder seen writes the shortest form).
///   This keeps decoding and encoding exact inverses: a packet that decodes encodes to the same
///   bytes.
/// - Will messages are not supported: a CONNECT with the Will flag is refused.
/// - A CONNACK with "session present" set and a non-zero return code is refused (§3.2.2.2 says
///   the server must clear it); the error still names the return code and its reason.
/// - Text fields must be well-formed UTF-8 without U+0000 (§1.5.3); other control characters and
///   non-characters, which the standard only discourages, are accepted.
/// - A PUBLISH topic name must be non-empty and free of `+` and `#` (§3.3.2.1, §4.7.3); a topic
///   filter must use its wildcards as §4.7.1 says (`#` last and alone in its level, `+` alone in
///   its level).

/// The packet types of §2.2.1, named as the standard names them.
public enum MQTTPacketType: UInt8, Equatable, Sendable, CustomStringConvertible {
    case connect = 1, connack, publish, puback, pubrec, pubrel, pubcomp
    case subscribe, suback, unsubscribe, unsuback, pingreq, pingresp, disconnect

    public var description: String {
        switch self {
        case .connect: return "CONNECT"
        case .connack: return "CONNACK"
        case .publish: return "PUBLISH"
        case .puback: return "PUBACK"
        case .pubrec: return "PUBREC"
        case .pubrel: return "PUBREL"
        case .pubcomp: return "PUBCOMP"
        case .subscribe: return "SUBSCRIBE"
        case .suback: return "SUBACK"
        case .unsubscribe: return "UNSUBSCRIBE"
        case .unsuback: return "UNSUBACK"
        case .pingreq: return "PINGREQ"
        case .pingresp: return "PINGRESP"
        case .disconnect: return "DISCONNECT"
        }
    }

    /// The low four bits of the first byte that §2.2.2 requires: 0010 for PUBREL, SUBSCRIBE and
    /// UNSUBSCRIBE, 0000 for the others (PUBLISH carries its own flags and is not checked here).
    var requiredFlags: UInt8 {
        switch self {
        case .pubrel, .subscribe, .unsubscribe: return 0x2
        default: return 0
        }
    }

    /// The remaining length of packets whose size is fixed, nil for the others.
    var fixedRemainingLength: Int? {
        switch self {
        case .connack, .puback, .pubrec, .pubrel, .pubcomp, .unsuback: return 2
        case .pingreq, .pingresp, .disconnect: return 0
        default: return nil
        }
    }
}

/// A PUBLISH packet's content. `packetId` is present exactly when `qos` is 1.
public struct MQTTPublish: Equatable, Sendable {
    public var topic: String
    public var payload: [UInt8]
    public var qos: UInt8
    public var retain: Bool
    /// Set on a re-delivery of a QoS 1 message (§3.3.1.1); always false at QoS 0.
    public var duplicate: Bool
    public var packetId: UInt16?

    public init(topic: String, payload: [UInt8], qos: UInt8 = 0, retain: Bool = false, duplicate: Bool = false, packetId: UInt16? = nil) {
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.duplicate = duplicate
        self.packetId = packetId
    }

    /// Compares topics by their bytes: `String ==` would bring the Unicode tables into the device
    /// binary (ByteText.swift).
    public static func == (a: MQTTPublish, b: MQTTPublish) -> Bool {
        a.topic.bytesEqual(b.topic) && a.payload == b.payload && a.qos == b.qos && a.retain == b.retain
            && a.duplicate == b.duplicate && a.packetId == b.packetId
    }
}

/// One topic filter of a SUBSCRIBE and the maximum QoS asked for it (0 or 1).
public struct MQTTSubscription: Equatable, Sendable {
    public var topicFilter: String
    public var qos: UInt8

    public init(topicFilter: String, qos: UInt8) {
        self.topicFilter = topicFilter
        self.qos = qos
    }

    public static func == (a: MQTTSubscription, b: MQTTSubscription) -> Bool {
        a.topicFilter.bytesEqual(b.topicFilter) && a.qos == b.qos
    }
}

/// Why bytes are not an MQTT 3.1.1 packet this client accepts, or why a packet cannot be encoded.
/// Peer-supplied text (topics, protocol names) is shown printable and cut to 128 bytes.
public enum MQTTError: Error, Equatable, CustomStringConvertible {
    /// Packet type 0 or 15 in the first byte.
    case reservedPacketType(UInt8)
    /// The low four bits of the first byte are not those §2.2.2 requires for this type.
    case invalidFlags(MQTTPacketType, flags: UInt8, required: UInt8)
    /// Something that only QoS 2 uses (the text says what: a packet type, a PUBLISH, a subscription).
    case qos2NotSupported(String)
    /// A QoS value that does not exist (3 in a PUBLISH, or more than 2 given to the encoder).
    case invalidQoS(UInt8)
    /// The 4th byte of the remaining length has its continuation bit set.
    case remainingLengthTooLong
    /// The remaining length used more bytes than its value needs (value, bytes used).
    case nonMinimalRemainingLength(Int, bytes: Int)
    /// The encoder was asked for a packet whose remaining length exceeds 268,435,455.
    case remainingLengthOutOfRange(Int)
    /// The whole packet (fixed header included) is longer than the decoder's limit.
    case packetTooLarge(length: Int, limit: Int)
    /// A packet of fixed size has another remaining length.
    case wrongRemainingLength(MQTTPacketType, length: Int, required: Int)
    /// A field runs past the end of the packet.
    case truncated(MQTTPacketType, field: String)
    /// Bytes are left in the packet after its last field.
    case trailingBytes(MQTTPacketType, count: Int)
    /// A text or binary field longer than the 65,535 bytes its 2-byte length can say.
    case fieldTooLong(field: String, length: Int)
    case invalidUTF8(field: String)
    /// A text field contains U+0000 (§1.5.3 forbids it).
    case nullCharacter(field: String)
    case emptyTopicName
    case wildcardInTopicName(String)
    case invalidTopicFilter(String, reason: String)
    /// A packet identifier of 0 (§2.3.1 requires a non-zero one).
    case zeroPacketId(MQTTPacketType)
    /// A PUBLISH whose packet identifier does not go with its QoS (present exactly at QoS 1).
    case packetIdDoesNotMatchQoS(qos: UInt8, hasPacketId: Bool)
    /// The DUP flag on a QoS 0 PUBLISH (§3.3.1.1).
    case duplicateFlagWithQoS0
    /// A SUBSCRIBE, UNSUBSCRIBE or SUBACK with no topic filter or return code.
    case emptyList(MQTTPacketType)
    /// A CONNECT for another protocol or version (name as sent, level).
    case unsupportedProtocol(name: String, level: UInt8)
    case invalidConnectFlags(UInt8, reason: String)
    /// An empty client identifier with "clean session" off (§3.1.3.1).
    case emptyClientIdWithoutCleanSession
    /// CONNACK acknowledge flags with reserved bits set.
    case invalidConnackFlags(UInt8)
    case invalidConnackReturnCode(UInt8)
    case sessionPresentWithRefusal(returnCode: UInt8)
    case invalidSubackReturnCode(UInt8)
    /// The requested-QoS byte of a subscription with reserved bits set or QoS 3.
    case invalidSubscriptionOptions(UInt8)

    public var description: String {
        switch self {
        case .reservedPacketType(let type):
            return "MQTT packet type " + decimal(Int(type)) + " is reserved (first byte 0x" + hexDigits(UInt64(type) << 4) + "...): the peer does not speak MQTT 3.1.1, or the stream is out of step"
        case .invalidFlags(let type, let flags, let required):
            return "MQTT " + type.description + " has flags 0x" + hexDigits(UInt64(flags)) + " in its first byte where MQTT 3.1.1 requires 0x" + hexDigits(UInt64(required)) + " (the first byte must be 0x" + hexDigits(UInt64(type.rawValue << 4 | required)) + ")"
        case .qos2NotSupported(let what):
            return what + ": QoS 2 is not supported by this client, which subscribes and publishes at QoS 0 or 1 only"
        case .invalidQoS(let qos):
            return "MQTT QoS " + decimal(Int(qos)) + " does not exist (QoS is 0, 1 or 2; this client uses 0 and 1)"
        case .remainingLengthTooLong:
            return "MQTT remaining length runs past 4 bytes (the 4th byte has its continuation bit set): the stream is corrupt or not MQTT"
        case .nonMinimalRemainingLength(let value, let n):
            return "MQTT remaining length " + decimal(value) + " is written in " + decimal(n) + " bytes, more than it needs: refused, as a well-formed peer always writes the shortest form"
        case .remainingLengthOutOfRange(let value):
            return "MQTT packet would have a remaining length of " + decimal(value) + " bytes, more than the 268435455 the protocol can express"
        case .packetTooLarge(let length, let limit):
            return "MQTT packet of " + decimal(length) + " bytes exceeds this client's limit of " + decimal(limit) + " bytes (maximumPacketLength); a larger message cannot be received"
        case .wrongRemainingLength(let type, let length, let required):
            return "MQTT " + type.description + " has a remaining length of " + decimal(length) + " bytes; it must be " + decimal(required)
        case .truncated(let type, let field):
            return "MQTT " + type.description + " ends inside its " + field + ": the packet's fields do not fit its remaining length"
        case .trailingBytes(let type, let count):
            return "MQTT " + type.description + " has " + decimal(count) + " bytes after its last field: the fields must fill the remaining length exactly"
        case .fieldTooLong(let field, let length):
            return "MQTT " + field + " of " + decimal(length) + " bytes is longer than the 65535 bytes a field can hold"
        case .invalidUTF8(let field):
            return "MQTT " + field + " is not valid UTF-8"
        case .nullCharacter(let field):
            return "MQTT " + field + " contains the character U+0000, which MQTT forbids in text"
        case .emptyTopicName:
            return "MQTT PUBLISH has an empty topic name; a topic name has at least one character"
        case .wildcardInTopicName(let topic):
            return "MQTT PUBLISH topic name \"" + printable(topic) + "\" contains a wildcard ('+' or '#'), which only subscriptions may use"
        case .invalidTopicFilter(let filter, let reason):
            return "MQTT topic filter \"" + printable(filter) + "\" is invalid: " + reason
        case .zeroPacketId(let type):
            return "MQTT " + type.description + " has packet identifier 0; packet identifiers run from 1 to 65535"
        case .packetIdDoesNotMatchQoS(let qos, let has):
            return has ? ("MQTT PUBLISH at QoS " + decimal(Int(qos)) + " cannot carry a packet identifier (only QoS 1 and 2 do)")
                : ("MQTT PUBLISH at QoS " + decimal(Int(qos)) + " needs a packet identifier")
        case .duplicateFlagWithQoS0:
            return "MQTT PUBLISH at QoS 0 has the DUP flag set; MQTT 3.1.1 requires it clear at QoS 0"
        case .emptyList(let type):
            return type == .suback ? "MQTT SUBACK has no return code; it needs one per topic filter subscribed"
                : ("MQTT " + type.description + " has no topic filter; it needs at least one")
        case .unsupportedProtocol(let name, let level):
            return "MQTT CONNECT for protocol \"" + printable(name) + "\" level " + decimal(Int(level)) + "; only MQTT 3.1.1 (\"MQTT\" level 4) is supported"
        case .invalidConnectFlags(let flags, let reason):
            return "MQTT CONNECT flags 0x" + hexDigits(UInt64(flags)) + " are invalid: " + reason
        case .emptyClientIdWithoutCleanSession:
            return "MQTT CONNECT has an empty client identifier without clean session; give a client id, or set clean session"
        case .invalidConnackFlags(let flags):
            return "MQTT CONNACK acknowledge flags 0x" + hexDigits(UInt64(flags)) + " have reserved bits set (only bit 0, session present, may be)"
        case .invalidConnackReturnCode(let code):
            return "MQTT CONNACK return code " + decimal(Int(code)) + " is not defined by MQTT 3.1.1 (0 to 5)"
        case .sessionPresentWithRefusal(let code):
            return "MQTT CONNACK refuses the connection (return code " + decimal(Int(code)) + ": " + MQTTPacket.connackReason(code) + ") but has session present set, which MQTT 3.1.1 forbids"
        case .invalidSubackReturnCode(let code):
            return "MQTT SUBACK return code 0x" + hexDigits(UInt64(code)) + " is not defined (0x00, 0x01, 0x02 or 0x80)"
        case .invalidSubscriptionOptions(let byte):
            return "MQTT SUBSCRIBE requested-QoS byte 0x" + hexDigits(UInt64(byte)) + " is invalid (reserved bits set or QoS 3)"
        }
    }
}

/// One MQTT 3.1.1 control packet. PUBREC, PUBREL and PUBCOMP have no case: they belong to QoS 2,
/// which this client does not support.
public enum MQTTPacket: Equatable, Sendable {
    case connect(clientId: String, keepAliveSeconds: UInt16, cleanSession: Bool, username: String?, password: [UInt8]?)
    case connack(sessionPresent: Bool, returnCode: UInt8)
    case publish(MQTTPublish)
    case puback(packetId: UInt16)
    case subscribe(packetId: UInt16, filters: [MQTTSubscription])
    case suback(packetId: UInt16, returnCodes: [UInt8])
    case unsubscribe(packetId: UInt16, filters: [String])
    case unsuback(packetId: UInt16)
    case pingreq, pingresp, disconnect

    /// The largest remaining length the 4-byte variable length encoding can hold (§2.2.3).
    public static let maximumRemainingLength = 268_435_455

    /// The SUBACK return code of a refused subscription (§3.9.3).
    public static let subscriptionFailure: UInt8 = 0x80

    /// The text of a CONNACK return code (§3.2.2.3).
    public static func connackReason(_ code: UInt8) -> String {
        switch code {
        case 0: return "connection accepted"
        case 1: return "unacceptable protocol version"
        case 2: return "identifier rejected"
        case 3: return "server unavailable"
        case 4: return "bad user name or password"
        case 5: return "not authorized"
        default: return "reserved return code " + decimal(Int(code))
        }
    }

    public var packetType: MQTTPacketType {
        switch self {
        case .connect: return .connect
        case .connack: return .connack
        case .publish: return .publish
        case .puback: return .puback
        case .subscribe: return .subscribe
        case .suback: return .suback
        case .unsubscribe: return .unsubscribe
        case .unsuback: return .unsuback
        case .pingreq: return .pingreq
        case .pingresp: return .pingresp
        case .disconnect: return .disconnect
        }
    }

    /// The packet as bytes, after checking that it is one MQTT 3.1.1 allows and this client
    /// supports (QoS 0 or 1; texts of at most 65,535 bytes without U+0000 — a Swift `String` is
    /// always valid UTF-8; non-zero packet identifiers; a remaining length of at most 268,435,455).
    public func encoded() throws(MQTTError) -> [UInt8] {
        switch self {
        case .connect(let clientId, let keepAlive, let cleanSession, let username, let password):
            let id = try textBytes(clientId, field: "client identifier")
            if id.isEmpty && !cleanSession { throw .emptyClientIdWithoutCleanSession }
            var user: [UInt8]? = nil
            if let username { user = try textBytes(username, field: "user name") }
            if let password, password.count > 65_535 { throw .fieldTooLong(field: "password", length: password.count) }
            var flags: UInt8 = cleanSession ? 0x02 : 0
            if user != nil { flags |= 0x80 }
            if password != nil { flags |= 0x40 }
            if user == nil && password != nil { throw .invalidConnectFlags(flags, reason: "a password needs a user name (MQTT 3.1.1 §3.1.2.9)") }
            var remaining = 10 + 2 + id.count
            if let user { remaining += 2 + user.count }
            if let password { remaining += 2 + password.count }
            var w = try MQTTWriter(first: MQTTPacketType.connect.rawValue << 4, remainingLength: remaining)
            w.append([0x00, 0x04, 0x4D, 0x51, 0x54, 0x54, 0x04, flags])
            w.uint16(keepAlive)
            w.field(id)
            if let user { w.field(user) }
            if let password { w.field(password) }
            return w.bytes

        case .connack(let sessionPresent, let returnCode):
            guard returnCode <= 5 else { throw .invalidConnackReturnCode(returnCode) }
            if sessionPresent && returnCode != 0 { throw .sessionPresentWithRefusal(returnCode: returnCode) }
            return [0x20, 0x02, sessionPresent ? 1 : 0, returnCode]

        case .publish(let p):
            let topic = try topicNameBytes(p.topic)
            if p.qos == 2 { throw .qos2NotSupported("MQTT PUBLISH with QoS 2") }
            guard p.qos <= 1 else { throw .invalidQoS(p.qos) }
            if p.duplicate && p.qos == 0 { throw .duplicateFlagWithQoS0 }
            guard (p.packetId != nil) == (p.qos == 1) else { throw .packetIdDoesNotMatchQoS(qos: p.qos, hasPacketId: p.packetId != nil) }
            if p.packetId == 0 { throw .zeroPacketId(.publish) }
            let first = MQTTPacketType.publish.rawValue << 4 | (p.duplicate ? 0x08 : 0) | p.qos << 1 | (p.retain ? 0x01 : 0)
            var w = try MQTTWriter(first: first, remainingLength: 2 + topic.count + (p.packetId == nil ? 0 : 2) + p.payload.count)
            w.field(topic)
            if let id = p.packetId { w.uint16(id) }
            w.append(p.payload)
            return w.bytes

        case .puback(let id):
            return try acknowledgement(.puback, id)

        case .subscribe(let id, let filters):
            if id == 0 { throw .zeroPacketId(.subscribe) }
            if filters.isEmpty { throw .emptyList(.subscribe) }
            var encodedFilters: [[UInt8]] = []
            var remaining = 2
            for f in filters {
                let bytes = try topicFilterBytes(f.topicFilter)
                if f.qos == 2 { throw .qos2NotSupported("MQTT subscription to \"" + printable(f.topicFilter) + "\" with QoS 2") }
                guard f.qos <= 1 else { throw .invalidQoS(f.qos) }
                remaining += 2 + bytes.count + 1
                encodedFilters.append(bytes)
            }
            var w = try MQTTWriter(first: MQTTPacketType.subscribe.rawValue << 4 | 0x2, remainingLength: remaining)
            w.uint16(id)
            for i in 0..<filters.count {
                w.field(encodedFilters[i])
                w.append([filters[i].qos])
            }
            return w.bytes

        case .suback(let id, let codes):
            if id == 0 { throw .zeroPacketId(.suback) }
            if codes.isEmpty { throw .emptyList(.suback) }
            for c in codes where c > 2 && c != MQTTPacket.subscriptionFailure { throw .invalidSubackReturnCode(c) }
            var w = try MQTTWriter(first: MQTTPacketType.suback.rawValue << 4, remainingLength: 2 + codes.count)
            w.uint16(id)
            w.append(codes)
            return w.bytes

        case .unsubscribe(let id, let filters):
            if id == 0 { throw .zeroPacketId(.unsubscribe) }
            if filters.isEmpty { throw .emptyList(.unsubscribe) }
            var encodedFilters: [[UInt8]] = []
            var remaining = 2
            for f in filters {
                let bytes = try topicFilterBytes(f)
                remaining += 2 + bytes.count
                encodedFilters.append(bytes)
            }
            var w = try MQTTWriter(first: MQTTPacketType.unsubscribe.rawValue << 4 | 0x2, remainingLength: remaining)
            w.uint16(id)
            for bytes in encodedFilters { w.field(bytes) }
            return w.bytes

        case .unsuback(let id):
            return try acknowledgement(.unsuback, id)
        case .pingreq:
            return [0xC0, 0x00]
        case .pingresp:
            return [0xD0, 0x00]
        case .disconnect:
            return [0xE0, 0x00]
        }
    }

    private func acknowledgement(_ type: MQTTPacketType, _ id: UInt16) throws(MQTTError) -> [UInt8] {
        if id == 0 { throw .zeroPacketId(type) }
        return [type.rawValue << 4, 0x02, UInt8(truncatingIfNeeded: id >> 8), UInt8(truncatingIfNeeded: id)]
    }

    /// The remaining-length bytes of `value` (§2.2.3), shortest form. `value` must be in
    /// 0...268,435,455.
    public static func remainingLengthBytes(_ value: Int) throws(MQTTError) -> [UInt8] {
        guard value >= 0 && value <= maximumRemainingLength else { throw .remainingLengthOutOfRange(value) }
        var out: [UInt8] = []
        var v = value
        repeat {
            var b = UInt8(truncatingIfNeeded: v & 0x7F)
            v >>= 7
            if v > 0 { b |= 0x80 }
            out.append(b)
        } while v > 0
        return out
    }
}

/// The decimal digits of `value`. Texts here are joined with `+` rather than built by string
/// interpolation: in Embedded Swift every interpolation inlines its own buffer handling, and the
/// error texts of this file took about twice the code that way (x86_64, -Osize).
func decimal(_ value: Int) -> String { String(value) }

// MARK: Encoding helpers

/// Appends a packet's bytes to one array sized once: the fixed header first, then the fields.
private struct MQTTWriter {
    var bytes: [UInt8] = []

    init(first: UInt8, remainingLength: Int) throws(MQTTError) {
        let length = try MQTTPacket.remainingLengthBytes(remainingLength)
        bytes.reserveCapacity(1 + length.count + remainingLength)
        bytes.append(first)
        bytes.append(contentsOf: length)
    }

    mutating func append(_ b: [UInt8]) { bytes.append(contentsOf: b) }

    mutating func uint16(_ v: UInt16) {
        bytes.append(UInt8(truncatingIfNeeded: v >> 8))
        bytes.append(UInt8(truncatingIfNeeded: v))
    }

    /// A field with its 2-byte length (the caller has checked it fits).
    mutating func field(_ b: [UInt8]) {
        uint16(UInt16(truncatingIfNeeded: b.count))
        bytes.append(contentsOf: b)
    }
}

/// The UTF-8 bytes of a text field, checked for length and U+0000.
private func textBytes(_ text: String, field: String) throws(MQTTError) -> [UInt8] {
    let b = Array(text.utf8)
    if b.count > 65_535 { throw .fieldTooLong(field: field, length: b.count) }
    for c in b where c == 0 { throw .nullCharacter(field: field) }
    return b
}

private func topicNameBytes(_ topic: String) throws(MQTTError) -> [UInt8] {
    let b = try textBytes(topic, field: "topic name")
    try checkTopicName(b, topic)
    return b
}

private func topicFilterBytes(_ filter: String) throws(MQTTError) -> [UInt8] {
    let b = try textBytes(filter, field: "topic filter")
    try checkTopicFilter(b, filter)
    return b
}

/// §4.7.3 and §3.3.2.1: at least one character, no wildcard.
private func checkTopicName(_ b: [UInt8], _ text: String) throws(MQTTError) {
    if b.isEmpty { throw .emptyTopicName }
    for c in b where c == 0x2B || c == 0x23 { throw .wildcardInTopicName(text) }
}

/// §4.7.1: at least one character; `#` only as the last character, alone in its level; `+`
/// alone in its level.
private func checkTopicFilter(_ b: [UInt8], _ text: String) throws(MQTTError) {
    if b.isEmpty { throw .invalidTopicFilter(text, reason: "it is empty") }
    for i in 0..<b.count {
        let startsLevel = i == 0 || b[i - 1] == 0x2F
        let endsLevel = i == b.count - 1 || b[i + 1] == 0x2F
        if b[i] == 0x23 {
            guard i == b.count - 1 && startsLevel else {
                throw .invalidTopicFilter(text, reason: "'#' must be the last character and alone in its level (as in \"a/#\")")
            }
        } else if b[i] == 0x2B {
            guard startsLevel && endsLevel else {
                throw .invalidTopicFilter(text, reason: "'+' must be alone in its level (as in \"a/+/b\")")
            }
        }
    }
}

// MARK: Decoding

/// Reads the fields of one packet whose bytes are all present.
private struct MQTTFieldReader {
    let bytes: UnsafeRawBufferPointer
    let type: MQTTPacketType
    var at = 0

    init(_ bytes: UnsafeRawBufferPointer, _ type: MQTTPacketType) {
        self.bytes = bytes
        self.type = type
    }

    var remaining: Int { bytes.count - at }

    mutating func byte(_ field: String) throws(MQTTError) -> UInt8 {
        guard remaining >= 1 else { throw .truncated(type, field: field) }
        at += 1
        return bytes[at - 1]
    }

    mutating func uint16(_ field: String) throws(MQTTError) -> UInt16 {
        guard remaining >= 2 else { throw .truncated(type, field: field) }
        at += 2
        return UInt16(bytes[at - 2]) << 8 | UInt16(bytes[at - 1])
    }

    mutating func packetId() throws(MQTTError) -> UInt16 {
        let id = try uint16("packet identifier")
        if id == 0 { throw .zeroPacketId(type) }
        return id
    }

    /// A field with a 2-byte length, as a view.
    mutating func data(_ field: String) throws(MQTTError) -> UnsafeRawBufferPointer {
        let n = Int(try uint16(field + " length"))
        guard remaining >= n else { throw .truncated(type, field: field) }
        at += n
        return UnsafeRawBufferPointer(rebasing: bytes[(at - n)..<at])
    }

    /// A text field: valid UTF-8 without U+0000.
    mutating func text(_ field: String) throws(MQTTError) -> String {
        let view = try data(field)
        guard isValidUTF8(view) else { throw .invalidUTF8(field: field) }
        for c in view where c == 0 { throw .nullCharacter(field: field) }
        return String(decoding: view, as: UTF8.self)
    }

    mutating func rest() -> [UInt8] {
        let out = [UInt8](UnsafeRawBufferPointer(rebasing: bytes[at...]))
        at = bytes.count
        return out
    }

    func finish() throws(MQTTError) {
        if remaining > 0 { throw .trailingBytes(type, count: remaining) }
    }
}

/// Splits a byte stream into MQTT packets, for any cutting of the stream into pieces.
///
/// The fixed header is checked byte by byte as it arrives, so that a wrong first byte, a
/// remaining length over 4 bytes or a packet over the limit is refused before its body is
/// waited for or kept. A packet whose bytes are all in one input is decoded from the input
/// itself; only a packet that straddles inputs is gathered, in a buffer of at most
/// `maximumPacketLength` bytes that is released once the packet is decoded.
///
/// After an error the decoder stays failed: every later call consumes nothing and throws the
/// same error again (an MQTT stream cannot be resynchronised).
public struct MQTTPacketDecoder {
    /// The largest whole packet accepted, fixed header included.
    public let maximumPacketLength: Int

    private enum State {
        /// Reading the first byte (`filled` 0) or the remaining length (`filled` 1 to 4).
        case fixedHeader(type: MQTTPacketType, flags: UInt8, filled: Int, length: Int)
        /// Gathering a body of `length` bytes that did not arrive in one piece.
        case body(type: MQTTPacketType, flags: UInt8, length: Int)
        case failed(MQTTError)
    }

    /// Between packets: nothing read yet (the type is a placeholder until the first byte).
    private var state = State.fixedHeader(type: .connect, flags: 0, filled: 0, length: 0)
    private var gathered: [UInt8] = []

    public init(maximumPacketLength: Int) {
        self.maximumPacketLength = maximumPacketLength
    }

    /// Bytes of an incomplete packet's body copied from earlier inputs: at most
    /// `maximumPacketLength` less the packet's fixed header. The fixed header itself (at most
    /// 5 bytes) is read into the decoder's state as it arrives, never buffered.
    public var bufferedByteCount: Int { gathered.count }

    /// Whether an error was found; the decoder then only throws it again.
    public var isFailed: Bool {
        if case .failed = state { return true }
        return false
    }

    /// Consumes from `input` what it uses; returns a packet once one is whole, nil when it needs
    /// more bytes (all of `input` is then consumed). Works for any split of the stream (a packet
    /// split anywhere, several packets in one piece: call again while `input` is not empty).
    public mutating func next(_ input: inout UnsafeRawBufferPointer) throws(MQTTError) -> MQTTPacket? {
        while true {
            switch state {
            case .failed(let error):
                throw error

            case .fixedHeader(var type, var flags, let filled, var length):
                guard !input.isEmpty else { return nil }
                let b = input[0]
                input = UnsafeRawBufferPointer(rebasing: input[1...])
                if filled == 0 {
                    (type, flags) = try checkFirstByte(b)
                    state = .fixedHeader(type: type, flags: flags, filled: 1, length: 0)
                    continue
                }
                // Byte `filled` of the remaining length holds bits 7*(filled-1) and up.
                length |= Int(b & 0x7F) << (7 * (filled - 1))
                if b & 0x80 != 0 {
                    if filled == 4 { throw fail(.remainingLengthTooLong) }
                    state = .fixedHeader(type: type, flags: flags, filled: filled + 1, length: length)
                    continue
                }
                if filled > 1 && b == 0 { throw fail(.nonMinimalRemainingLength(length, bytes: filled)) }
                let headerLength = filled + 1
                if headerLength + length > maximumPacketLength {
                    throw fail(.packetTooLarge(length: headerLength + length, limit: maximumPacketLength))
                }
                if let required = type.fixedRemainingLength, length != required {
                    throw fail(.wrongRemainingLength(type, length: length, required: required))
                }
                if input.count >= length {
                    // The whole body is here: decode it where it lies.
                    let body = UnsafeRawBufferPointer(rebasing: input[0..<length])
                    input = UnsafeRawBufferPointer(rebasing: input[length...])
                    state = .fixedHeader(type: .connect, flags: 0, filled: 0, length: 0)
                    return try decodeBody(type, flags, body)
                }
                gathered.reserveCapacity(length)
                state = .body(type: type, flags: flags, length: length)

            case .body(let type, let flags, let length):
                guard !input.isEmpty else { return nil }
                let n = min(length - gathered.count, input.count)
                gathered.append(contentsOf: UnsafeRawBufferPointer(rebasing: input[0..<n]))
                input = UnsafeRawBufferPointer(rebasing: input[n...])
                guard gathered.count == length else { return nil }
                let body = gathered
                gathered = []
                state = .fixedHeader(type: .connect, flags: 0, filled: 0, length: 0)
                var problem: MQTTError? = nil
                let packet = body.withUnsafeBytes { view -> MQTTPacket? in
                    do throws(MQTTError) {
                        return try MQTTPacketDecoder.parse(type, flags, view)
                    } catch {
                        problem = error
                        return nil
                    }
                }
                guard let packet else { throw fail(problem!) }
                return packet
            }
        }
    }

    private mutating func fail(_ error: MQTTError) -> MQTTError {
        state = .failed(error)
        gathered = []
        return error
    }

    /// Checks the type and flags of a first byte (§2.2), refusing QoS 2 and malformed flags at once.
    private mutating func checkFirstByte(_ b: UInt8) throws(MQTTError) -> (MQTTPacketType, UInt8) {
        let flags = b & 0x0F
        guard let type = MQTTPacketType(rawValue: b >> 4) else { throw fail(.reservedPacketType(b >> 4)) }
        if type == .publish {
            let qos = (flags >> 1) & 0x3
            if qos == 3 { throw fail(.invalidQoS(3)) }
            if qos == 2 { throw fail(.qos2NotSupported("MQTT PUBLISH with QoS 2")) }
            if qos == 0 && flags & 0x08 != 0 { throw fail(.duplicateFlagWithQoS0) }
            return (type, flags)
        }
        if flags != type.requiredFlags { throw fail(.invalidFlags(type, flags: flags, required: type.requiredFlags)) }
        switch type {
        case .pubrec, .pubrel, .pubcomp: throw fail(.qos2NotSupported("MQTT " + type.description + " packet"))
        default: return (type, flags)
        }
    }

    private mutating func decodeBody(_ type: MQTTPacketType, _ flags: UInt8, _ body: UnsafeRawBufferPointer) throws(MQTTError) -> MQTTPacket {
        do throws(MQTTError) {
            return try MQTTPacketDecoder.parse(type, flags, body)
        } catch {
            throw fail(error)
        }
    }

    /// The fields of a packet whose fixed header has been checked.
    private static func parse(_ type: MQTTPacketType, _ flags: UInt8, _ body: UnsafeRawBufferPointer) throws(MQTTError) -> MQTTPacket {
        var r = MQTTFieldReader(body, type)
        let packet: MQTTPacket
        switch type {
        case .connect:
            let name = try r.data("protocol name")
            let level = try r.byte("protocol level")
            let isMQTT = name.count == 4 && name[0] == 0x4D && name[1] == 0x51 && name[2] == 0x54 && name[3] == 0x54
            guard isMQTT && level == 4 else {
                throw .unsupportedProtocol(name: String(decoding: name, as: UTF8.self), level: level)
            }
            let connectFlags = try r.byte("connect flags")
            if connectFlags & 0x01 != 0 { throw .invalidConnectFlags(connectFlags, reason: "the reserved bit 0 is set") }
            if connectFlags & 0x04 != 0 { throw .invalidConnectFlags(connectFlags, reason: "a will message is not supported by this client") }
            if connectFlags & 0x38 != 0 { throw .invalidConnectFlags(connectFlags, reason: "will QoS or will retain is set without the will flag") }
            if connectFlags & 0xC0 == 0x40 { throw .invalidConnectFlags(connectFlags, reason: "a password needs a user name (MQTT 3.1.1 §3.1.2.9)") }
            let keepAlive = try r.uint16("keep alive")
            let clientId = try r.text("client identifier")
            let cleanSession = connectFlags & 0x02 != 0
            if clientId.utf8.isEmpty && !cleanSession { throw .emptyClientIdWithoutCleanSession }
            let username = connectFlags & 0x80 != 0 ? try r.text("user name") : nil
            let password = connectFlags & 0x40 != 0 ? [UInt8](try r.data("password")) : nil
            packet = .connect(clientId: clientId, keepAliveSeconds: keepAlive, cleanSession: cleanSession, username: username, password: password)

        case .connack:
            let ackFlags = try r.byte("acknowledge flags")
            let code = try r.byte("return code")
            if ackFlags & 0xFE != 0 { throw .invalidConnackFlags(ackFlags) }
            if code > 5 { throw .invalidConnackReturnCode(code) }
            if ackFlags == 1 && code != 0 { throw .sessionPresentWithRefusal(returnCode: code) }
            packet = .connack(sessionPresent: ackFlags == 1, returnCode: code)

        case .publish:
            let topic = try r.text("topic name")
            let bytes = Array(topic.utf8)
            try checkTopicName(bytes, topic)
            let qos = (flags >> 1) & 0x3
            let id: UInt16? = qos > 0 ? try r.packetId() : nil
            packet = .publish(MQTTPublish(topic: topic, payload: r.rest(), qos: qos, retain: flags & 0x01 != 0,
                                          duplicate: flags & 0x08 != 0, packetId: id))

        case .puback:
            packet = .puback(packetId: try r.packetId())

        case .subscribe:
            let id = try r.packetId()
            var filters: [MQTTSubscription] = []
            while r.remaining > 0 {
                let filter = try r.text("topic filter")
                try checkTopicFilter(Array(filter.utf8), filter)
                let options = try r.byte("requested QoS")
                if options & 0xFC != 0 || options == 3 { throw .invalidSubscriptionOptions(options) }
                if options == 2 { throw .qos2NotSupported("MQTT subscription to \"" + printable(filter) + "\" with QoS 2") }
                filters.append(MQTTSubscription(topicFilter: filter, qos: options))
            }
            if filters.isEmpty { throw .emptyList(.subscribe) }
            packet = .subscribe(packetId: id, filters: filters)

        case .suback:
            let id = try r.packetId()
            let codes = r.rest()
            if codes.isEmpty { throw .emptyList(.suback) }
            for c in codes where c > 2 && c != MQTTPacket.subscriptionFailure { throw .invalidSubackReturnCode(c) }
            packet = .suback(packetId: id, returnCodes: codes)

        case .unsubscribe:
            let id = try r.packetId()
            var filters: [String] = []
            while r.remaining > 0 {
                let filter = try r.text("topic filter")
                try checkTopicFilter(Array(filter.utf8), filter)
                filters.append(filter)
            }
            if filters.isEmpty { throw .emptyList(.unsubscribe) }
            packet = .unsubscribe(packetId: id, filters: filters)

        case .unsuback:
            packet = .unsuback(packetId: try r.packetId())
        case .pingreq:
            packet = .pingreq
        case .pingresp:
            packet = .pingresp
        case .disconnect:
            packet = .disconnect
        case .pubrec, .pubrel, .pubcomp:
            // Refused with the first byte (checkFirstByte); kept for an exhaustive switch.
            throw .qos2NotSupported("MQTT " + type.description + " packet")
        }
        try r.finish()
        return packet
    }
}
