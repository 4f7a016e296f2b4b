/// DNS messages for a stub resolver (RFC 1035 §4): the one query it sends, and the checks and
/// answer extraction it applies to a response. No I/O; every length is checked against the end
/// of the message before it is used.

/// The record types the resolver asks for.
public enum DNSQueryType: Equatable, Sendable, CustomStringConvertible {
    case a, aaaa

    public var code: UInt16 {
        switch self {
        case .a: return 1
        case .aaaa: return 28
        }
    }

    /// Bytes of the record data of this type.
    var addressLength: Int { self == .a ? 4 : 16 }

    public var description: String { self == .a ? "A" : "AAAA" }
}

/// Where in a message a length ran out.
public enum DNSField: Equatable, Sendable, CustomStringConvertible {
    case header, question, name, record, recordData

    public var description: String {
        switch self {
        case .header: return "the header"
        case .question: return "the question"
        case .name: return "a name"
        case .record: return "a record header"
        case .recordData: return "record data"
        }
    }
}

/// What was wrong with a host name or a response. Response codes and the TC bit are errors
/// here too, so that the caller decides what each one means for the lookup.
public enum DNSError: Error, Equatable, CustomStringConvertible {
    // The host name asked for.
    case emptyName
    /// Two dots in a row, or a leading dot; `at` is the byte offset in the name.
    case emptyLabel(at: Int)
    /// A label of more than 63 bytes (in a name, or a length byte 64...191 in a message).
    case labelTooLong(Int)
    /// More than 253 bytes of text, or more than 255 bytes in wire form.
    case nameTooLong(Int)
    /// A byte other than a letter, digit, '-' or '_' at byte offset `at`.
    case invalidCharacter(UInt8, at: Int)

    // The response's structure.
    /// The message ended inside `field`, which started at byte `at`.
    case truncated(DNSField, at: Int)
    case idMismatch(expected: UInt16, received: UInt16)
    case notAResponse
    case unexpectedOpcode(UInt8)
    case questionCount(Int)
    /// The response's question is not the query's (name, type or class differ).
    case questionMismatch
    /// A compression pointer at byte `at` leads outside the message or into the header.
    case pointerOutOfRange(at: Int, target: Int)
    /// A compression pointer at byte `at` does not point before the name it continues, which is
    /// how a loop (or a forward reference) shows.
    case pointerLoop(at: Int, target: Int)
    /// An A or AAAA record whose data is not 4 or 16 bytes, or a CNAME whose data is not one name.
    case badRecordData(type: UInt16, length: Int)
    case cnameLoop
    case cnameChainTooLong(Int)

    // What the server said.
    /// RCODE 3 (NXDOMAIN): the name does not exist.
    case nonexistentDomain
    /// RCODE 2 (SERVFAIL).
    case serverFailure
    /// RCODE 5 (REFUSED).
    case refused
    /// RCODE 1 (FORMERR): the server could not read our query.
    case formatError
    /// RCODE 4 (NOTIMP).
    case notImplemented
    case otherResponseCode(UInt8)
    /// The TC bit: the answer did not fit in the datagram; ask again over TCP.
    case truncatedResponse

    public var description: String {
        switch self {
        case .emptyName: return "empty host name"
        case .emptyLabel(let at): return "empty label at byte \(at) of the host name (two dots in a row, or a leading dot)"
        case .labelTooLong(let n): return "a label of \(n) bytes (at most 63)"
        case .nameTooLong(let n): return "a name of \(n) bytes (at most 253 as text, 255 on the wire)"
        case .invalidCharacter(let b, let at): return "byte \(b) at offset \(at) of the host name is not a letter, digit, '-' or '_'"
        case .truncated(let field, let at): return "the response ends inside \(field) starting at byte \(at)"
        case .idMismatch(let expected, let received): return "response id \(received) does not match query id \(expected)"
        case .notAResponse: return "the message is a query, not a response (QR bit clear)"
        case .unexpectedOpcode(let op): return "the response has opcode \(op), not 0 (QUERY)"
        case .questionCount(let n): return "the response has \(n) questions instead of echoing our one"
        case .questionMismatch: return "the response's question is not the one asked"
        case .pointerOutOfRange(let at, let target): return "the compression pointer at byte \(at) points to byte \(target), outside the message"
        case .pointerLoop(let at, let target): return "the compression pointer at byte \(at) points to byte \(target), not before the name it continues (a loop)"
        case .badRecordData(let type, let length): return "a record of type \(type) has \(length) bytes of data that do not fit its type"
        case .cnameLoop: return "the CNAME records form a loop"
        case .cnameChainTooLong(let n): return "a CNAME chain longer than \(n) names"
        case .nonexistentDomain: return "the name does not exist (NXDOMAIN)"
        case .serverFailure: return "the server failed to answer (SERVFAIL)"
        case .refused: return "the server refused the query (REFUSED)"
        case .formatError: return "the server could not parse the query (FORMERR)"
        case .notImplemented: return "the server does not implement the query (NOTIMP)"
        case .otherResponseCode(let code): return "the server answered with RCODE \(code)"
        case .truncatedResponse: return "the answer was truncated (TC bit): retry over TCP"
        }
    }
}

/// A domain name in wire form (length-prefixed labels ending with the root's zero byte), with
/// ASCII letters lower-cased so that equal names compare equal (RFC 4343).
public struct DNSName: Equatable, Sendable, CustomStringConvertible {
    public let wire: [UInt8]

    /// The most bytes a name takes on the wire (RFC 1035 §3.1).
    public static let maximumWireLength = 255
    /// The most bytes of dotted text, without a final dot.
    public static let maximumTextLength = 253

    /// A host name as typed: labels of letters, digits, '-' and '_', 1 to 63 bytes each, at
    /// most 253 bytes in all; one final dot (a fully qualified name) is accepted.
    public init(_ text: String) throws(DNSError) {
        var t = Array(text.utf8)
        if t.last == 0x2E { t.removeLast() }
        guard !t.isEmpty else { throw .emptyName }
        guard t.count <= DNSName.maximumTextLength else { throw .nameTooLong(t.count) }
        var out: [UInt8] = [0]
        var lengthAt = 0
        var length = 0
        for (offset, c) in t.enumerated() {
            if c == 0x2E {
                guard length > 0 else { throw .emptyLabel(at: offset) }
                out[lengthAt] = UInt8(length)
                lengthAt = out.count
                out.append(0)
                length = 0
                continue
            }
            let letter = (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A)
            let digit = c >= 0x30 && c <= 0x39
            guard letter || digit || c == 0x2D || c == 0x5F else { throw .invalidCharacter(c, at: offset) }
            length += 1
            guard length <= 63 else { throw .labelTooLong(labelLength(t, from: offset - 63)) }
            out.append(c >= 0x41 && c <= 0x5A ? c + 0x20 : c)
        }
        // "a.." loses one dot above and ends in an empty label here (found by Fuzz/).
        guard length > 0 else { throw .emptyLabel(at: t.count) }
        out[lengthAt] = UInt8(length)
        out.append(0)
        wire = out
    }

    /// From wire bytes already checked by the message reader.
    init(checkedWire: [UInt8]) { wire = checkedWire }

    /// Dotted text without the final dot; bytes that are not printable ASCII, and dots or
    /// backslashes inside a label, appear as `\DDD` (the master-file escape).
    public var description: String {
        var out: [UInt8] = []
        var i = 0
        while i < wire.count, wire[i] != 0 {
            let n = Int(wire[i])
            if !out.isEmpty { out.append(0x2E) }
            for c in wire[(i + 1)..<min(i + 1 + n, wire.count)] {
                if c > 0x20 && c < 0x7F && c != 0x2E && c != 0x5C {
                    out.append(c)
                } else {
                    out += [0x5C, 0x30 + c / 100, 0x30 + c / 10 % 10, 0x30 + c % 10]
                }
            }
            i += 1 + n
        }
        return out.isEmpty ? "." : String(decoding: out, as: UTF8.self)
    }
}

/// Bytes from `start` up to the next dot or the end, for the error of an over-long label.
private func labelLength(_ t: [UInt8], from start: Int) -> Int {
    var end = start
    while end < t.count && t[end] != 0x2E { end += 1 }
    return end - start
}

/// What a response says about the name asked for.
public struct DNSAnswer: Equatable, Sendable {
    /// Addresses of the query's type, owned by the query name or a name its CNAME chain leads
    /// to, in the order of the answer section, without repeats. Empty when the name exists but
    /// has no record of that type (NODATA).
    public var addresses: [IPAddress]
    /// The end of the CNAME chain (the query name when there is none).
    public var canonicalName: DNSName
}

public enum DNSMessage {
    /// Bytes of the fixed header.
    public static let headerLength = 12
    /// The most names a CNAME chain in one answer may have after the query name.
    public static let maximumCNAMEChain = 8
    /// The most compression pointers one name may follow. Each pointer must point before the
    /// previous one, so this is a second line of defence only.
    static let maximumPointers = 128
    static let classIN: UInt16 = 1
    static let typeCNAME: UInt16 = 5

    /// A standard query: recursion desired, one question for `name` of `type`, class IN.
    public static func query(id: UInt16, name: DNSName, type: DNSQueryType) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(headerLength + name.wire.count + 4)
        out += [UInt8(id >> 8), UInt8(truncatingIfNeeded: id)]
        out += [0x01, 0x00]            // QR=0, opcode 0, RD=1; RA, Z, RCODE 0
        out += [0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00]  // QDCOUNT 1, others 0
        out += name.wire
        out += [UInt8(type.code >> 8), UInt8(truncatingIfNeeded: type.code), 0x00, 0x01]
        return out
    }

    /// The id of a message (its first two bytes), or nil if it has fewer.
    public static func id(of message: UnsafeRawBufferPointer) -> UInt16? {
        guard message.count >= 2 else { return nil }
        return UInt16(message[0]) << 8 | UInt16(message[1])
    }

    /// Checks that `message` answers the query (`id`, `name`, `type`) and returns its addresses.
    /// Checks in order: header and id, QR and opcode, the echoed question, RCODE, TC, then the
    /// answer records. The authority and additional sections are not read.
    public static func parseResponse(_ message: UnsafeRawBufferPointer, id: UInt16, name: DNSName,
                                     type: DNSQueryType) throws(DNSError) -> DNSAnswer {
        let reader = DNSReader(message)
        guard message.count >= headerLength else { throw .truncated(.header, at: 0) }
        let received = reader.u16(0)
        guard received == id else { throw .idMismatch(expected: id, received: received) }
        let flags = reader.u16(2)
        guard flags & 0x8000 != 0 else { throw .notAResponse }
        let opcode = UInt8((flags >> 11) & 0xF)
        guard opcode == 0 else { throw .unexpectedOpcode(opcode) }
        let rcode = UInt8(flags & 0xF)
        let questions = Int(reader.u16(4))
        let answers = Int(reader.u16(6))

        var offset = headerLength
        // Servers may leave the question out of an error response they could not parse.
        if !(questions == 0 && rcode != 0) {
            guard questions == 1 else { throw .questionCount(questions) }
            let (qname, next) = try reader.name(at: offset)
            guard next + 4 <= message.count else { throw .truncated(.question, at: offset) }
            guard qname == name, reader.u16(next) == type.code, reader.u16(next + 2) == classIN else {
                throw .questionMismatch
            }
            offset = next + 4
        }
        switch rcode {
        case 0: break
        case 1: throw .formatError
        case 2: throw .serverFailure
        case 3: throw .nonexistentDomain
        case 4: throw .notImplemented
        case 5: throw .refused
        default: throw .otherResponseCode(rcode)
        }
        if flags & 0x0200 != 0 { throw .truncatedResponse }

        // The answer section: CNAMEs and addresses of the asked type; everything else skipped
        // after its lengths are checked.
        var aliases: [(owner: DNSName, target: DNSName)] = []
        var found: [(owner: DNSName, address: IPAddress)] = []
        for _ in 0..<answers {
            let start = offset
            let (owner, next) = try reader.name(at: offset)
            guard next + 10 <= message.count else { throw .truncated(.record, at: start) }
            let rtype = reader.u16(next)
            let rclass = reader.u16(next + 2)
            let length = Int(reader.u16(next + 8))
            let data = next + 10
            guard data + length <= message.count else { throw .truncated(.recordData, at: data) }
            offset = data + length
            guard rclass == classIN else { continue }
            if rtype == type.code {
                guard length == type.addressLength else { throw .badRecordData(type: rtype, length: length) }
                found.append((owner, IPAddress(bytes: Array(message[data..<(data + length)]))!))
            } else if rtype == typeCNAME {
                let (target, end) = try reader.name(at: data)
                guard end == data + length else { throw .badRecordData(type: rtype, length: length) }
                aliases.append((owner, target))
            }
        }

        var chain = [name]
        var current = name
        while let alias = aliases.first(where: { $0.owner == current }) {
            guard !chain.contains(alias.target) else { throw .cnameLoop }
            guard chain.count <= maximumCNAMEChain else { throw .cnameChainTooLong(maximumCNAMEChain) }
            chain.append(alias.target)
            current = alias.target
        }
        var addresses: [IPAddress] = []
        for (owner, address) in found where chain.contains(owner) && !addresses.contains(address) {
            addresses.append(address)
        }
        return DNSAnswer(addresses: addresses, canonicalName: current)
    }

    /// The same for a response held in an array.
    public static func parseResponse(_ message: [UInt8], id: UInt16, name: DNSName,
                                     type: DNSQueryType) throws(DNSError) -> DNSAnswer {
        let result = message.withUnsafeBytes { raw -> Result<DNSAnswer, DNSError> in
            do throws(DNSError) {
                return .success(try parseResponse(raw, id: id, name: name, type: type))
            } catch {
                return .failure(error)
            }
        }
        return try result.get()
    }
}

/// Bounds-checked reads from a message; the caller checks fixed-size fields fit before `u16`.
struct DNSReader {
    let message: UnsafeRawBufferPointer

    init(_ message: UnsafeRawBufferPointer) { self.message = message }

    func u16(_ at: Int) -> UInt16 { UInt16(message[at]) << 8 | UInt16(message[at + 1]) }

    /// Reads the (possibly compressed) name at `offset`: its lower-cased wire form, and the
    /// offset just after it where it started (after the first pointer, if any).
    ///
    /// Every pointer must point before the start of the labels it continues, so each jump goes
    /// strictly backwards and no loop is possible; the pointer count is bounded as well.
    func name(at offset: Int) throws(DNSError) -> (DNSName, Int) {
        var out: [UInt8] = []
        var position = offset
        var segmentStart = offset
        var end: Int? = nil
        var pointers = 0
        while true {
            guard position < message.count else { throw .truncated(.name, at: offset) }
            let length = Int(message[position])
            switch length & 0xC0 {
            case 0x00:
                if length == 0 {
                    out.append(0)
                    guard out.count <= DNSName.maximumWireLength else { throw .nameTooLong(out.count) }
                    return (DNSName(checkedWire: out), end ?? position + 1)
                }
                guard position + 1 + length <= message.count else { throw .truncated(.name, at: offset) }
                out.append(UInt8(length))
                for c in message[(position + 1)...(position + length)] {
                    out.append(c >= 0x41 && c <= 0x5A ? c + 0x20 : c)
                }
                guard out.count < DNSName.maximumWireLength else { throw .nameTooLong(out.count + 1) }
                position += 1 + length
            case 0xC0:
                guard position + 1 < message.count else { throw .truncated(.name, at: offset) }
                let target = (length & 0x3F) << 8 | Int(message[position + 1])
                guard target >= DNSMessage.headerLength, target < message.count else {
                    throw .pointerOutOfRange(at: position, target: target)
                }
                guard target < segmentStart else { throw .pointerLoop(at: position, target: target) }
                pointers += 1
                guard pointers <= DNSMessage.maximumPointers else { throw .pointerLoop(at: position, target: target) }
                if end == nil { end = position + 2 }
                position = target
                segmentStart = target
            default:
                // 0x40 and 0x80 (extended and reserved label types) read as lengths above 63.
                throw .labelTooLong(length)
            }
        }
    }
}
