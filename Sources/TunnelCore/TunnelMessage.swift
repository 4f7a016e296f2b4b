/// The tunnel's one protobuf message (`com.amazonaws.iot.securedtunneling.Message`, docs/PROTOCOL.md §6).
///
/// Decoding follows proto3: fields in any order, the last of a repeated scalar wins, unknown fields
/// of every wire type are skipped, and a known field number arriving with another wire type is
/// treated as unknown (as the protobuf runtimes do). Encoding emits fields in ascending field
/// number and omits default values, so the bytes equal libprotobuf's.
///
/// `payload` is a *view*: after decoding it points into the input, so it stays valid only as long
/// as the input does. Nothing on the data path copies it.

/// The message type. Proto3 enums are open, so unknown values are kept as they are.
public struct MessageType: RawRepresentable, Equatable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: Int32
    public init(rawValue: Int32) { self.rawValue = rawValue }

    public static let unknown = MessageType(rawValue: 0)
    public static let data = MessageType(rawValue: 1)
    public static let streamStart = MessageType(rawValue: 2)
    public static let streamReset = MessageType(rawValue: 3)
    public static let sessionReset = MessageType(rawValue: 4)
    public static let serviceIds = MessageType(rawValue: 5)
    public static let connectionStart = MessageType(rawValue: 6)
    public static let connectionReset = MessageType(rawValue: 7)

    /// True for the types this implementation knows (1 to 7).
    public var isKnown: Bool { rawValue >= 1 && rawValue <= 7 }

    public var description: String {
        switch rawValue {
        case 0: return "UNKNOWN (type 0)"
        case 1: return "DATA"
        case 2: return "STREAM_START"
        case 3: return "STREAM_RESET"
        case 4: return "SESSION_RESET"
        case 5: return "SERVICE_IDS"
        case 6: return "CONNECTION_START"
        case 7: return "CONNECTION_RESET"
        default: return "type \(rawValue)"
        }
    }
}

public struct TunnelMessage {
    /// Largest DATA payload either side may send (63 KiB).
    public static let maximumPayloadLength = 64_512

    /// Field numbers of the schema.
    public enum Field {
        public static let type: UInt64 = 1
        public static let streamId: UInt64 = 2
        public static let ignorable: UInt64 = 3
        public static let payload: UInt64 = 4
        public static let serviceId: UInt64 = 5
        public static let availableServiceIds: UInt64 = 6
        public static let connectionId: UInt64 = 7
    }

    public var type: MessageType
    public var streamId: Int32
    public var ignorable: Bool
    /// A view of the payload bytes (see the type's documentation for its lifetime).
    public var payload: UnsafeRawBufferPointer
    /// UTF-8 bytes of the service id; empty means "absent" (a V1-format message).
    public var serviceId: [UInt8]
    /// UTF-8 bytes of each service id, for SERVICE_IDS.
    public var availableServiceIds: [[UInt8]]
    /// Zero means "absent" (a V1/V2-format message).
    public var connectionId: UInt32

    public init(
        type: MessageType,
        streamId: Int32 = 0,
        ignorable: Bool = false,
        payload: UnsafeRawBufferPointer = UnsafeRawBufferPointer(start: nil, count: 0),
        serviceId: [UInt8] = [],
        availableServiceIds: [[UInt8]] = [],
        connectionId: UInt32 = 0
    ) {
        self.type = type
        self.streamId = streamId
        self.ignorable = ignorable
        self.payload = payload
        self.serviceId = serviceId
        self.availableServiceIds = availableServiceIds
        self.connectionId = connectionId
    }

    /// Longest service id, in UTF-8 bytes, that either side accepts from the peer (the AWS API's
    /// limit; also what the proxy's in-place framing reserves room for behind each payload).
    public static let maximumServiceIdLength = 128
    /// Most service ids one SERVICE_IDS message may list (a tunnel has at most 3 services).
    public static let maximumServiceIdCount = 16

    /// The usable service ids of a SERVICE_IDS message: no empty or repeated entries, none longer
    /// than `maximumServiceIdLength`, at most `maximumServiceIdCount`. `refused` says, one line
    /// each, what was left out and why, for the log.
    public var checkedServiceIds: (ids: [String], refused: [String]) {
        var ids: [String] = []
        var refused: [String] = []
        for raw in availableServiceIds where !raw.isEmpty {
            guard raw.count <= TunnelMessage.maximumServiceIdLength else {
                refused.append("service id \(loggableServiceId(raw)) is longer than \(TunnelMessage.maximumServiceIdLength) bytes: refused, its streams will be reset")
                continue
            }
            let id = String(decoding: raw, as: UTF8.self)
            if ids.containsBytes(id) { continue }
            guard ids.count < TunnelMessage.maximumServiceIdCount else {
                refused.append("SERVICE_IDS lists more than \(TunnelMessage.maximumServiceIdCount) service ids: ignoring \(loggableServiceId(raw)) and the rest")
                break
            }
            ids.append(id)
        }
        return (ids, refused)
    }

    static func fieldName(_ field: UInt64) -> String {
        switch field {
        case Field.type: return "type"
        case Field.streamId: return "streamId"
        case Field.ignorable: return "ignorable"
        case Field.payload: return "payload"
        case Field.serviceId: return "serviceId"
        case Field.availableServiceIds: return "availableServiceIds"
        case Field.connectionId: return "connectionId"
        default: return "unknown field"
        }
    }

    // MARK: Decoding

    /// Decodes one message from exactly `bytes` (no length prefix).
    public static func decode(_ bytes: UnsafeRawBufferPointer) throws(ProtobufDecodingError) -> TunnelMessage {
        var message = TunnelMessage(type: .unknown)
        var reader = ProtobufReader(bytes)
        while !reader.isAtEnd {
            let (field, wireType) = try reader.readKey()
            let valueOffset = reader.offset
            switch (field, wireType) {
            case (Field.type, .varint):
                message.type = MessageType(rawValue: Int32(truncatingIfNeeded: try reader.readVarint(field: field)))
            case (Field.streamId, .varint):
                message.streamId = Int32(truncatingIfNeeded: try reader.readVarint(field: field))
            case (Field.ignorable, .varint):
                message.ignorable = try reader.readVarint(field: field) != 0
            case (Field.payload, .lengthDelimited):
                let view = try reader.readLengthDelimited(field: field)
                guard view.count <= maximumPayloadLength else {
                    throw ProtobufDecodingError(.payloadTooLarge(view.count), offset: valueOffset, field: field)
                }
                message.payload = view
            case (Field.serviceId, .lengthDelimited):
                message.serviceId = try readString(&reader, field: field)
            case (Field.availableServiceIds, .lengthDelimited):
                message.availableServiceIds.append(try readString(&reader, field: field))
            case (Field.connectionId, .varint):
                message.connectionId = UInt32(truncatingIfNeeded: try reader.readVarint(field: field))
            default:
                try reader.skip(field: field, wireType: wireType)
            }
        }
        return message
    }

    private static func readString(_ reader: inout ProtobufReader, field: UInt64) throws(ProtobufDecodingError) -> [UInt8] {
        let start = reader.offset
        let view = try reader.readLengthDelimited(field: field)
        guard isValidUTF8(view) else { throw ProtobufDecodingError(.invalidUTF8, offset: start, field: field) }
        return Array(view)
    }

    // MARK: Encoding
    //
    // The encoding is split around the payload so that a DATA message can be framed in place:
    // the *head* (type, streamId, ignorable, payload key and length) goes in front of payload
    // bytes that are already in the buffer, the *tail* (serviceId, availableServiceIds,
    // connectionId) right after them.

    /// Bytes of the head for a payload of `payloadLength` bytes.
    public func headLength(payloadLength: Int) -> Int {
        var n = 0
        if type.rawValue != 0 { n += 1 + ProtobufWriter.varintLength(UInt64(bitPattern: Int64(type.rawValue))) }
        if streamId != 0 { n += 1 + ProtobufWriter.varintLength(UInt64(bitPattern: Int64(streamId))) }
        if ignorable { n += 2 }
        if payloadLength > 0 { n += 1 + ProtobufWriter.varintLength(UInt64(payloadLength)) }
        return n
    }

    /// Bytes of the tail (fields after the payload).
    public var tailLength: Int {
        var n = 0
        if !serviceId.isEmpty { n += 1 + ProtobufWriter.varintLength(UInt64(serviceId.count)) + serviceId.count }
        for id in availableServiceIds { n += 1 + ProtobufWriter.varintLength(UInt64(id.count)) + id.count }
        if connectionId != 0 { n += 1 + ProtobufWriter.varintLength(UInt64(connectionId)) }
        return n
    }

    /// Total encoded length with the current payload.
    public var encodedLength: Int { headLength(payloadLength: payload.count) + payload.count + tailLength }

    /// Writes the head for a payload of `payloadLength` bytes so that it ends exactly at `end`.
    /// Returns the head's length.
    @discardableResult
    public func writeHead(payloadLength: Int, endingAt end: UnsafeMutableRawPointer) -> Int {
        let length = headLength(payloadLength: payloadLength)
        var writer = ProtobufWriter(UnsafeMutableRawBufferPointer(start: end - length, count: length))
        if type.rawValue != 0 {
            writer.writeKey(field: Field.type, wireType: .varint)
            writer.writeVarint(UInt64(bitPattern: Int64(type.rawValue)))
        }
        if streamId != 0 {
            writer.writeKey(field: Field.streamId, wireType: .varint)
            writer.writeVarint(UInt64(bitPattern: Int64(streamId)))
        }
        if ignorable {
            writer.writeKey(field: Field.ignorable, wireType: .varint)
            writer.writeVarint(1)
        }
        if payloadLength > 0 {
            writer.writeKey(field: Field.payload, wireType: .lengthDelimited)
            writer.writeVarint(UInt64(payloadLength))
        }
        return length
    }

    /// Writes the tail starting at `start`. Returns its length.
    @discardableResult
    public func writeTail(at start: UnsafeMutableRawPointer) -> Int {
        let length = tailLength
        var writer = ProtobufWriter(UnsafeMutableRawBufferPointer(start: start, count: length))
        if !serviceId.isEmpty {
            writeString(serviceId, field: Field.serviceId, into: &writer)
        }
        for id in availableServiceIds {
            writeString(id, field: Field.availableServiceIds, into: &writer)
        }
        if connectionId != 0 {
            writer.writeKey(field: Field.connectionId, wireType: .varint)
            writer.writeVarint(UInt64(connectionId))
        }
        return length
    }

    private func writeString(_ bytes: [UInt8], field: UInt64, into writer: inout ProtobufWriter) {
        writer.writeKey(field: field, wireType: .lengthDelimited)
        writer.writeVarint(UInt64(bytes.count))
        bytes.withUnsafeBytes { writer.writeBytes($0) }
    }

    /// Encodes the whole message (copying the payload) into `buffer`, which must hold
    /// `encodedLength` bytes. Returns the number of bytes written.
    public func encode(into buffer: UnsafeMutableRawBufferPointer) throws(TunnelEncodingError) -> Int {
        try checkEncodable()
        let total = encodedLength
        guard buffer.count >= total, let base = buffer.baseAddress else {
            throw TunnelEncodingError.bufferTooSmall(needed: total, available: buffer.count)
        }
        let head = headLength(payloadLength: payload.count)
        writeHead(payloadLength: payload.count, endingAt: base + head)
        if let source = payload.baseAddress, payload.count > 0 {
            (base + head).copyMemory(from: source, byteCount: payload.count)
        }
        writeTail(at: base + head + payload.count)
        return total
    }

    /// Encodes into a new array. For tests and control messages; DATA is framed in place.
    public func encoded() throws(TunnelEncodingError) -> [UInt8] {
        try checkEncodable()
        var out = [UInt8](repeating: 0, count: encodedLength)
        var result: Result<Int, TunnelEncodingError> = .success(0)
        out.withUnsafeMutableBytes { buffer in
            do throws(TunnelEncodingError) {
                result = .success(try encode(into: buffer))
            } catch {
                result = .failure(error)
            }
        }
        if case .failure(let error) = result { throw error }
        return out
    }

    /// Checks the limits an encoder must respect: payload size and what a 2-byte length prefix
    /// can carry.
    public func checkEncodable() throws(TunnelEncodingError) {
        guard payload.count <= TunnelMessage.maximumPayloadLength else {
            throw TunnelEncodingError.payloadTooLarge(payload.count)
        }
        guard encodedLength <= TunnelFrame.maximumMessageLength else {
            throw TunnelEncodingError.messageTooLarge(encodedLength)
        }
    }
}

public enum TunnelEncodingError: Error, Equatable, CustomStringConvertible {
    case payloadTooLarge(Int)
    case messageTooLarge(Int)
    case bufferTooSmall(needed: Int, available: Int)

    public var description: String {
        switch self {
        case .payloadTooLarge(let n):
            return "payload of \(n) bytes exceeds the tunnel limit of \(TunnelMessage.maximumPayloadLength) bytes: split it into several DATA messages"
        case .messageTooLarge(let n):
            return "encoded message of \(n) bytes does not fit a 2-byte length prefix (at most \(TunnelFrame.maximumMessageLength))"
        case .bufferTooSmall(let needed, let available):
            return "output buffer of \(available) bytes is too small for a \(needed)-byte message"
        }
    }
}

/// A service id from the peer, made safe for a log line: at most 64 bytes shown, control
/// characters, quotes and backslashes escaped, the full length given when it was cut.
public func loggableServiceId(_ raw: [UInt8]) -> String {
    let shown = 64
    var text = "\""
    var bytes: [UInt8] = []
    for b in raw.prefix(shown) {
        if b < 0x20 || b == 0x7F || b == 0x22 || b == 0x5C {
            text += String(decoding: bytes, as: UTF8.self)
            bytes.removeAll()
            let digits: [UInt8] = Array("0123456789abcdef".utf8)
            text += String(decoding: [0x5C, 0x78, digits[Int(b >> 4)], digits[Int(b & 0xF)]], as: UTF8.self)
        } else {
            bytes.append(b)
        }
    }
    text += String(decoding: bytes, as: UTF8.self) + "\""
    if raw.count > shown { text += "... (\(raw.count) bytes)" }
    return text
}
