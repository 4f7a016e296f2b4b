/// The protobuf binary wire format, as far as the tunnel's `Message` needs it: varints, the four
/// wire types that can be skipped (and groups), and bounds checks before every read.

/// Protobuf wire types (the low three bits of a field key).
public enum ProtobufWireType: UInt8, CustomStringConvertible {
    case varint = 0
    case fixed64 = 1
    case lengthDelimited = 2
    case startGroup = 3
    case endGroup = 4
    case fixed32 = 5

    public var description: String {
        switch self {
        case .varint: return "varint"
        case .fixed64: return "fixed64"
        case .lengthDelimited: return "length-delimited"
        case .startGroup: return "start-group"
        case .endGroup: return "end-group"
        case .fixed32: return "fixed32"
        }
    }
}

/// Why a protobuf encoding was rejected, and where.
public struct ProtobufDecodingError: Error, Equatable, CustomStringConvertible {
    public enum Reason: Equatable, Sendable {
        /// The input ends inside a key, a varint or a fixed-size value.
        case truncated
        /// A varint longer than the 10 bytes any 64-bit value needs.
        case varintTooLong
        /// Field number 0 or above 2^29 - 1.
        case invalidFieldNumber(UInt64)
        /// Wire type 6 or 7.
        case invalidWireType(UInt8)
        /// A length-delimited field claims more bytes than remain.
        case lengthPastEnd(claimed: UInt64, available: Int)
        /// An end-group key with no open group, or closing a different group.
        case unmatchedEndGroup
        /// Groups nested deeper than `ProtobufReader.maximumGroupDepth`.
        case groupsTooDeep
        /// A string field whose bytes are not valid UTF-8 (proto3 requires it).
        case invalidUTF8
        /// A DATA payload longer than `TunnelMessage.maximumPayloadLength`.
        case payloadTooLarge(Int)
    }

    public let reason: Reason
    /// Byte offset in the message where the offending item starts.
    public let offset: Int
    /// The field being read, when known (0 when the key itself was bad).
    public let field: UInt64

    public init(_ reason: Reason, offset: Int, field: UInt64 = 0) {
        self.reason = reason
        self.offset = offset
        self.field = field
    }

    public var description: String {
        let place = field == 0
            ? "at byte \(offset)"
            : "in field \(field) (\(TunnelMessage.fieldName(field))) at byte \(offset)"
        switch reason {
        case .truncated:
            return "protobuf message truncated \(place): the input ends inside a value"
        case .varintTooLong:
            return "protobuf varint longer than 10 bytes \(place)"
        case .invalidFieldNumber(let n):
            return "protobuf field number \(n) is invalid \(place) (must be 1 to 536870911)"
        case .invalidWireType(let t):
            return "protobuf wire type \(t) is invalid \(place) (only 0 to 5 exist)"
        case .lengthPastEnd(let claimed, let available):
            return "protobuf length \(claimed) runs past the end of the message \(place): only \(available) bytes remain"
        case .unmatchedEndGroup:
            return "protobuf end-group key with no matching start-group \(place)"
        case .groupsTooDeep:
            return "protobuf groups nested deeper than \(ProtobufReader.maximumGroupDepth) \(place)"
        case .invalidUTF8:
            return "protobuf string is not valid UTF-8 \(place)"
        case .payloadTooLarge(let n):
            return "tunnel message payload of \(n) bytes \(place) exceeds the limit of \(TunnelMessage.maximumPayloadLength) bytes"
        }
    }
}

/// Reads protobuf items from a byte view, checking every length before reading.
public struct ProtobufReader {
    /// How deeply unknown groups may nest before the input is rejected (libprotobuf uses 100).
    public static let maximumGroupDepth = 64

    public let bytes: UnsafeRawBufferPointer
    public private(set) var offset: Int = 0
    /// Where the most recently read key started, for errors about the field it introduced.
    public private(set) var keyOffset: Int = 0

    public init(_ bytes: UnsafeRawBufferPointer) {
        self.bytes = bytes
    }

    public var isAtEnd: Bool { offset >= bytes.count }

    /// Reads a base-128 varint. At most 10 bytes; bits beyond 64 in the tenth byte are dropped,
    /// as libprotobuf does.
    public mutating func readVarint(field: UInt64 = 0) throws(ProtobufDecodingError) -> UInt64 {
        let start = offset
        var value: UInt64 = 0
        var shift: UInt64 = 0
        while true {
            guard offset < bytes.count else { throw ProtobufDecodingError(.truncated, offset: start, field: field) }
            guard shift < 70 else { throw ProtobufDecodingError(.varintTooLong, offset: start, field: field) }
            let byte = bytes[offset]
            offset += 1
            if shift < 64 { value |= UInt64(byte & 0x7F) << shift }
            if byte & 0x80 == 0 { return value }
            shift += 7
        }
    }

    /// Reads a field key; returns the field number and wire type.
    public mutating func readKey() throws(ProtobufDecodingError) -> (field: UInt64, wireType: ProtobufWireType) {
        let start = offset
        keyOffset = start
        let key = try readVarint()
        let number = key >> 3
        guard number >= 1 && number <= 0x1FFF_FFFF else {
            throw ProtobufDecodingError(.invalidFieldNumber(number), offset: start)
        }
        guard let wireType = ProtobufWireType(rawValue: UInt8(key & 7)) else {
            throw ProtobufDecodingError(.invalidWireType(UInt8(key & 7)), offset: start, field: number)
        }
        return (number, wireType)
    }

    /// Reads the length and returns a view of the bytes of a length-delimited value.
    public mutating func readLengthDelimited(field: UInt64) throws(ProtobufDecodingError) -> UnsafeRawBufferPointer {
        let start = offset
        let length = try readVarint(field: field)
        let available = bytes.count - offset
        guard length <= UInt64(available) else {
            throw ProtobufDecodingError(.lengthPastEnd(claimed: length, available: available), offset: start, field: field)
        }
        let view = UnsafeRawBufferPointer(rebasing: bytes[offset..<(offset + Int(length))])
        offset += Int(length)
        return view
    }

    /// Skips the value of a field of the given wire type (after its key has been read), including
    /// whole groups with anything nested in them.
    public mutating func skip(field: UInt64, wireType: ProtobufWireType) throws(ProtobufDecodingError) {
        switch wireType {
        case .varint:
            _ = try readVarint(field: field)
        case .fixed64:
            try skipFixed(8, field: field)
        case .fixed32:
            try skipFixed(4, field: field)
        case .lengthDelimited:
            _ = try readLengthDelimited(field: field)
        case .startGroup:
            try skipGroup(field: field)
        case .endGroup:
            throw ProtobufDecodingError(.unmatchedEndGroup, offset: keyOffset, field: field)
        }
    }

    private mutating func skipFixed(_ count: Int, field: UInt64) throws(ProtobufDecodingError) {
        guard bytes.count - offset >= count else { throw ProtobufDecodingError(.truncated, offset: offset, field: field) }
        offset += count
    }

    /// Skips up to and including the end-group key matching `field`, iteratively so that a
    /// hostile nesting depth cannot exhaust the stack.
    private mutating func skipGroup(field: UInt64) throws(ProtobufDecodingError) {
        var open: [UInt64] = [field]
        while let innermost = open.last {
            let keyOffset = offset
            let (number, wireType) = try readKey()
            switch wireType {
            case .startGroup:
                guard open.count < ProtobufReader.maximumGroupDepth else {
                    throw ProtobufDecodingError(.groupsTooDeep, offset: keyOffset, field: number)
                }
                open.append(number)
            case .endGroup:
                guard number == innermost else {
                    throw ProtobufDecodingError(.unmatchedEndGroup, offset: keyOffset, field: number)
                }
                open.removeLast()
            default:
                try skip(field: number, wireType: wireType)
            }
        }
    }
}

/// Writes protobuf items into a buffer the caller sized with the matching `*Length` functions.
public struct ProtobufWriter {
    public let buffer: UnsafeMutableRawBufferPointer
    public private(set) var offset: Int

    public init(_ buffer: UnsafeMutableRawBufferPointer, offset: Int = 0) {
        self.buffer = buffer
        self.offset = offset
    }

    public static func varintLength(_ value: UInt64) -> Int {
        var v = value
        var n = 1
        while v >= 0x80 {
            v >>= 7
            n += 1
        }
        return n
    }

    public mutating func writeVarint(_ value: UInt64) {
        var v = value
        while v >= 0x80 {
            buffer[offset] = UInt8(truncatingIfNeeded: v) | 0x80
            offset += 1
            v >>= 7
        }
        buffer[offset] = UInt8(v)
        offset += 1
    }

    public mutating func writeKey(field: UInt64, wireType: ProtobufWireType) {
        writeVarint(field << 3 | UInt64(wireType.rawValue))
    }

    public mutating func writeBytes(_ bytes: UnsafeRawBufferPointer) {
        guard let source = bytes.baseAddress, bytes.count > 0 else { return }
        (buffer.baseAddress! + offset).copyMemory(from: source, byteCount: bytes.count)
        offset += bytes.count
    }
}

/// Strict UTF-8 validation (no overlong forms, no surrogates, nothing above U+10FFFF), as proto3
/// requires of `string` fields and RFC 6455 of close reasons.
public func isValidUTF8(_ bytes: UnsafeRawBufferPointer) -> Bool {
    var i = 0
    let n = bytes.count
    while i < n {
        let b0 = bytes[i]
        if b0 < 0x80 {
            i += 1
            continue
        }
        var need = 0
        var lower: UInt8 = 0x80
        var upper: UInt8 = 0xBF
        switch b0 {
        case 0xC2...0xDF: need = 1
        case 0xE0: need = 2; lower = 0xA0
        case 0xE1...0xEC, 0xEE...0xEF: need = 2
        case 0xED: need = 2; upper = 0x9F
        case 0xF0: need = 3; lower = 0x90
        case 0xF1...0xF3: need = 3
        case 0xF4: need = 3; upper = 0x8F
        default: return false
        }
        guard i + need < n else { return false }
        let b1 = bytes[i + 1]
        guard b1 >= lower && b1 <= upper else { return false }
        var k = 2
        while k <= need {
            let b = bytes[i + k]
            guard b >= 0x80 && b <= 0xBF else { return false }
            k += 1
        }
        i += need + 1
    }
    return true
}
