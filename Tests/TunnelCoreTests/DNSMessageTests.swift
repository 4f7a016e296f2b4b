// DNS queries and responses from bytes (RFC 1035 §4): the exact query sent, and every check
// applied to a response, including each way a hostile or broken message can be malformed.
import Testing
@testable import TunnelCore

/// Writes DNS messages byte by byte, so that tests can place compression pointers exactly.
struct MessageBuilder {
    var bytes: [UInt8] = []

    /// A header; flags 0x8180 is a response (QR) to a recursive query (RD, RA), NOERROR.
    init(id: UInt16 = 0x1234, flags: UInt16 = 0x8180, questions: Int = 1, answers: Int = 0) {
        u16(id)
        u16(flags)
        u16(UInt16(questions))
        u16(UInt16(answers))
        u16(0)
        u16(0)
    }

    var offset: Int { bytes.count }

    mutating func u16(_ v: UInt16) { bytes += [UInt8(v >> 8), UInt8(v & 0xFF)] }
    mutating func u32(_ v: UInt32) { u16(UInt16(v >> 16)); u16(UInt16(v & 0xFFFF)) }

    mutating func setAnswerCount(_ n: Int) {
        bytes[6] = UInt8(n >> 8)
        bytes[7] = UInt8(n & 0xFF)
    }

    /// Labels of `text` (none for ""), then a pointer to `pointer` or the root's zero byte.
    /// Returns where the name starts.
    @discardableResult
    mutating func name(_ text: String, pointer: Int? = nil) -> Int {
        let start = offset
        if !text.isEmpty {
            for label in text.split(separator: ".") {
                bytes.append(UInt8(label.utf8.count))
                bytes += Array(label.utf8)
            }
        }
        if let pointer {
            bytes += [UInt8(0xC0 | (pointer >> 8)), UInt8(pointer & 0xFF)]
        } else {
            bytes.append(0)
        }
        return start
    }

    mutating func question(_ text: String, type: UInt16 = 1, klass: UInt16 = 1) {
        name(text)
        u16(type)
        u16(klass)
    }

    /// A record: the owner written by `owner`, then type, class, TTL, and data written by `data`
    /// with its length filled in afterwards. Returns where the data starts.
    @discardableResult
    mutating func record(type: UInt16, klass: UInt16 = 1, owner: (inout MessageBuilder) -> Void,
                         data: (inout MessageBuilder) -> Void) -> Int {
        owner(&self)
        u16(type)
        u16(klass)
        u32(300)
        let lengthAt = offset
        u16(0)
        let start = offset
        data(&self)
        let length = offset - start
        bytes[lengthAt] = UInt8(length >> 8)
        bytes[lengthAt + 1] = UInt8(length & 0xFF)
        return start
    }

    mutating func a(_ owner: Int, _ a: UInt8, _ b: UInt8, _ c: UInt8, _ d: UInt8) {
        record(type: 1, owner: { $0.name("", pointer: owner) }, data: { $0.bytes += [a, b, c, d] })
    }
}

private let www = try! DNSName("www.example.com")

/// The error `parseResponse` throws, or nil if it parses.
private func parseError(_ message: [UInt8], id: UInt16 = 0x1234, name: DNSName = www, type: DNSQueryType = .a) -> DNSError? {
    do {
        _ = try DNSMessage.parseResponse(message, id: id, name: name, type: type)
        return nil
    } catch {
        return error
    }
}

private func ip(_ text: String) -> IPAddress { IPAddress(text)! }

/// A response with compression everywhere and a CNAME: www.example.com CNAME edge.example.com,
/// two A records for edge, one TXT record (ignored).
private func compressedResponse() -> [UInt8] {
    var m = MessageBuilder(answers: 4)
    m.question("www.example.com")
    // "example.com" starts after "\3www" at 12.
    var edge = 0
    let cnameData = m.record(type: 5, owner: { $0.name("", pointer: 12) }, data: { $0.name("edge", pointer: 16) })
    edge = cnameData
    m.a(edge, 192, 0, 2, 1)
    m.a(edge, 192, 0, 2, 2)
    m.record(type: 16, owner: { $0.name("", pointer: 12) }, data: { $0.bytes += [3, 0x61, 0x62, 0x63] })
    return m.bytes
}

@Suite struct DNSMessageTests {
    // MARK: Query

    @Test func queryBytesForTheTunnelEndpoint() throws {
        let name = try DNSName("data.tunneling.iot.us-east-1.amazonaws.com")
        let expected = bytes("""
            beef 0100 0001 0000 0000 0000
            04 64617461 09 74756e6e656c696e67 03 696f74 09 75732d656173742d31
            09 616d617a6f6e617773 03 636f6d 00
            0001 0001
            """)
        #expect(DNSMessage.query(id: 0xBEEF, name: name, type: .a) == expected)
        var aaaa = expected
        aaaa[aaaa.count - 3] = 0x1C
        #expect(DNSMessage.query(id: 0xBEEF, name: name, type: .aaaa) == aaaa)
        // Upper case and a final dot make the same query.
        let fqdn = try DNSName("DATA.Tunneling.IOT.us-east-1.amazonaws.com.")
        #expect(DNSMessage.query(id: 0xBEEF, name: fqdn, type: .a) == expected)
        #expect(fqdn.description == "data.tunneling.iot.us-east-1.amazonaws.com")
    }

    @Test func queryIdIsBigEndian() throws {
        let q = DNSMessage.query(id: 0x0102, name: try DNSName("a"), type: .a)
        #expect(q == bytes("0102 0100 0001 0000 0000 0000 0161 00 0001 0001"))
    }

    @Test func hostNameRules() throws {
        #expect(throws: DNSError.emptyName) { try DNSName("") }
        #expect(throws: DNSError.emptyName) { try DNSName(".") }
        #expect(throws: DNSError.emptyLabel(at: 2)) { try DNSName("a..b") }
        #expect(throws: DNSError.emptyLabel(at: 0)) { try DNSName(".a") }
        // Found by the dns-message fuzz target: the second dot made an empty last label.
        #expect(throws: DNSError.emptyLabel(at: 2)) { try DNSName("a..") }
        #expect(throws: DNSError.invalidCharacter(0x20, at: 3)) { try DNSName("exa mple.com") }
        #expect(throws: DNSError.invalidCharacter(0xC3, at: 0)) { try DNSName("é.com") }
        #expect(throws: DNSError.invalidCharacter(0x3A, at: 9)) { try DNSName("localhost:22") }
        let label63 = String(repeating: "a", count: 63)
        #expect(try DNSName(label63 + ".com").wire.count == 1 + 63 + 1 + 3 + 1)
        #expect(throws: DNSError.labelTooLong(64)) { try DNSName("x." + label63 + "a.com") }
        // 253 bytes of text is the longest name (255 on the wire).
        let longest = [String](repeating: label63, count: 3).joined(separator: ".") + "." + String(repeating: "b", count: 61)
        #expect(longest.utf8.count == 253)
        #expect(try DNSName(longest).wire.count == 255)
        #expect(try DNSName(longest + ".").wire.count == 255)
        #expect(throws: DNSError.nameTooLong(254)) { try DNSName(longest + "b") }
        // Underscores and hyphens are allowed (service labels, real host names).
        #expect(try DNSName("_dns._udp.my-host.example").description == "_dns._udp.my-host.example")
    }

    @Test func errorsDescribeThemselves() {
        #expect(DNSError.nonexistentDomain.description.contains("NXDOMAIN"))
        #expect(DNSError.truncatedResponse.description.contains("TCP"))
        #expect(DNSError.pointerLoop(at: 40, target: 40).description.contains("byte 40"))
        #expect(DNSError.invalidCharacter(0x20, at: 3).description.contains("offset 3"))
        #expect(DNSLookupError.noAnswer(tries: 4).description.contains("4 tries"))
    }

    // MARK: Answers

    @Test func plainAnswerWithSeveralAddresses() throws {
        var m = MessageBuilder(answers: 3)
        m.question("www.example.com")
        m.record(type: 1, owner: { $0.name("www.example.com") }, data: { $0.bytes += [10, 0, 0, 1] })
        m.a(12, 10, 0, 0, 2)
        m.a(12, 10, 0, 0, 1)  // a repeat is dropped
        let answer = try DNSMessage.parseResponse(m.bytes, id: 0x1234, name: www, type: .a)
        #expect(answer.addresses == [ip("10.0.0.1"), ip("10.0.0.2")])
        #expect(answer.canonicalName == www)
    }

    @Test func compressionAndCNAME() throws {
        let answer = try DNSMessage.parseResponse(compressedResponse(), id: 0x1234, name: www, type: .a)
        #expect(answer.addresses == [ip("192.0.2.1"), ip("192.0.2.2")])
        #expect(answer.canonicalName.description == "edge.example.com")
    }

    @Test func aaaaAnswersAndOtherFamiliesIgnored() throws {
        var m = MessageBuilder(answers: 3)
        m.question("www.example.com", type: 28)
        m.record(type: 28, owner: { $0.name("", pointer: 12) }, data: { $0.bytes += bytes("2001 0db8 0000 0000 0000 0000 0000 0001") })
        m.a(12, 10, 0, 0, 9)  // an A record in an AAAA answer is not what was asked
        m.record(type: 28, owner: { $0.name("", pointer: 12) }, data: { $0.bytes += bytes("0000 0000 0000 0000 0000 0000 0000 0001") })
        let answer = try DNSMessage.parseResponse(m.bytes, id: 0x1234, name: www, type: .aaaa)
        #expect(answer.addresses == [ip("2001:db8::1"), ip("::1")])
    }

    @Test func cnameChainInAnyOrderAndUnrelatedRecordsIgnored() throws {
        var m = MessageBuilder(answers: 6)
        m.question("www.example.com")
        // Addresses first, then the chain www -> a.cdn.test -> b.cdn.test (uncompressed names).
        m.record(type: 1, owner: { $0.name("b.cdn.test") }, data: { $0.bytes += [198, 51, 100, 7] })
        m.record(type: 1, owner: { $0.name("other.test") }, data: { $0.bytes += [203, 0, 113, 1] })
        m.record(type: 1, klass: 3, owner: { $0.name("b.cdn.test") }, data: { $0.bytes += [203, 0, 113, 2] })
        m.record(type: 5, owner: { $0.name("a.cdn.test") }, data: { $0.name("B.CDN.test") })
        m.record(type: 5, owner: { $0.name("", pointer: 12) }, data: { $0.name("a.cdn.test") })
        m.record(type: 46, owner: { $0.name("b.cdn.test") }, data: { $0.bytes += [1, 2, 3] })
        let answer = try DNSMessage.parseResponse(m.bytes, id: 0x1234, name: www, type: .a)
        #expect(answer.addresses == [ip("198.51.100.7")])
        #expect(answer.canonicalName.description == "b.cdn.test")
    }

    @Test func cnameLoopsAndLongChains() throws {
        var loop = MessageBuilder(answers: 2)
        loop.question("www.example.com")
        loop.record(type: 5, owner: { $0.name("", pointer: 12) }, data: { $0.name("x.test") })
        loop.record(type: 5, owner: { $0.name("x.test") }, data: { $0.name("www.example.com") })
        #expect(parseError(loop.bytes) == .cnameLoop)

        func chain(_ links: Int) -> [UInt8] {
            var m = MessageBuilder(answers: links + 1)
            m.question("www.example.com")
            m.record(type: 5, owner: { $0.name("", pointer: 12) }, data: { $0.name("c1.test") })
            for i in 1..<links {
                m.record(type: 5, owner: { $0.name("c\(i).test") }, data: { $0.name("c\(i + 1).test") })
            }
            m.record(type: 1, owner: { $0.name("c\(links).test") }, data: { $0.bytes += [10, 1, 1, 1] })
            return m.bytes
        }
        #expect(try DNSMessage.parseResponse(chain(8), id: 0x1234, name: www, type: .a).addresses == [ip("10.1.1.1")])
        #expect(parseError(chain(9)) == .cnameChainTooLong(8))
    }

    @Test func questionEchoIsCaseInsensitive() throws {
        var m = MessageBuilder(answers: 1)
        m.question("WWW.Example.COM")
        m.a(12, 10, 0, 0, 1)
        #expect(try DNSMessage.parseResponse(m.bytes, id: 0x1234, name: www, type: .a).addresses == [ip("10.0.0.1")])
    }

    @Test func noDataIsAnEmptyAnswer() throws {
        var m = MessageBuilder()
        m.question("www.example.com", type: 28)
        #expect(try DNSMessage.parseResponse(m.bytes, id: 0x1234, name: www, type: .aaaa).addresses == [])
    }

    // MARK: Header and question checks

    @Test func headerChecks() {
        var m = MessageBuilder(id: 0x4321)
        m.question("www.example.com")
        #expect(parseError(m.bytes) == .idMismatch(expected: 0x1234, received: 0x4321))

        var query = MessageBuilder(flags: 0x0100)
        query.question("www.example.com")
        #expect(parseError(query.bytes) == .notAResponse)

        var status = MessageBuilder(flags: 0x8000 | 2 << 11)
        status.question("www.example.com")
        #expect(parseError(status.bytes) == .unexpectedOpcode(2))

        var two = MessageBuilder(questions: 2)
        two.question("www.example.com")
        two.question("www.example.com")
        #expect(parseError(two.bytes) == .questionCount(2))
        var none = MessageBuilder(questions: 0)
        #expect(parseError(none.bytes) == .questionCount(0))
        none = MessageBuilder(flags: 0x8181, questions: 0)
        #expect(parseError(none.bytes) == .formatError, "an error response may leave the question out")

        #expect(parseError([]) == .truncated(.header, at: 0))
        #expect(parseError(Array(m.bytes[0..<11])) == .truncated(.header, at: 0))
    }

    @Test(arguments: [("www.example.org", 1, 1), ("www.example.com", 28, 1), ("www.example.com", 1, 3), ("example.com", 1, 1)])
    func wrongQuestion(_ text: String, _ type: Int, _ klass: Int) {
        var m = MessageBuilder(answers: 1)
        m.question(text, type: UInt16(type), klass: UInt16(klass))
        m.a(12, 10, 0, 0, 1)
        #expect(parseError(m.bytes) == .questionMismatch)
    }

    @Test(arguments: [(1, DNSError.formatError), (2, .serverFailure), (3, .nonexistentDomain), (4, .notImplemented),
                      (5, .refused), (9, .otherResponseCode(9))])
    func responseCodes(_ rcode: Int, _ error: DNSError) {
        var m = MessageBuilder(flags: 0x8180 | UInt16(rcode))
        m.question("www.example.com")
        #expect(parseError(m.bytes) == error)
    }

    @Test func truncatedBitAsksForTCP() {
        var m = MessageBuilder(flags: 0x8380, answers: 1)
        m.question("www.example.com")
        m.a(12, 10, 0, 0, 1)
        #expect(parseError(m.bytes) == .truncatedResponse)
        // An error code wins over TC: the server's verdict does not depend on the lost part.
        var nx = MessageBuilder(flags: 0x8383)
        nx.question("www.example.com")
        #expect(parseError(nx.bytes) == .nonexistentDomain)
    }

    // MARK: Malformed messages

    @Test func everyTruncationIsATypedError() {
        let full = compressedResponse()
        #expect(parseError(full) == nil)
        for length in 0..<full.count {
            let error = parseError(Array(full[0..<length]))
            switch error {
            case .truncated?, .pointerOutOfRange?:
                continue
            default:
                Issue.record("cut at \(length) of \(full.count): \(String(describing: error))")
            }
        }
    }

    @Test func pointerLoopsAndBadPointers() {
        // The question's name is a pointer to itself.
        var selfLoop = MessageBuilder()
        selfLoop.name("", pointer: 12)
        selfLoop.u16(1)
        selfLoop.u16(1)
        #expect(parseError(selfLoop.bytes) == .pointerLoop(at: 12, target: 12))

        // Two answer owners pointing at each other.
        var mutual = MessageBuilder(answers: 1)
        mutual.question("www.example.com")
        let first = mutual.offset
        mutual.bytes += [1, 0x61, 0xC0, UInt8(first + 4)]  // "a" then a pointer to the next name
        mutual.bytes += [1, 0x62, 0xC0, UInt8(first)]      // "b" then a pointer back to "a"
        #expect(parseError(mutual.bytes) == .pointerLoop(at: first + 2, target: first + 4))

        // A pointer forward, even to a proper name, is refused.
        var forward = MessageBuilder(answers: 1)
        forward.question("www.example.com")
        let at = forward.offset
        forward.bytes += [0xC0, UInt8(at + 2)]
        forward.name("www.example.com")
        #expect(parseError(forward.bytes) == .pointerLoop(at: at, target: at + 2))

        var pastEnd = MessageBuilder(answers: 1)
        pastEnd.question("www.example.com")
        let p = pastEnd.offset
        pastEnd.bytes += [0xC1, 0x00]
        #expect(parseError(pastEnd.bytes) == .pointerOutOfRange(at: p, target: 256))

        var intoHeader = MessageBuilder()
        intoHeader.name("", pointer: 2)
        #expect(parseError(intoHeader.bytes) == .pointerOutOfRange(at: 12, target: 2))

        var halfPointer = MessageBuilder(answers: 1)
        halfPointer.question("www.example.com")
        let h = halfPointer.offset
        halfPointer.bytes.append(0xC0)
        #expect(parseError(halfPointer.bytes) == .truncated(.name, at: h))
    }

    @Test func labelLengthsAbove63() {
        for first: UInt8 in [0x40, 0x7F, 0x80, 0xBF] {
            var m = MessageBuilder()
            m.bytes += [first, 0x61, 0]
            m.u16(1)
            m.u16(1)
            #expect(parseError(m.bytes) == .labelTooLong(Int(first)))
        }
    }

    @Test func namesLongerThan255BytesThroughPointers() {
        // Four 63-byte labels are 256 bytes with their length bytes, too many without the root.
        // The pieces sit in the data of a record of a type the parser skips.
        var m = MessageBuilder(answers: 2)
        m.question("www.example.com")
        let label = String(repeating: "x", count: 63)
        var tail = 0
        var mid = 0
        m.record(type: 99, owner: { $0.name("", pointer: 12) }, data: {
            tail = $0.name("\(label).\(label)")
            mid = $0.name("\(label)", pointer: tail)
        })
        m.record(type: 1, owner: { $0.name(label, pointer: mid) }, data: { $0.bytes += [1, 2, 3, 4] })
        #expect(parseError(m.bytes) == .nameTooLong(257))
    }

    @Test func recordLengthChecks() {
        var past = MessageBuilder(answers: 1)
        past.question("www.example.com")
        past.record(type: 1, owner: { $0.name("", pointer: 12) }, data: { $0.bytes += [1, 2, 3, 4] })
        past.bytes[past.bytes.count - 5] = 5  // RDLENGTH 5 with 4 bytes left
        #expect(parseError(past.bytes) == .truncated(.recordData, at: past.bytes.count - 4))

        var five = MessageBuilder(answers: 1)
        five.question("www.example.com")
        five.record(type: 1, owner: { $0.name("", pointer: 12) }, data: { $0.bytes += [1, 2, 3, 4, 5] })
        #expect(parseError(five.bytes) == .badRecordData(type: 1, length: 5))

        var six = MessageBuilder(answers: 1)
        six.question("www.example.com", type: 28)
        six.record(type: 28, owner: { $0.name("", pointer: 12) }, data: { $0.bytes += [1, 2, 3, 4, 5, 6] })
        #expect(parseError(six.bytes, type: .aaaa) == .badRecordData(type: 28, length: 6))

        var cname = MessageBuilder(answers: 1)
        cname.question("www.example.com")
        cname.record(type: 5, owner: { $0.name("", pointer: 12) }, data: { $0.name("x.test"); $0.bytes.append(0) })
        #expect(parseError(cname.bytes) == .badRecordData(type: 5, length: 9))

        var more = MessageBuilder(answers: 2)
        more.question("www.example.com")
        more.a(12, 1, 2, 3, 4)
        #expect(parseError(more.bytes) == .truncated(.name, at: more.bytes.count))

        var header = MessageBuilder(answers: 1)
        header.question("www.example.com")
        header.name("", pointer: 12)
        header.u16(1)
        #expect(parseError(header.bytes) == .truncated(.record, at: header.bytes.count - 4))
    }

    /// Random corruptions of a valid response: each parses or throws, and never crashes.
    @Test func corruptedResponsesNeverCrash() {
        let valid = compressedResponse()
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15
        func next() -> Int {
            state ^= state << 13
            state ^= state >> 7
            state ^= state << 17
            return Int(truncatingIfNeeded: state >> 1)
        }
        var outcomes = (parsed: 0, failed: 0)
        for _ in 0..<5000 {
            var m = valid
            for _ in 0..<(1 + next() % 4) {
                m[next() % m.count] = UInt8(truncatingIfNeeded: next())
            }
            if parseError(m) == nil { outcomes.parsed += 1 } else { outcomes.failed += 1 }
        }
        #expect(outcomes.parsed + outcomes.failed == 5000)
        #expect(outcomes.failed > 0)
    }

    @Test func namesFromTheWireAreEscapedForDisplay() throws {
        var m = MessageBuilder(answers: 1)
        m.question("www.example.com")
        m.record(type: 5, owner: { $0.name("", pointer: 12) }, data: { $0.bytes += [3, 0x61, 0x2E, 0x20, 0] })
        let answer = try DNSMessage.parseResponse(m.bytes, id: 0x1234, name: www, type: .a)
        #expect(answer.canonicalName.description == "a\\046\\032")
        #expect(answer.addresses.isEmpty)
    }
}
