/// Fuzz target `mqtt-packet`: the MQTT 3.1.1 codec (Sources/TunnelCore/MQTTPacket.swift) and the
/// client session (MQTTSession.swift) over an arbitrary byte stream, as it arrives from a broker.
///
/// Properties checked:
/// - the decoder only consumes a prefix of each piece, returns nil only with the piece used up,
///   never holds more than `maximumPacketLength` bytes, and once failed throws the same error
///   again without consuming anything;
/// - the same packets, the same error and the same number of bytes consumed come out whether the
///   stream arrives whole, byte by byte, or in mixed pieces, under the client's limit and under a
///   small one;
/// - every decoded packet encodes to exactly the bytes it was decoded from (the codec refuses
///   every non-canonical form), and those bytes decode to the same packet;
/// - packets built from the input (a PUBLISH, a SUBSCRIBE, a CONNECT) either are refused by the
///   encoder or decode back to themselves;
/// - a client session fed the stream as the broker's bytes gives the same events, the same
///   failure and the same output however the stream is split; its output is well-formed MQTT
///   (CONNECT, SUBSCRIBE, PUBACK, PINGREQ) and stays within twice its limit.
@testable import TunnelCore

struct PacketRun: Equatable {
    var packets: [MQTTPacket] = []
    /// Stream offset where each packet ends.
    var ends: [Int] = []
    var error: MQTTError? = nil
    var consumed = 0
}

func decodePackets(_ bytes: [UInt8], limit: Int, plan: [Int]) -> PacketRun {
    var decoder = MQTTPacketDecoder(maximumPacketLength: limit)
    var run = PacketRun()
    forEachPiece(bytes, plan) { piece in
        var input = UnsafeRawBufferPointer(piece)
        while true {
            let before = input
            let packet: MQTTPacket?
            do throws(MQTTError) {
                packet = try decoder.next(&input)
            } catch {
                run.consumed += consumedPrefix(before, input)
                require(decoder.isFailed, "the decoder threw \(error) but is not failed")
                _ = error.description
                run.error = error
                // A failed decoder consumes nothing more and repeats its error.
                let again = input
                do throws(MQTTError) {
                    _ = try decoder.next(&input)
                    require(false, "a failed decoder returned instead of throwing")
                } catch let second {
                    require(second == error, "a failed decoder threw \(second) after \(error)")
                }
                require(input.count == again.count, "a failed decoder consumed more input")
                return false
            }
            run.consumed += consumedPrefix(before, input)
            require(decoder.bufferedByteCount <= limit,
                    "the decoder holds \(decoder.bufferedByteCount) bytes, over its limit of \(limit)")
            guard let packet else {
                require(input.isEmpty, "the decoder returned nothing with \(input.count) bytes left")
                return true
            }
            run.packets.append(packet)
            run.ends.append(run.consumed)
        }
    }
    return run
}

func decodeOne(_ bytes: [UInt8]) -> Result<MQTTPacket?, MQTTError> {
    var decoder = MQTTPacketDecoder(maximumPacketLength: bytes.count + 1)
    return bytes.withUnsafeBytes { raw in
        var input = raw
        do throws(MQTTError) {
            let packet = try decoder.next(&input)
            require(input.isEmpty, "one encoded packet left \(input.count) bytes")
            return .success(packet)
        } catch {
            return .failure(error)
        }
    }
}

/// Every packet the decoder accepted is the canonical form of itself.
func checkRoundTrip(_ bytes: [UInt8], _ run: PacketRun) {
    var start = 0
    for (packet, end) in zip(run.packets, run.ends) {
        _ = packet.packetType.description
        let original = Array(bytes[start..<end])
        start = end
        let encoded: [UInt8]
        do throws(MQTTError) {
            encoded = try packet.encoded()
        } catch {
            require(false, "a decoded \(packet.packetType) does not encode: \(error)")
            return
        }
        require(encoded == original, "a decoded \(packet.packetType) encodes to other bytes than it was read from")
        require(decodeOne(encoded) == .success(packet), "decode(encode(\(packet.packetType))) differs")
    }
}

/// Packets made from the input's bytes: whatever the encoder accepts must decode to itself.
func checkBuiltPackets(_ bytes: [UInt8], seed: UInt64) {
    let cut = bytes.isEmpty ? 0 : Int(bytes[0]) % (bytes.count + 1)
    let text = String(decoding: bytes[..<cut], as: UTF8.self)
    let rest = Array(bytes[cut...])
    let qos = UInt8(truncatingIfNeeded: seed & 3)
    let id = UInt16(truncatingIfNeeded: seed >> 8)
    let candidates: [MQTTPacket] = [
        .publish(MQTTPublish(topic: text, payload: rest, qos: qos, retain: seed & 4 != 0, duplicate: seed & 8 != 0,
                             packetId: seed & 16 != 0 ? id : nil)),
        .subscribe(packetId: id, filters: [MQTTSubscription(topicFilter: text, qos: qos)]),
        .unsubscribe(packetId: id, filters: [text]),
        .connect(clientId: text, keepAliveSeconds: id, cleanSession: seed & 32 != 0, username: seed & 64 != 0 ? text : nil,
                 password: seed & 128 != 0 ? rest : nil),
        .suback(packetId: id, returnCodes: Array(rest.prefix(4))),
        .connack(sessionPresent: seed & 4 != 0, returnCode: bytes.first ?? 0),
    ]
    for packet in candidates {
        let encoded: [UInt8]
        do throws(MQTTError) {
            encoded = try packet.encoded()
        } catch {
            _ = error.description
            continue
        }
        require(decodeOne(encoded) == .success(packet), "an encoded \(packet.packetType) does not decode to itself")
    }
}

struct SessionRun: Equatable {
    var events: [MQTTClientEvent] = []
    var failure: MQTTClientFailure? = nil
    var output: [UInt8] = []
    var state: MQTTClientSession.State = .idle
}

/// The stream as a broker's bytes to a session that subscribed to one filter, at a fixed time (so
/// that every split sees the same clock), then a tick at the session's next deadline.
func runSession(_ bytes: [UInt8], plan: [Int], outputLimit: Int) -> SessionRun {
    var options = MQTTClientOptions(clientId: "gw1", subscriptions: [MQTTSubscription(topicFilter: "$aws/things/gw1/tunnels/notify", qos: 1)])
    options.maximumOutputLength = outputLimit
    let session = MQTTClientSession(options: options)
    session.start(now: 0)
    var run = SessionRun()
    forEachPiece(bytes, plan) { piece in
        do throws(MQTTClientFailure) {
            try session.receive(UnsafeRawBufferPointer(piece), now: 1, events: &run.events)
        } catch {
            _ = error.description
            run.failure = error
            require(session.state == .finished, "the session threw \(error) but is \(session.state)")
            return false
        }
        require(session.pendingOutput.count <= 2 * outputLimit, "the session queued \(session.pendingOutput.count) bytes")
        return true
    }
    run.output = Array(session.pendingOutput)
    run.state = session.state
    // Time passing after the stream: must not trap, whatever state was reached.
    do throws(MQTTClientFailure) {
        try session.tick(now: 1)
        if let next = session.nextDeadline { try session.tick(now: next) }
    } catch {
        _ = error.description
    }
    session.disconnect()
    return run
}

/// What a session writes must be MQTT this codec reads back, packet by packet.
func checkSessionOutput(_ output: [UInt8]) {
    let run = decodePackets(output, limit: output.count + 1, plan: output.isEmpty ? [] : [output.count])
    require(run.error == nil, "the session wrote bytes that do not decode: \(run.error!)")
    require(run.consumed == output.count, "the session's output ends inside a packet")
    for packet in run.packets {
        switch packet {
        case .connect, .subscribe, .puback, .pingreq, .disconnect: break
        default: require(false, "the session wrote a \(packet.packetType)")
        }
    }
}

/// Limits tried besides the client's: tiny, one byte short of small packets, moderate.
let packetLimits = [2, 4, 5, 16, 300]

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let bytes = inputBytes(data, size)
    let seed = fnv1a(bytes)
    let plans = splitPlans(count: bytes.count, seed: seed)
    for limit in [128 * 1024, packetLimits[Int(seed % UInt64(packetLimits.count))]] {
        let whole = decodePackets(bytes, limit: limit, plan: plans[0])
        for plan in plans.dropFirst() {
            require(decodePackets(bytes, limit: limit, plan: plan) == whole,
                    "decoding under a limit of \(limit) depends on how the input is split (\(plan.count) pieces)")
        }
        require(whole.error != nil || whole.consumed == bytes.count, "the decoder stopped without an error")
        checkRoundTrip(bytes, whole)
    }
    checkBuiltPackets(bytes, seed: seed)

    // 64 bytes: CONNECT and SUBSCRIBE fit under twice the limit, and some PUBACKs after them.
    let outputLimit = [256 * 1024, 64][Int((seed >> 3) & 1)]
    let session = runSession(bytes, plan: plans[0], outputLimit: outputLimit)
    for plan in plans.dropFirst() {
        require(runSession(bytes, plan: plan, outputLimit: outputLimit) == session,
                "the session depends on how the input is split (\(plan.count) pieces)")
    }
    checkSessionOutput(session.output)
    return 0
}
