// Byte-level tests of the MQTT 3.1.1 codec (Sources/TunnelCore/MQTTPacket.swift): literal vectors
// written out from the OASIS standard (§2 fixed header, §3 packets), decoded whole, byte by byte
// and at every cut point, alone and concatenated; encoded back to the same bytes; every malformed
// case with its own error. Helpers here are private so that they cannot clash with other files.
import Testing
import TunnelCore

// MARK: Decoding runs

/// What one decoder produced from a stream cut into pieces.
private struct DecodeRun: Equatable, CustomStringConvertible {
    var packets: [MQTTPacket] = []
    var error: MQTTError? = nil
    /// Input bytes the decoder consumed.
    var consumed = 0
    /// The most bytes the decoder held between calls.
    var mostBuffered = 0

    var description: String {
        "\(packets.count) packets \(packets.map { $0.packetType.description }), error \(error.map { $0.description } ?? "none"), consumed \(consumed)"
    }
}

/// Feeds `pieces` to a fresh decoder, calling `next` until it needs more bytes or throws.
private func decode(_ pieces: [[UInt8]], limit: Int = 1 << 22) -> DecodeRun {
    var decoder = MQTTPacketDecoder(maximumPacketLength: limit)
    var run = DecodeRun()
    for piece in pieces where run.error == nil {
        piece.withUnsafeBytes { raw in
            var input = raw
            while run.error == nil {
                let before = input.count
                do throws(MQTTError) {
                    let packet = try decoder.next(&input)
                    run.consumed += before - input.count
                    run.mostBuffered = max(run.mostBuffered, decoder.bufferedByteCount)
                    guard let packet else {
                        #expect(input.isEmpty, "nil returned with \(input.count) bytes left")
                        return
                    }
                    run.packets.append(packet)
                } catch {
                    run.consumed += before - input.count
                    run.error = error
                }
            }
        }
    }
    return run
}

private func decode(_ stream: [UInt8], cutAt lengths: [Int], limit: Int = 1 << 22) -> DecodeRun {
    decode(cut(stream, lengths), limit: limit)
}

private func utf8(_ s: String) -> [UInt8] { Array(s.utf8) }

/// One call to `next`: the packet, or nil and the error (`try?` would merge "needs more bytes"
/// and "threw" into one nil).
private func step(_ decoder: inout MQTTPacketDecoder, _ input: inout UnsafeRawBufferPointer) -> (packet: MQTTPacket?, error: MQTTError?) {
    do throws(MQTTError) {
        return (try decoder.next(&input), nil)
    } catch {
        return (nil, error)
    }
}

private let notifyTopic = "$aws/things/gw1/tunnels/notify"
private let notifyTopicHex = "24 61 77 73 2F 74 68 69 6E 67 73 2F 67 77 31 2F 74 75 6E 6E 65 6C 73 2F 6E 6F 74 69 66 79"

// MARK: Vectors

/// One packet and its exact bytes.
struct MQTTVector: Sendable, CustomTestStringConvertible {
    var name: String
    var hex: String
    var packet: MQTTPacket
    var testDescription: String { name }
}

private let vectors: [MQTTVector] = [
    // §3.1: protocol name "MQTT", level 4, flags 0x02 (clean session), keep-alive 60, client id.
    MQTTVector(name: "CONNECT gw1, keep-alive 60, clean session",
               hex: "10 0F 00 04 4D 51 54 54 04 02 00 3C 00 03 67 77 31",
               packet: .connect(clientId: "gw1", keepAliveSeconds: 60, cleanSession: true, username: nil, password: nil)),
    // Flags 0xC0: user name and password, no clean session; keep-alive 0.
    MQTTVector(name: "CONNECT with user name and password",
               hex: "10 19 00 04 4D 51 54 54 04 C0 00 00 00 03 64 65 76 00 04 75 73 65 72 00 02 70 77",
               packet: .connect(clientId: "dev", keepAliveSeconds: 0, cleanSession: false, username: "user", password: utf8("pw"))),
    MQTTVector(name: "CONNECT with an empty client id and clean session",
               hex: "10 0C 00 04 4D 51 54 54 04 02 FF FF 00 00",
               packet: .connect(clientId: "", keepAliveSeconds: 65_535, cleanSession: true, username: nil, password: nil)),
    MQTTVector(name: "CONNACK accepted", hex: "20 02 00 00", packet: .connack(sessionPresent: false, returnCode: 0)),
    MQTTVector(name: "CONNACK accepted, session present", hex: "20 02 01 00", packet: .connack(sessionPresent: true, returnCode: 0)),
    MQTTVector(name: "CONNACK not authorized", hex: "20 02 00 05", packet: .connack(sessionPresent: false, returnCode: 5)),
    MQTTVector(name: "PUBLISH QoS 0", hex: "30 07 00 03 61 2F 62 68 69",
               packet: .publish(MQTTPublish(topic: "a/b", payload: utf8("hi")))),
    MQTTVector(name: "PUBLISH QoS 0, retained, empty payload", hex: "31 03 00 01 74",
               packet: .publish(MQTTPublish(topic: "t", payload: [], retain: true))),
    MQTTVector(name: "PUBLISH QoS 1 to the notify topic, id 10",
               hex: "32 24 00 1E " + notifyTopicHex + " 00 0A 7B 7D",
               packet: .publish(MQTTPublish(topic: notifyTopic, payload: utf8("{}"), qos: 1, packetId: 10))),
    MQTTVector(name: "PUBLISH QoS 1, DUP and retain, id 65535", hex: "3B 06 00 01 78 FF FF 00",
               packet: .publish(MQTTPublish(topic: "x", payload: [0], qos: 1, retain: true, duplicate: true, packetId: 65_535))),
    MQTTVector(name: "PUBLISH with a UTF-8 topic (caf\u{E9})", hex: "30 07 00 05 63 61 66 C3 A9",
               packet: .publish(MQTTPublish(topic: "caf\u{E9}", payload: []))),
    MQTTVector(name: "PUBACK id 10", hex: "40 02 00 0A", packet: .puback(packetId: 10)),
    MQTTVector(name: "SUBSCRIBE the notify topic at QoS 1",
               hex: "82 23 00 01 00 1E " + notifyTopicHex + " 01",
               packet: .subscribe(packetId: 1, filters: [MQTTSubscription(topicFilter: notifyTopic, qos: 1)])),
    MQTTVector(name: "SUBSCRIBE two filters with wildcards",
               hex: "82 0E 01 00 00 03 61 2F 23 00 00 03 2B 2F 62 01",
               packet: .subscribe(packetId: 256, filters: [MQTTSubscription(topicFilter: "a/#", qos: 0),
                                                             MQTTSubscription(topicFilter: "+/b", qos: 1)])),
    MQTTVector(name: "SUBACK granted QoS 1", hex: "90 03 00 01 01", packet: .suback(packetId: 1, returnCodes: [1])),
    MQTTVector(name: "SUBACK of every return code", hex: "90 06 12 34 00 01 02 80",
               packet: .suback(packetId: 0x1234, returnCodes: [0, 1, 2, 0x80])),
    MQTTVector(name: "UNSUBSCRIBE a/+", hex: "A2 07 00 02 00 03 61 2F 2B", packet: .unsubscribe(packetId: 2, filters: ["a/+"])),
    MQTTVector(name: "UNSUBACK id 2", hex: "B0 02 00 02", packet: .unsuback(packetId: 2)),
    MQTTVector(name: "PINGREQ", hex: "C0 00", packet: .pingreq),
    MQTTVector(name: "PINGRESP", hex: "D0 00", packet: .pingresp),
    MQTTVector(name: "DISCONNECT", hex: "E0 00", packet: .disconnect),
]

// MARK: Malformed input

/// One malformed stream, the packets decoded before the error, the exact error and how many
/// bytes the decoder consumed up to it.
struct MQTTErrorCase: Sendable, CustomTestStringConvertible {
    var name: String
    var hex: String
    var error: MQTTError
    var consumed: Int
    /// Text the description must contain.
    var mention: String
    var before: [MQTTPacket] = []
    var limit = 1 << 22
    var testDescription: String { name }
}

private let errorCases: [MQTTErrorCase] = [
    MQTTErrorCase(name: "packet type 0", hex: "00 00", error: .reservedPacketType(0), consumed: 1, mention: "type 0 is reserved"),
    MQTTErrorCase(name: "packet type 15", hex: "F0 00", error: .reservedPacketType(15), consumed: 1, mention: "type 15 is reserved"),
    MQTTErrorCase(name: "SUBSCRIBE with flags 0000", hex: "80 06 00 01 00 01 61 01",
                  error: .invalidFlags(.subscribe, flags: 0, required: 2), consumed: 1, mention: "must be 0x82"),
    MQTTErrorCase(name: "UNSUBSCRIBE with flags 0000", hex: "A0 05 00 01 00 01 61",
                  error: .invalidFlags(.unsubscribe, flags: 0, required: 2), consumed: 1, mention: "must be 0xa2"),
    MQTTErrorCase(name: "PUBREL with flags 0000", hex: "60 02 00 01",
                  error: .invalidFlags(.pubrel, flags: 0, required: 2), consumed: 1, mention: "must be 0x62"),
    MQTTErrorCase(name: "CONNACK with flags 0001", hex: "21 02 00 00",
                  error: .invalidFlags(.connack, flags: 1, required: 0), consumed: 1, mention: "CONNACK has flags 0x1"),
    MQTTErrorCase(name: "PINGREQ with flags 1000", hex: "C8 00",
                  error: .invalidFlags(.pingreq, flags: 8, required: 0), consumed: 1, mention: "PINGREQ"),
    MQTTErrorCase(name: "PUBREC", hex: "50 02 00 01", error: .qos2NotSupported("MQTT PUBREC packet"), consumed: 1,
                  mention: "QoS 2 is not supported"),
    MQTTErrorCase(name: "PUBREL", hex: "62 02 00 01", error: .qos2NotSupported("MQTT PUBREL packet"), consumed: 1,
                  mention: "QoS 2 is not supported"),
    MQTTErrorCase(name: "PUBCOMP", hex: "70 02 00 01", error: .qos2NotSupported("MQTT PUBCOMP packet"), consumed: 1,
                  mention: "QoS 2 is not supported"),
    MQTTErrorCase(name: "PUBLISH QoS 2", hex: "34 05 00 01 61 00 01", error: .qos2NotSupported("MQTT PUBLISH with QoS 2"),
                  consumed: 1, mention: "QoS 2 is not supported"),
    MQTTErrorCase(name: "PUBLISH QoS 3", hex: "36 05 00 01 61 00 01", error: .invalidQoS(3), consumed: 1, mention: "QoS 3 does not exist"),
    MQTTErrorCase(name: "PUBLISH QoS 0 with DUP", hex: "38 03 00 01 61", error: .duplicateFlagWithQoS0, consumed: 1, mention: "DUP"),
    MQTTErrorCase(name: "remaining length of 5 bytes", hex: "30 FF FF FF FF 01", error: .remainingLengthTooLong, consumed: 5,
                  mention: "past 4 bytes"),
    MQTTErrorCase(name: "remaining length 0 in 2 bytes", hex: "D0 80 00", error: .nonMinimalRemainingLength(0, bytes: 2),
                  consumed: 3, mention: "written in 2 bytes"),
    MQTTErrorCase(name: "remaining length 127 in 3 bytes", hex: "30 FF 80 00", error: .nonMinimalRemainingLength(127, bytes: 3),
                  consumed: 4, mention: "127"),
    MQTTErrorCase(name: "remaining length 0 in 4 bytes", hex: "30 80 80 80 00", error: .nonMinimalRemainingLength(0, bytes: 4),
                  consumed: 5, mention: "4 bytes"),
    MQTTErrorCase(name: "packet over the limit is refused before its body", hex: "30 0F 00 01 61",
                  error: .packetTooLarge(length: 17, limit: 16), consumed: 2, mention: "limit of 16 bytes", limit: 16),
    MQTTErrorCase(name: "the largest remaining length, over the limit", hex: "30 FF FF FF 7F",
                  error: .packetTooLarge(length: 268_435_460, limit: 1 << 22), consumed: 5, mention: "268435460"),
    MQTTErrorCase(name: "remaining length 2097152, over the limit", hex: "30 80 80 80 01",
                  error: .packetTooLarge(length: 2_097_157, limit: 1 << 20), consumed: 5, mention: "2097157", limit: 1 << 20),
    MQTTErrorCase(name: "PINGRESP with a body", hex: "D0 01 00", error: .wrongRemainingLength(.pingresp, length: 1, required: 0),
                  consumed: 2, mention: "must be 0"),
    MQTTErrorCase(name: "DISCONNECT with a body", hex: "E0 02 00 00", error: .wrongRemainingLength(.disconnect, length: 2, required: 0),
                  consumed: 2, mention: "DISCONNECT"),
    MQTTErrorCase(name: "CONNACK of 3 bytes", hex: "20 03 00 00 00", error: .wrongRemainingLength(.connack, length: 3, required: 2),
                  consumed: 2, mention: "must be 2"),
    MQTTErrorCase(name: "PUBACK of 1 byte", hex: "40 01 00", error: .wrongRemainingLength(.puback, length: 1, required: 2),
                  consumed: 2, mention: "PUBACK"),
    MQTTErrorCase(name: "UNSUBACK of 3 bytes", hex: "B0 03 00 01 00", error: .wrongRemainingLength(.unsuback, length: 3, required: 2),
                  consumed: 2, mention: "UNSUBACK"),
    MQTTErrorCase(name: "PUBACK id 0", hex: "40 02 00 00", error: .zeroPacketId(.puback), consumed: 4, mention: "packet identifier 0"),
    MQTTErrorCase(name: "UNSUBACK id 0", hex: "B0 02 00 00", error: .zeroPacketId(.unsuback), consumed: 4, mention: "UNSUBACK"),
    MQTTErrorCase(name: "CONNACK reserved flag bits", hex: "20 02 02 00", error: .invalidConnackFlags(2), consumed: 4,
                  mention: "reserved bits"),
    MQTTErrorCase(name: "CONNACK return code 6", hex: "20 02 00 06", error: .invalidConnackReturnCode(6), consumed: 4,
                  mention: "return code 6"),
    MQTTErrorCase(name: "CONNACK refusal with session present", hex: "20 02 01 05", error: .sessionPresentWithRefusal(returnCode: 5),
                  consumed: 4, mention: "not authorized"),
    MQTTErrorCase(name: "PUBLISH without a topic length", hex: "30 01 00", error: .truncated(.publish, field: "topic name length"),
                  consumed: 3, mention: "ends inside its topic name length"),
    MQTTErrorCase(name: "PUBLISH topic longer than the packet", hex: "30 03 00 02 61", error: .truncated(.publish, field: "topic name"),
                  consumed: 5, mention: "topic name"),
    MQTTErrorCase(name: "PUBLISH with an empty topic", hex: "30 02 00 00", error: .emptyTopicName, consumed: 4, mention: "empty topic"),
    MQTTErrorCase(name: "PUBLISH topic with +", hex: "30 05 00 03 61 2F 2B", error: .wildcardInTopicName("a/+"), consumed: 7,
                  mention: "\"a/+\""),
    MQTTErrorCase(name: "PUBLISH topic with #", hex: "30 03 00 01 23", error: .wildcardInTopicName("#"), consumed: 5, mention: "wildcard"),
    MQTTErrorCase(name: "PUBLISH topic not UTF-8", hex: "30 04 00 02 C3 28", error: .invalidUTF8(field: "topic name"), consumed: 6,
                  mention: "not valid UTF-8"),
    MQTTErrorCase(name: "PUBLISH topic with a UTF-16 surrogate", hex: "30 05 00 03 ED A0 80", error: .invalidUTF8(field: "topic name"),
                  consumed: 7, mention: "UTF-8"),
    MQTTErrorCase(name: "PUBLISH topic with U+0000", hex: "30 04 00 02 61 00", error: .nullCharacter(field: "topic name"), consumed: 6,
                  mention: "U+0000"),
    MQTTErrorCase(name: "PUBLISH QoS 1 without a packet id", hex: "32 03 00 01 61", error: .truncated(.publish, field: "packet identifier"),
                  consumed: 5, mention: "packet identifier"),
    MQTTErrorCase(name: "PUBLISH QoS 1 with id 0", hex: "32 05 00 01 61 00 00", error: .zeroPacketId(.publish), consumed: 7,
                  mention: "PUBLISH has packet identifier 0"),
    MQTTErrorCase(name: "SUBSCRIBE without filters", hex: "82 02 00 01", error: .emptyList(.subscribe), consumed: 4, mention: "no topic filter"),
    MQTTErrorCase(name: "SUBSCRIBE asking QoS 2", hex: "82 06 00 01 00 01 61 02",
                  error: .qos2NotSupported("MQTT subscription to \"a\" with QoS 2"), consumed: 8, mention: "QoS 2 is not supported"),
    MQTTErrorCase(name: "SUBSCRIBE asking QoS 3", hex: "82 06 00 01 00 01 61 03", error: .invalidSubscriptionOptions(3), consumed: 8,
                  mention: "byte 0x3"),
    MQTTErrorCase(name: "SUBSCRIBE with reserved option bits", hex: "82 06 00 01 00 01 61 04", error: .invalidSubscriptionOptions(4),
                  consumed: 8, mention: "reserved bits"),
    MQTTErrorCase(name: "SUBSCRIBE without the requested QoS", hex: "82 05 00 01 00 01 61", error: .truncated(.subscribe, field: "requested QoS"),
                  consumed: 7, mention: "requested QoS"),
    MQTTErrorCase(name: "SUBSCRIBE id 0", hex: "82 06 00 00 00 01 61 01", error: .zeroPacketId(.subscribe), consumed: 8, mention: "SUBSCRIBE"),
    MQTTErrorCase(name: "SUBSCRIBE filter with # not last", hex: "82 07 00 01 00 02 23 61 01",
                  error: .invalidTopicFilter("#a", reason: "'#' must be the last character and alone in its level (as in \"a/#\")"),
                  consumed: 9, mention: "\"#a\" is invalid"),
    MQTTErrorCase(name: "SUBSCRIBE filter with a# ", hex: "82 07 00 01 00 02 61 23 01",
                  error: .invalidTopicFilter("a#", reason: "'#' must be the last character and alone in its level (as in \"a/#\")"),
                  consumed: 9, mention: "'#'"),
    MQTTErrorCase(name: "SUBSCRIBE filter with a+b", hex: "82 08 00 01 00 03 61 2B 62 01",
                  error: .invalidTopicFilter("a+b", reason: "'+' must be alone in its level (as in \"a/+/b\")"), consumed: 10, mention: "'+'"),
    MQTTErrorCase(name: "SUBSCRIBE with an empty filter", hex: "82 05 00 01 00 00 01",
                  error: .invalidTopicFilter("", reason: "it is empty"), consumed: 7, mention: "empty"),
    MQTTErrorCase(name: "SUBACK without return codes", hex: "90 02 00 01", error: .emptyList(.suback), consumed: 4, mention: "no return code"),
    MQTTErrorCase(name: "SUBACK return code 3", hex: "90 03 00 01 03", error: .invalidSubackReturnCode(3), consumed: 5, mention: "0x3"),
    MQTTErrorCase(name: "SUBACK return code 0x81", hex: "90 04 00 01 01 81", error: .invalidSubackReturnCode(0x81), consumed: 6, mention: "0x81"),
    MQTTErrorCase(name: "UNSUBSCRIBE without filters", hex: "A2 02 00 01", error: .emptyList(.unsubscribe), consumed: 4, mention: "UNSUBSCRIBE"),
    MQTTErrorCase(name: "CONNECT for MQTT 3.1 (MQIsdp, level 3)", hex: "10 0E 00 06 4D 51 49 73 64 70 03 02 00 3C 00 00",
                  error: .unsupportedProtocol(name: "MQIsdp", level: 3), consumed: 16, mention: "\"MQIsdp\" level 3"),
    MQTTErrorCase(name: "CONNECT level 5", hex: "10 0D 00 04 4D 51 54 54 05 02 00 3C 00 01 61",
                  error: .unsupportedProtocol(name: "MQTT", level: 5), consumed: 15, mention: "level 5"),
    MQTTErrorCase(name: "CONNECT reserved flag", hex: "10 0D 00 04 4D 51 54 54 04 03 00 3C 00 01 61",
                  error: .invalidConnectFlags(3, reason: "the reserved bit 0 is set"), consumed: 15, mention: "reserved bit"),
    MQTTErrorCase(name: "CONNECT with a will", hex: "10 0D 00 04 4D 51 54 54 04 06 00 3C 00 01 61",
                  error: .invalidConnectFlags(6, reason: "a will message is not supported by this client"), consumed: 15, mention: "will"),
    MQTTErrorCase(name: "CONNECT with will QoS but no will", hex: "10 0D 00 04 4D 51 54 54 04 0A 00 3C 00 01 61",
                  error: .invalidConnectFlags(0x0A, reason: "will QoS or will retain is set without the will flag"), consumed: 15,
                  mention: "without the will flag"),
    MQTTErrorCase(name: "CONNECT with a password but no user name", hex: "10 11 00 04 4D 51 54 54 04 42 00 3C 00 01 61 00 02 70 77",
                  error: .invalidConnectFlags(0x42, reason: "a password needs a user name (MQTT 3.1.1 §3.1.2.9)"), consumed: 19,
                  mention: "needs a user name"),
    MQTTErrorCase(name: "CONNECT with an empty client id and no clean session", hex: "10 0C 00 04 4D 51 54 54 04 00 00 3C 00 00",
                  error: .emptyClientIdWithoutCleanSession, consumed: 14, mention: "empty client identifier"),
    MQTTErrorCase(name: "CONNECT with a byte after the client id", hex: "10 10 00 04 4D 51 54 54 04 02 00 3C 00 03 67 77 31 FF",
                  error: .trailingBytes(.connect, count: 1), consumed: 18, mention: "1 bytes after its last field"),
    MQTTErrorCase(name: "CONNECT with the user name flag but no user name", hex: "10 0F 00 04 4D 51 54 54 04 82 00 3C 00 03 67 77 31",
                  error: .truncated(.connect, field: "user name length"), consumed: 17, mention: "user name length"),
    MQTTErrorCase(name: "CONNECT client id not UTF-8", hex: "10 0D 00 04 4D 51 54 54 04 02 00 3C 00 01 FF",
                  error: .invalidUTF8(field: "client identifier"), consumed: 15, mention: "client identifier is not valid UTF-8"),
    MQTTErrorCase(name: "CONNECT cut inside the protocol name", hex: "10 03 00 04 4D",
                  error: .truncated(.connect, field: "protocol name"), consumed: 5, mention: "protocol name"),
    // After valid packets: those come out first, and the error is the same however cut.
    MQTTErrorCase(name: "garbage after a PINGRESP", hex: "D0 00 00 00", error: .reservedPacketType(0), consumed: 3,
                  mention: "reserved", before: [.pingresp]),
    MQTTErrorCase(name: "PUBREL after a PUBLISH and a PUBACK", hex: "30 07 00 03 61 2F 62 68 69 40 02 00 0A 62 02 00 0A",
                  error: .qos2NotSupported("MQTT PUBREL packet"), consumed: 14, mention: "PUBREL",
                  before: [.publish(MQTTPublish(topic: "a/b", payload: utf8("hi"))), .puback(packetId: 10)]),
]

// MARK: Tests

@Suite("MQTT 3.1.1 codec")
struct MQTTPacketTests {

    @Test("Vectors decode to their packet, whole and at every cut", arguments: vectors)
    func decodesVector(_ vector: MQTTVector) {
        let stream = bytes(vector.hex)
        let expected = DecodeRun(packets: [vector.packet], consumed: stream.count)
        for lengths in splits(of: stream.count) {
            var run = decode(stream, cutAt: lengths)
            #expect(run.mostBuffered < stream.count, "pieces \(lengths)")
            run.mostBuffered = 0
            #expect(run == expected, "pieces \(lengths)")
        }
    }

    @Test("Vectors encode to their exact bytes", arguments: vectors)
    func encodesVector(_ vector: MQTTVector) throws {
        let encoded = try vector.packet.encoded()
        #expect(hex(encoded) == hex(bytes(vector.hex)))
    }

    @Test("All vectors concatenated: every cut gives every packet in order")
    func concatenatedVectors() {
        let stream = vectors.flatMap { bytes($0.hex) }
        let expected = DecodeRun(packets: vectors.map(\.packet), consumed: stream.count)
        for lengths in splits(of: stream.count) {
            var run = decode(stream, cutAt: lengths)
            run.mostBuffered = 0
            #expect(run == expected, "pieces \(lengths)")
        }
        // Several packets in one piece come out one per call, with the rest left in the input.
        var decoder = MQTTPacketDecoder(maximumPacketLength: 1024)
        stream.withUnsafeBytes { raw in
            var input = raw
            var offset = 0
            for vector in vectors {
                let result = step(&decoder, &input)
                offset += bytes(vector.hex).count
                #expect(result.packet == vector.packet)
                #expect(result.error == nil)
                #expect(input.count == stream.count - offset, "\(vector.name)")
            }
            let last = step(&decoder, &input)
            #expect(last.packet == nil && last.error == nil)
        }
    }

    @Test("CONNACK return codes have their §3.2.2.3 texts")
    func connackReasons() {
        #expect(MQTTPacket.connackReason(0) == "connection accepted")
        #expect(MQTTPacket.connackReason(1) == "unacceptable protocol version")
        #expect(MQTTPacket.connackReason(2) == "identifier rejected")
        #expect(MQTTPacket.connackReason(3) == "server unavailable")
        #expect(MQTTPacket.connackReason(4) == "bad user name or password")
        #expect(MQTTPacket.connackReason(5) == "not authorized")
        #expect(MQTTPacket.connackReason(6) == "reserved return code 6")
        for code: UInt8 in 1...5 {
            let packet = MQTTPacket.connack(sessionPresent: false, returnCode: code)
            #expect((try? packet.encoded()) == [0x20, 0x02, 0x00, code])
            #expect(decode([[0x20, 0x02, 0x00, code]]).packets == [packet])
        }
    }

    // MARK: Remaining length

    /// §2.2.3 Table 2.4: the bounds of each encoded length.
    private static let remainingLengths: [(Int, String)] = [
        (0, "00"), (127, "7F"), (128, "80 01"), (16_383, "FF 7F"), (16_384, "80 80 01"),
        (2_097_151, "FF FF 7F"), (2_097_152, "80 80 80 01"), (268_435_455, "FF FF FF 7F"),
    ]

    @Test("Remaining length boundaries encode to §2.2.3's bytes")
    func remainingLengthBytes() throws {
        for (value, expected) in Self.remainingLengths {
            #expect(hex(try MQTTPacket.remainingLengthBytes(value)) == hex(bytes(expected)), "\(value)")
        }
        #expect(throws: MQTTError.remainingLengthOutOfRange(268_435_456)) { try MQTTPacket.remainingLengthBytes(268_435_456) }
        #expect(throws: MQTTError.remainingLengthOutOfRange(-1)) { try MQTTPacket.remainingLengthBytes(-1) }
    }

    @Test("PUBLISH packets at each remaining-length boundary round-trip", arguments: [127, 128, 16_383, 16_384, 2_097_151, 2_097_152])
    func publishAtBoundary(remaining: Int) throws {
        // Topic "t" takes 3 bytes; the payload fills the rest.
        let payload = (0..<(remaining - 3)).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        let packet = MQTTPacket.publish(MQTTPublish(topic: "t", payload: payload))
        let encoded = try packet.encoded()
        let header = try #require(Self.remainingLengths.first { $0.0 == remaining }).1
        let expectedHead = [0x30] + bytes(header) + [0x00, 0x01, 0x74]
        #expect(hex(encoded.prefix(expectedHead.count)) == hex(expectedHead))
        #expect(encoded.count == 1 + bytes(header).count + remaining)
        #expect(decode([encoded]).packets == [packet])
        // Cut inside the header and in the middle of the body.
        #expect(decode(encoded, cutAt: [2, encoded.count - 2]).packets == [packet])
        #expect(decode(encoded, cutAt: [encoded.count / 2, encoded.count - encoded.count / 2]).packets == [packet])
        // Exactly at the limit it passes; one byte less refuses it.
        #expect(decode([encoded], limit: encoded.count).packets == [packet])
        #expect(decode([encoded], limit: encoded.count - 1).error == .packetTooLarge(length: encoded.count, limit: encoded.count - 1))
    }

    @Test("Remaining length 0 (PINGRESP) and a 5th length byte")
    func remainingLengthEdges() {
        #expect(decode([bytes("D0 00")]).packets == [.pingresp])
        let run = decode([bytes("30 FF FF FF FF 01")])
        #expect(run.error == .remainingLengthTooLong)
        #expect(run.consumed == 5)
    }

    // MARK: Errors

    @Test("Malformed input gives its own error, the same at every cut", arguments: errorCases)
    func malformed(_ c: MQTTErrorCase) {
        let stream = bytes(c.hex)
        let expected = DecodeRun(packets: c.before, error: c.error, consumed: c.consumed)
        for lengths in splits(of: stream.count) {
            var run = decode(stream, cutAt: lengths, limit: c.limit)
            #expect(run.mostBuffered <= c.limit)
            run.mostBuffered = 0
            #expect(run == expected, "pieces \(lengths)")
        }
        #expect(c.error.description.contains(c.mention), "\(c.error.description)")
    }

    @Test("A failed decoder throws the same error again and consumes nothing")
    func failedDecoderStays() {
        var decoder = MQTTPacketDecoder(maximumPacketLength: 64)
        let stream = bytes("62 02 00 01 D0 00")
        stream.withUnsafeBytes { raw in
            var input = raw
            #expect(throws: MQTTError.qos2NotSupported("MQTT PUBREL packet")) { try decoder.next(&input) }
            #expect(input.count == 5)
            #expect(decoder.isFailed)
            #expect(throws: MQTTError.qos2NotSupported("MQTT PUBREL packet")) { try decoder.next(&input) }
            #expect(input.count == 5)
        }
    }

    @Test("A packet over the limit is refused on its header; nothing of it is buffered")
    func limitBeforeBuffering() {
        var decoder = MQTTPacketDecoder(maximumPacketLength: 100)
        // A PUBLISH announcing 99 bytes of remaining length (101 in all), given its header only.
        let header = bytes("30 63")
        header.withUnsafeBytes { raw in
            var input = UnsafeRawBufferPointer(rebasing: raw[0..<1])
            let first = step(&decoder, &input)
            #expect(first.packet == nil && first.error == nil)
            // The fixed header is held as decoded values, not as buffered bytes.
            #expect(decoder.bufferedByteCount == 0)
            input = UnsafeRawBufferPointer(rebasing: raw[1...])
            #expect(throws: MQTTError.packetTooLarge(length: 101, limit: 100)) { try decoder.next(&input) }
            #expect(decoder.bufferedByteCount == 0)
        }
        // 98 bytes of remaining length (100 in all) are accepted; at most 97 body bytes are
        // held before the last one completes the packet.
        var accepting = MQTTPacketDecoder(maximumPacketLength: 100)
        let packet = MQTTPacket.publish(MQTTPublish(topic: "t", payload: [UInt8](repeating: 0x55, count: 95)))
        let encoded = try! packet.encoded()
        #expect(encoded.count == 100)
        var most = 0
        var got: [MQTTPacket] = []
        for piece in cut(encoded, [Int](repeating: 1, count: 100)) {
            piece.withUnsafeBytes { raw in
                var input = raw
                let result = step(&accepting, &input)
                #expect(result.error == nil)
                if let p = result.packet { got.append(p) }
                most = max(most, accepting.bufferedByteCount)
            }
        }
        #expect(got == [packet])
        #expect(most == 97)
        #expect(accepting.bufferedByteCount == 0)
    }

    // MARK: Encoder checks

    @Test("The encoder refuses what MQTT 3.1.1 or this client does not allow")
    func encoderErrors() {
        func refuses(_ packet: MQTTPacket, _ error: MQTTError, _ comment: Comment? = nil) {
            #expect(throws: error, comment) { try packet.encoded() }
        }
        func pub(_ topic: String, qos: UInt8 = 0, dup: Bool = false, id: UInt16? = nil) -> MQTTPacket {
            .publish(MQTTPublish(topic: topic, payload: [1], qos: qos, retain: false, duplicate: dup, packetId: id))
        }
        refuses(pub("a/+"), .wildcardInTopicName("a/+"))
        refuses(pub("#"), .wildcardInTopicName("#"))
        refuses(pub(""), .emptyTopicName)
        refuses(pub("a\u{0}b"), .nullCharacter(field: "topic name"))
        refuses(pub("t", qos: 2, id: 1), .qos2NotSupported("MQTT PUBLISH with QoS 2"))
        refuses(pub("t", qos: 3, id: 1), .invalidQoS(3))
        refuses(pub("t", qos: 1), .packetIdDoesNotMatchQoS(qos: 1, hasPacketId: false))
        refuses(pub("t", qos: 0, id: 5), .packetIdDoesNotMatchQoS(qos: 0, hasPacketId: true))
        refuses(pub("t", qos: 1, id: 0), .zeroPacketId(.publish))
        refuses(pub("t", dup: true), .duplicateFlagWithQoS0)
        let longTopic = String(repeating: "a", count: 65_536)
        refuses(pub(longTopic), .fieldTooLong(field: "topic name", length: 65_536))
        #expect((try? pub(String(repeating: "a", count: 65_535)).encoded())?.count == 1 + 3 + 2 + 65_535 + 1)

        refuses(.connect(clientId: "a\u{0}", keepAliveSeconds: 1, cleanSession: true, username: nil, password: nil),
                .nullCharacter(field: "client identifier"))
        refuses(.connect(clientId: longTopic, keepAliveSeconds: 1, cleanSession: true, username: nil, password: nil),
                .fieldTooLong(field: "client identifier", length: 65_536))
        refuses(.connect(clientId: "", keepAliveSeconds: 1, cleanSession: false, username: nil, password: nil),
                .emptyClientIdWithoutCleanSession)
        refuses(.connect(clientId: "c", keepAliveSeconds: 1, cleanSession: true, username: nil, password: [1]),
                .invalidConnectFlags(0x42, reason: "a password needs a user name (MQTT 3.1.1 §3.1.2.9)"))
        refuses(.connect(clientId: "c", keepAliveSeconds: 1, cleanSession: true, username: "u", password: [UInt8](repeating: 0, count: 65_536)),
                .fieldTooLong(field: "password", length: 65_536))
        refuses(.connack(sessionPresent: false, returnCode: 6), .invalidConnackReturnCode(6))
        refuses(.connack(sessionPresent: true, returnCode: 1), .sessionPresentWithRefusal(returnCode: 1))
        refuses(.puback(packetId: 0), .zeroPacketId(.puback))
        refuses(.unsuback(packetId: 0), .zeroPacketId(.unsuback))
        refuses(.subscribe(packetId: 0, filters: [MQTTSubscription(topicFilter: "a", qos: 0)]), .zeroPacketId(.subscribe))
        refuses(.subscribe(packetId: 1, filters: []), .emptyList(.subscribe))
        refuses(.subscribe(packetId: 1, filters: [MQTTSubscription(topicFilter: "a", qos: 2)]),
                .qos2NotSupported("MQTT subscription to \"a\" with QoS 2"))
        refuses(.subscribe(packetId: 1, filters: [MQTTSubscription(topicFilter: "a", qos: 3)]), .invalidQoS(3))
        refuses(.subscribe(packetId: 1, filters: [MQTTSubscription(topicFilter: "a/#/b", qos: 0)]),
                .invalidTopicFilter("a/#/b", reason: "'#' must be the last character and alone in its level (as in \"a/#\")"))
        refuses(.subscribe(packetId: 1, filters: [MQTTSubscription(topicFilter: "a/b+", qos: 0)]),
                .invalidTopicFilter("a/b+", reason: "'+' must be alone in its level (as in \"a/+/b\")"))
        refuses(.suback(packetId: 1, returnCodes: []), .emptyList(.suback))
        refuses(.suback(packetId: 1, returnCodes: [0x03]), .invalidSubackReturnCode(3))
        refuses(.unsubscribe(packetId: 1, filters: []), .emptyList(.unsubscribe))
        refuses(.unsubscribe(packetId: 1, filters: ["+x"]), .invalidTopicFilter("+x", reason: "'+' must be alone in its level (as in \"a/+/b\")"))
    }

    @Test("Valid wildcard filters are accepted")
    func validFilters() throws {
        for filter in ["#", "+", "/", "a/#", "+/+", "/+/", "a/+/b/#", "$aws/things/+/tunnels/notify", "sport/tennis/+"] {
            let packet = MQTTPacket.subscribe(packetId: 7, filters: [MQTTSubscription(topicFilter: filter, qos: 1)])
            let encoded = try packet.encoded()
            #expect(decode([encoded]).packets == [packet], "\(filter)")
        }
    }

    @Test("Every error has a description that names the packet or field")
    func descriptions() {
        let errors: [MQTTError] = [
            .reservedPacketType(0), .invalidFlags(.subscribe, flags: 0, required: 2), .qos2NotSupported("MQTT PUBREC packet"),
            .invalidQoS(3), .remainingLengthTooLong, .nonMinimalRemainingLength(0, bytes: 2), .remainingLengthOutOfRange(268_435_456),
            .packetTooLarge(length: 200_000, limit: 131_072), .wrongRemainingLength(.puback, length: 3, required: 2),
            .truncated(.connect, field: "password"), .trailingBytes(.connect, count: 2), .fieldTooLong(field: "topic name", length: 70_000),
            .invalidUTF8(field: "user name"), .nullCharacter(field: "topic filter"), .emptyTopicName, .wildcardInTopicName("a/#"),
            .invalidTopicFilter("a#", reason: "r"), .zeroPacketId(.suback), .packetIdDoesNotMatchQoS(qos: 1, hasPacketId: false),
            .duplicateFlagWithQoS0, .emptyList(.unsubscribe), .unsupportedProtocol(name: "MQIsdp", level: 3),
            .invalidConnectFlags(1, reason: "r"), .emptyClientIdWithoutCleanSession, .invalidConnackFlags(0x80),
            .invalidConnackReturnCode(9), .sessionPresentWithRefusal(returnCode: 4), .invalidSubackReturnCode(0x7F),
            .invalidSubscriptionOptions(0x40),
        ]
        for error in errors {
            #expect(error.description.hasPrefix("MQTT"), "\(error.description)")
        }
        #expect(MQTTError.invalidFlags(.subscribe, flags: 0, required: 2).description.contains("0x82"))
        #expect(MQTTError.sessionPresentWithRefusal(returnCode: 4).description.contains("bad user name or password"))
        #expect(MQTTError.packetTooLarge(length: 200_000, limit: 131_072).description.contains("maximumPacketLength"))
        // Peer text is shown printable and at most 128 bytes long.
        let hostile = MQTTError.wildcardInTopicName("a\u{1B}[2J" + String(repeating: "x", count: 300) + "#").description
        #expect(!hostile.contains("\u{1B}"))
        #expect(hostile.utf8.count < 300)
    }
}
