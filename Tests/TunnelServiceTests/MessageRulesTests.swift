// The validation rules the data plane applies to what clients send, built from literal message
// bytes (docs/PROTOCOL.md §6.1 vectors), and the messages the service itself originates.
import Testing
import TunnelCore
@testable import TunnelService

private func hex(_ text: String) -> [UInt8] {
    var out: [UInt8] = []
    var digits = Array(text.replacingOccurrences(" ", "").utf8)
    while digits.count >= 2 {
        out.append(UInt8(String(decoding: digits[0..<2], as: UTF8.self), radix: 16)!)
        digits.removeFirst(2)
    }
    return out
}

private func inspect(_ rules: inout ConnectionRules, _ bytes: [UInt8]) -> Verdict {
    bytes.withUnsafeBytes { rules.inspect($0) }
}

private func code(_ verdict: Verdict) -> UInt16? {
    if case .close(let code, _) = verdict { return code }
    return nil
}

private func reason(_ verdict: Verdict) -> String {
    if case .close(_, let reason) = verdict { return reason }
    return ""
}

// Vectors (without the length prefix).
private let streamStartSSH = hex("08 02 10 01 2A 03 53 53 48 38 01")
private let dataSSH = hex("08 01 10 01 22 02 68 69 2A 03 53 53 48 38 01")
private let streamResetSSH = hex("08 03 10 01 2A 03 53 53 48")
private let connectionResetSSH = hex("08 07 10 01 2A 03 53 53 48 38 02")
private let v1StreamStart = hex("08 02 10 01")
private let v1Data = hex("08 01 10 01 22 02 68 69")

@Suite("Message rules")
struct MessageRulesTests {
    func source() -> ConnectionRules { ConnectionRules(side: .source, services: ["SSH", "HTTP"]) }
    func destination() -> ConnectionRules { ConnectionRules(side: .destination, services: ["SSH", "HTTP"]) }

    @Test func aNormalSourceSessionPasses() {
        var rules = source()
        for message in [streamStartSSH, dataSSH, hex("08 06 10 01 2A 03 53 53 48 38 02"), connectionResetSSH, streamResetSSH] {
            guard case .forward = inspect(&rules, message) else {
                Issue.record("refused \(message)")
                return
            }
        }
    }

    @Test func summaryCarriesWhatTheRelayNeeds() {
        var rules = source()
        #expect(inspect(&rules, streamStartSSH) == .forward(MessageSummary(type: .streamStart, streamId: 1,
                                                                            serviceId: Array("SSH".utf8), connectionId: 1)))
    }

    @Test func unknownFieldsAreRefused() {
        var rules = source()
        let verdict = inspect(&rules, v1StreamStart + [0x40, 0x01])
        #expect(code(verdict) == 1008)
        #expect(reason(verdict) == "unknown protobuf field 8")
        // A known number with the wrong wire type is an extra field too.
        #expect(code(inspect(&rules, hex("08 02 12 01 00"))) == 1008)
        #expect(reason(inspect(&rules, hex("0D 01 00 00 00"))).contains("wire type"))
    }

    @Test func malformedProtobufIs1007AndOversizedPayloadIs1009() {
        var rules = source()
        #expect(code(inspect(&rules, hex("08 01 22 05 61 62"))) == 1007)
        #expect(code(inspect(&rules, hex("08"))) == 1007)
        #expect(code(inspect(&rules, hex("FF FF FF FF FF FF FF FF FF FF FF"))) == 1007)
        var big = hex("08 01 10 01 22 81 F8 03")  // payload length 64513
        big += [UInt8](repeating: 0x78, count: 64_513)
        #expect(code(inspect(&rules, big)) == 1009)
    }

    @Test func typeZeroAndUnknownTypes() {
        var rules = source()
        #expect(reason(inspect(&rules, hex("10 01"))) == "message type 0 (UNKNOWN) is invalid")
        #expect(code(inspect(&rules, hex("08 09 10 01"))) == 1008)
        // Marked ignorable, a future type is relayed.
        guard case .forward = inspect(&rules, hex("08 09 10 01 18 01")) else {
            Issue.record("an ignorable unknown type was refused")
            return
        }
    }

    @Test func serviceOnlyTypesFromAnyClient() {
        for side in [Side.source, .destination] {
            var rules = ConnectionRules(side: side, services: ["SSH"])
            #expect(reason(inspect(&rules, hex("08 04"))) == "SESSION_RESET is sent only by the service")
            #expect(reason(inspect(&rules, hex("08 05 32 03 53 53 48"))) == "SERVICE_IDS is sent only by the service")
        }
    }

    @Test func destinationMayNotStart() {
        var rules = destination()
        #expect(reason(inspect(&rules, streamStartSSH)) == "STREAM_START from a destination")
        #expect(reason(inspect(&rules, hex("08 06 10 01 2A 03 53 53 48 38 02"))) == "CONNECTION_START from a destination")
    }

    @Test func streamScopedTypesNeedAStreamId() {
        var rules = source()
        for type: UInt8 in [1, 2, 3, 6, 7] {
            #expect(reason(inspect(&rules, [0x08, type])).hasSuffix("with streamId 0"))
        }
    }

    @Test func streamStartServiceMustBeInTheTunnel() {
        var rules = source()
        #expect(reason(inspect(&rules, hex("08 02 10 01 2A 03 46 54 50"))) == "STREAM_START for service \"FTP\" not in the tunnel")
        var empty = ConnectionRules(side: .source, services: [])
        #expect(code(inspect(&empty, streamStartSSH)) == 1008)
        // No serviceId (V1 format) is always acceptable.
        guard case .forward = inspect(&empty, v1StreamStart) else {
            Issue.record("V1 STREAM_START refused")
            return
        }
    }

    @Test func dataAndResetNeedAStartedService() {
        var rules = source()
        #expect(reason(inspect(&rules, dataSSH)) == "DATA for service \"SSH\" that had no STREAM_START")
        var other = source()
        #expect(code(inspect(&other, streamResetSSH)) == 1008)
        // The destination learns of started services from what is delivered to it.
        var dst = destination()
        #expect(code(inspect(&dst, dataSSH)) == 1008)
        var dst2 = destination()
        dst2.delivered(MessageSummary(type: .streamStart, streamId: 1, serviceId: Array("SSH".utf8)))
        guard case .forward = inspect(&dst2, dataSSH) else {
            Issue.record("DATA after a delivered STREAM_START refused")
            return
        }
        #expect(code(inspect(&dst2, hex("08 01 10 01 2A 04 48 54 54 50"))) == 1008)
    }

    @Test func noSwitchFromWithoutToWithServiceId() {
        var rules = source()
        guard case .forward = inspect(&rules, v1StreamStart), case .forward = inspect(&rules, v1Data) else {
            Issue.record("V1 session refused")
            return
        }
        #expect(reason(inspect(&rules, streamStartSSH)) == "STREAM_START with a serviceId after messages without one")
        // The other direction is tolerated.
        var v2 = source()
        guard case .forward = inspect(&v2, streamStartSSH), case .forward = inspect(&v2, v1Data) else {
            Issue.record("serviceId then none refused")
            return
        }
    }

    @Test func closeReasonsFitAControlFrame() {
        var rules = source()
        let long = [UInt8](repeating: 0x41, count: 128)
        let message = hex("08 02 10 01 2A 80 01") + long
        let text = reason(inspect(&rules, message))
        #expect(code(inspect(&rules, message)) == 1008)
        #expect(text.utf8.count <= 123)
    }
}

@Suite("Service messages and active streams")
struct ServiceMessageTests {
    @Test func serviceIdsBytes() {
        #expect(ServiceMessages.serviceIds(["SSH1", "SSH2"]) == hex("00 0E 08 05 32 04 53 53 48 31 32 04 53 53 48 32"))
        #expect(ServiceMessages.serviceIds([]) == hex("00 02 08 05"))
        #expect(ServiceMessages.sessionReset() == hex("00 02 08 04"))
        #expect(ServiceMessages.streamReset(streamId: 1, serviceId: Array("SSH".utf8)) == hex("00 09") + streamResetSSH)
        #expect(ServiceMessages.streamReset(streamId: 1, serviceId: []) == hex("00 04 08 03 10 01"))
    }

    @Test func activeStreamsFollowStartsAndResets() {
        var streams = ActiveStreams()
        let ssh = Array("SSH".utf8), http = Array("HTTP".utf8)
        streams.note(MessageSummary(type: .streamStart, streamId: 1, serviceId: ssh))
        streams.note(MessageSummary(type: .streamStart, streamId: 2, serviceId: http))
        streams.note(MessageSummary(type: .streamStart, streamId: 3, serviceId: ssh))
        streams.note(MessageSummary(type: .data, streamId: 3, serviceId: ssh))
        // A reset of a stale stream changes nothing.
        streams.note(MessageSummary(type: .streamReset, streamId: 1, serviceId: ssh))
        #expect(streams.resetMessages() == [ServiceMessages.streamReset(streamId: 2, serviceId: http),
                                            ServiceMessages.streamReset(streamId: 3, serviceId: ssh)])
        streams.note(MessageSummary(type: .streamReset, streamId: 2, serviceId: http))
        #expect(streams.resetMessages() == [ServiceMessages.streamReset(streamId: 3, serviceId: ssh)])
        streams.removeAll()
        #expect(streams.resetMessages().isEmpty)
    }
}
