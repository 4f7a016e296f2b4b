import Testing
@testable import TunnelCore

/// A decoded message with its views copied out, so it can be compared after the input is gone.
struct Decoded: Equatable, CustomStringConvertible {
    var type: Int32
    var streamId: Int32
    var ignorable: Bool
    var payload: [UInt8]
    var serviceId: [UInt8]
    var ids: [[UInt8]]
    var connectionId: UInt32

    init(_ m: TunnelMessage) {
        type = m.type.rawValue
        streamId = m.streamId
        ignorable = m.ignorable
        payload = Array(m.payload)
        serviceId = m.serviceId
        ids = m.availableServiceIds
        connectionId = m.connectionId
    }

    init(type: MessageType, streamId: Int32 = 0, ignorable: Bool = false, payload: [UInt8] = [],
         serviceId: String = "", ids: [String] = [], connectionId: UInt32 = 0) {
        self.type = type.rawValue
        self.streamId = streamId
        self.ignorable = ignorable
        self.payload = payload
        self.serviceId = Array(serviceId.utf8)
        self.ids = ids.map { Array($0.utf8) }
        self.connectionId = connectionId
    }

    var description: String {
        "type=\(type) stream=\(streamId) ign=\(ignorable) payload=\(hex(payload)) service=\(hex(serviceId)) ids=\(ids.map { hex($0) }) conn=\(connectionId)"
    }

    /// Encodes through the library (payload as a view of this value's bytes).
    func encoded() throws -> [UInt8] {
        try payload.withUnsafeBytes { view in
            try TunnelMessage(type: MessageType(rawValue: type), streamId: streamId, ignorable: ignorable, payload: view,
                              serviceId: serviceId, availableServiceIds: ids, connectionId: connectionId).encoded()
        }
    }
}

func decode(_ data: [UInt8]) throws(ProtobufDecodingError) -> Decoded {
    var result: Result<Decoded, ProtobufDecodingError> = .failure(ProtobufDecodingError(.truncated, offset: -1))
    data.withUnsafeBytes { view in
        do throws(ProtobufDecodingError) { result = .success(Decoded(try TunnelMessage.decode(view))) } catch { result = .failure(error) }
    }
    return try result.get()
}

@Suite("Protobuf Message codec")
struct TunnelMessageTests {
    /// docs/PROTOCOL.md §6.1, produced there with `protoc --encode` against the reference .proto.
    static let vectors: [(Decoded, String)] = [
        (Decoded(type: .streamStart, streamId: 1, serviceId: "SSH", connectionId: 1), "08 02 10 01 2A 03 53 53 48 38 01"),
        (Decoded(type: .data, streamId: 1, payload: Array("hi".utf8), serviceId: "SSH", connectionId: 1),
         "08 01 10 01 22 02 68 69 2A 03 53 53 48 38 01"),
        (Decoded(type: .serviceIds, ids: ["SSH1", "SSH2"]), "08 05 32 04 53 53 48 31 32 04 53 53 48 32"),
        (Decoded(type: .serviceIds), "08 05"),
        (Decoded(type: .streamReset, streamId: 1, serviceId: "SSH"), "08 03 10 01 2A 03 53 53 48"),
        (Decoded(type: .connectionReset, streamId: 1, serviceId: "SSH", connectionId: 2), "08 07 10 01 2A 03 53 53 48 38 02"),
        (Decoded(type: .sessionReset), "08 04"),
        (Decoded(type: .streamStart, streamId: -1), "08 02 10 FF FF FF FF FF FF FF FF FF 01"),
        // V1 format: no serviceId, no connectionId.
        (Decoded(type: .streamStart, streamId: 1), "08 02 10 01"),
    ]

    @Test("§6.1 vectors encode byte-exact", arguments: 0..<vectors.count)
    func encodesVector(_ i: Int) throws {
        let (message, expected) = Self.vectors[i]
        #expect(hex(try message.encoded()) == hex(bytes(expected)))
    }

    @Test("§6.1 vectors decode to the same fields", arguments: 0..<vectors.count)
    func decodesVector(_ i: Int) throws {
        let (message, encoded) = Self.vectors[i]
        #expect(try decode(bytes(encoded)) == message)
    }

    @Test func framedVectorHasBigEndianPrefix() throws {
        let message = try TunnelFrame.encode(
            TunnelMessage(type: .streamStart, streamId: 1, serviceId: Array("SSH".utf8), connectionId: 1))
        #expect(hex(message) == "000b080210012a035353483801")
    }

    @Test func payloadIsAViewIntoTheInput() throws {
        let input = bytes("08 01 10 01 22 02 68 69 2A 03 53 53 48 38 01")
        try input.withUnsafeBytes { view in
            let m = try TunnelMessage.decode(view)
            #expect(m.payload.baseAddress == view.baseAddress! + 6)
            #expect(m.payload.count == 2)
        }
    }

    @Test func acceptsAnyFieldOrderAndLastScalarWins() throws {
        // connectionId, serviceId, payload, streamId twice, type twice (aws-c-iot's order mixed up).
        let input = bytes("38 05 2A 01 41 22 01 7A 10 09 10 03 08 07 08 01 18 01")
        #expect(try decode(input) == Decoded(type: .data, streamId: 3, ignorable: true, payload: [0x7A],
                                             serviceId: "A", connectionId: 5))
    }

    @Test func skipsUnknownFieldsOfEveryWireType() throws {
        let input = bytes("""
            08 01
            48 96 01
            51 01 02 03 04 05 06 07 08
            5A 03 AA BB CC
            63 08 01 1A 01 FF 6B 08 02 6C 64
            75 01 02 03 04
            10 02
            """)
        // field 9 varint, 10 fixed64, 11 bytes, 12 group with nested fields and group 13, 14 fixed32
        #expect(try decode(input) == Decoded(type: .data, streamId: 2))
    }

    @Test func knownFieldWithOtherWireTypeIsSkippedAsUnknown() throws {
        // streamId (2) sent as length-delimited, payload (4) sent as varint: both ignored.
        let input = bytes("08 01 12 01 05 20 07 10 04")
        #expect(try decode(input) == Decoded(type: .data, streamId: 4))
    }

    @Test func valuesAreTruncatedLikeLibprotobuf() throws {
        // connectionId 2^32 + 3 keeps the low 32 bits; enum type 2^32 + 1 likewise.
        let input = bytes("08 81 80 80 80 10 38 83 80 80 80 10")
        #expect(try decode(input) == Decoded(type: .data, connectionId: 3))
        // A tenth varint byte with bits above 64 is accepted (and dropped).
        #expect(try decode(bytes("10 FF FF FF FF FF FF FF FF FF 7F")).streamId == -1)
    }

    @Test func emptyInputIsTheDefaultMessage() throws {
        #expect(try decode([]) == Decoded(type: .unknown))
    }

    @Test func largestPayloadIsAccepted() throws {
        let payload = [UInt8](repeating: 0xA5, count: TunnelMessage.maximumPayloadLength)
        let m = Decoded(type: .data, streamId: 1, payload: payload, serviceId: "SSH", connectionId: 1)
        let encoded = try m.encoded()
        #expect(try decode(encoded) == m)
    }

    // MARK: Malformed input: each gives its own typed error with field and offset.

    static let malformed: [(String, ProtobufDecodingError)] = [
        ("08", ProtobufDecodingError(.truncated, offset: 1, field: 1)),
        ("08 80", ProtobufDecodingError(.truncated, offset: 1, field: 1)),
        ("80", ProtobufDecodingError(.truncated, offset: 0)),
        ("08 01 10 FF FF FF FF FF FF FF FF FF FF 01", ProtobufDecodingError(.varintTooLong, offset: 3, field: 2)),
        ("00 01", ProtobufDecodingError(.invalidFieldNumber(0), offset: 0)),
        ("08 01 0E", ProtobufDecodingError(.invalidWireType(6), offset: 2, field: 1)),
        ("0F", ProtobufDecodingError(.invalidWireType(7), offset: 0, field: 1)),
        ("08 01 22 05 68 69", ProtobufDecodingError(.lengthPastEnd(claimed: 5, available: 2), offset: 3, field: 4)),
        ("2A FF FF FF FF 0F", ProtobufDecodingError(.lengthPastEnd(claimed: 0xFFFF_FFFF, available: 0), offset: 1, field: 5)),
        ("08 01 64", ProtobufDecodingError(.unmatchedEndGroup, offset: 2, field: 12)),
        ("63 6C", ProtobufDecodingError(.unmatchedEndGroup, offset: 1, field: 13)),
        ("63 08 01", ProtobufDecodingError(.truncated, offset: 3)),
        ("51 01 02 03", ProtobufDecodingError(.truncated, offset: 1, field: 10)),
        ("75 01", ProtobufDecodingError(.truncated, offset: 1, field: 14)),
        ("2A 02 C3 28", ProtobufDecodingError(.invalidUTF8, offset: 1, field: 5)),
        ("32 03 ED A0 80", ProtobufDecodingError(.invalidUTF8, offset: 1, field: 6)),
        ("80 80 80 80 10 01", ProtobufDecodingError(.invalidFieldNumber(0x1FFF_FFFF + 1), offset: 0)),
    ]

    @Test("malformed input gives its typed error", arguments: 0..<malformed.count)
    func rejectsMalformed(_ i: Int) {
        let (input, expected) = Self.malformed[i]
        #expect(throws: expected) { try decode(bytes(input)) }
    }

    @Test func rejectsPayloadOverTheLimitNamingIt() throws {
        var input = bytes("08 01 22 81 F8 03")  // length 64,513
        input += [UInt8](repeating: 0, count: 64_513)
        let error = try #require(throws: ProtobufDecodingError.self) { try decode(input) }
        #expect(error == ProtobufDecodingError(.payloadTooLarge(64_513), offset: 3, field: 4))
        #expect(error.description.contains("payload"))
        #expect(error.description.contains("64512"))
    }

    @Test func deeplyNestedGroupsAreRejectedNotRecursed() {
        var input: [UInt8] = []
        for _ in 0..<100_000 { input.append(0x63) }  // start group 12, nested
        #expect(throws: ProtobufDecodingError(.groupsTooDeep, offset: ProtobufReader.maximumGroupDepth, field: 12)) {
            try decode(input)
        }
    }

    @Test func errorDescriptionsNameFieldAndOffset() {
        let e = ProtobufDecodingError(.varintTooLong, offset: 3, field: 2)
        #expect(e.description == "protobuf varint longer than 10 bytes in field 2 (streamId) at byte 3")
    }

    // MARK: Encoder limits

    @Test func encoderRefusesOversizedPayload() throws {
        let payload = [UInt8](repeating: 1, count: TunnelMessage.maximumPayloadLength + 1)
        #expect(throws: TunnelEncodingError.payloadTooLarge(64_513)) {
            try Decoded(type: .data, streamId: 1, payload: payload).encoded()
        }
    }

    @Test func encoderRefusesMessagesOverTheFrameLimit() throws {
        let ids = [String](repeating: String(repeating: "x", count: 126), count: 600)
        #expect(throws: TunnelEncodingError.messageTooLarge(2 + 600 * 128)) {
            try Decoded(type: .serviceIds, ids: ids).encoded()
        }
    }

    @Test func headAndTailSplitAroundThePayload() throws {
        let m = TunnelMessage(type: .data, streamId: 300, ignorable: true, serviceId: Array("HTTP".utf8), connectionId: 70_000)
        #expect(m.headLength(payloadLength: 200) == 2 + 3 + 2 + 3)
        #expect(m.tailLength == 6 + 4)
        #expect(m.headLength(payloadLength: 0) == 2 + 3 + 2)
    }

    @Test func utf8ValidatorMatchesTheStandardLibrary() {
        // Every 1- and 2-byte sequence, and a spread of 3- and 4-byte ones, against String's own
        // validating initializer.
        var samples: [[UInt8]] = []
        for a in 0...255 { samples.append([UInt8(a)]) }
        for a in stride(from: 0xC0, through: 0xFF, by: 1) {
            for b in stride(from: 0, through: 255, by: 3) { samples.append([UInt8(a), UInt8(b)]) }
        }
        for a in [0xE0, 0xED, 0xEF, 0xF0, 0xF4, 0xF5] {
            for b in [0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0] {
                samples.append([UInt8(a), UInt8(b), 0x80])
                samples.append([UInt8(a), UInt8(b), 0x80, 0x80])
                samples.append([UInt8(a), UInt8(b)])
            }
        }
        for s in samples {
            let expected = String(validating: s, as: UTF8.self) != nil
            #expect(s.withUnsafeBytes { isValidUTF8($0) } == expected, "\(hex(s))")
        }
    }
}
