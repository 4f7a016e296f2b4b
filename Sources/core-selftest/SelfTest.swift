// Byte vectors run through TunnelCore in whatever build this is. `make embedded` links and runs
// it as an Embedded Swift binary, so the device build is checked for behaviour (not only for
// compiling), and a missing runtime symbol shows up at link time rather than on a gateway.
import CLibC
import TunnelCore

struct SelfTest {
    var failures = 0
    var checks = 0

    mutating func check(_ condition: Bool, _ what: String) {
        checks += 1
        if !condition {
            failures += 1
            print("FAIL: \(what)")
        }
    }

    static func hexBytes(_ text: String) -> [UInt8] {
        var out: [UInt8] = []
        var high: UInt8? = nil
        for c in text.utf8 {
            var v: UInt8
            switch c {
            case 0x30...0x39: v = c - 0x30
            case 0x61...0x66: v = c - 0x61 + 10
            case 0x41...0x46: v = c - 0x41 + 10
            default: continue
            }
            if let h = high {
                out.append(h << 4 | v)
                high = nil
            } else {
                high = v
            }
        }
        return out
    }

    mutating func protobufVectors() {
        let vectors: [(TunnelMessage, String)] = [
            (TunnelMessage(type: .streamStart, streamId: 1, serviceId: Array("SSH".utf8), connectionId: 1), "080210012A035353483801"),
            (TunnelMessage(type: .serviceIds, availableServiceIds: [Array("SSH1".utf8), Array("SSH2".utf8)]), "0805320453534831320453534832"),
            (TunnelMessage(type: .serviceIds), "0805"),
            (TunnelMessage(type: .streamReset, streamId: 1, serviceId: Array("SSH".utf8)), "080310012A03535348"),
            (TunnelMessage(type: .connectionReset, streamId: 1, serviceId: Array("SSH".utf8), connectionId: 2), "080710012A035353483802"),
            (TunnelMessage(type: .sessionReset), "0804"),
            (TunnelMessage(type: .streamStart, streamId: -1), "080210FFFFFFFFFFFFFFFFFF01"),
        ]
        for (message, expected) in vectors {
            let want = SelfTest.hexBytes(expected)
            do throws(TunnelEncodingError) {
                check(try message.encoded() == want, "encode \(message.type)")
            } catch {
                check(false, "encode \(message.type): \(error)")
            }
            want.withUnsafeBytes { view in
                do throws(ProtobufDecodingError) {
                    let decoded = try TunnelMessage.decode(view)
                    check(decoded.type == message.type && decoded.streamId == message.streamId
                          && decoded.serviceId == message.serviceId && decoded.connectionId == message.connectionId
                          && decoded.availableServiceIds == message.availableServiceIds, "decode \(message.type)")
                } catch {
                    check(false, "decode \(message.type): \(error)")
                }
            }
        }
        // DATA with a payload view, through the frame decoder fed one byte at a time.
        let stream = SelfTest.hexBytes("000F08011001220268692A035353483801")
        let decoder = TunnelFrameDecoder()
        var found = 0
        stream.withUnsafeBytes { all in
            for i in 0..<all.count {
                var piece = UnsafeRawBufferPointer(rebasing: all[i..<(i + 1)])
                if let frame = decoder.next(&piece) {
                    do throws(ProtobufDecodingError) {
                        let m = try TunnelMessage.decode(frame)
                        check(Array(m.payload) == Array("hi".utf8), "DATA payload")
                        found += 1
                    } catch {
                        check(false, "DATA decode: \(error)")
                    }
                }
            }
        }
        check(found == 1, "one DATA message from a byte-by-byte feed")
        let bad = SelfTest.hexBytes("080110FFFFFFFFFFFFFFFFFFFF01")
        bad.withUnsafeBytes { view in
            do throws(ProtobufDecodingError) {
                _ = try TunnelMessage.decode(view)
                check(false, "11-byte varint rejected")
            } catch {
                check(error == ProtobufDecodingError(.varintTooLong, offset: 3, field: 2), "11-byte varint error: \(error)")
            }
        }
    }

    mutating func webSocketVectors() {
        check(HandshakeCrypto.webSocketAccept(forKey: "dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", "RFC 6455 accept key")
        let hello = Array("Hello".utf8)
        let masked = WebSocketFrameEncoder.frame(opcode: .binary, payload: hello, maskingKey: WebSocketMaskingKey(0x37, 0xFA, 0x21, 0x3D))
        check(masked == SelfTest.hexBytes("8285 37fa213d 7f9f4d5158"), "masked Hello frame")
        var frame = masked
        let decoder = WebSocketFrameDecoder(role: .server)
        frame.withUnsafeMutableBytes { raw in
            var input = raw
            do throws(WebSocketProtocolError) {
                if case .binary(let payload, let end)? = try decoder.next(&input) {
                    check(Array(payload) == hello && end, "unmasked Hello")
                } else {
                    check(false, "binary event")
                }
            } catch {
                check(false, "decode Hello: \(error)")
            }
        }
        var text = SelfTest.hexBytes("810548656c6c6f")
        text.withUnsafeMutableBytes { raw in
            var input = raw
            do throws(WebSocketProtocolError) {
                _ = try WebSocketFrameDecoder(role: .client).next(&input)
                check(false, "text frame refused")
            } catch {
                check(error.closeCode == 1003, "text frame close code")
            }
        }
    }

    mutating func ringBuffer() {
        do throws(RingBufferError) {
            let ring = try RingBuffer(minimumCapacity: 16)
            let data: [UInt8] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
            _ = data.withUnsafeBytes { ring.write($0) }
            ring.consume(10)
            _ = data.withUnsafeBytes { ring.write($0) }
            let (a, b) = ring.readableSpans
            check(a.count + b.count == 14 && b.count > 0, "ring wraps into two spans")
        } catch {
            check(false, "ring: \(error)")
        }
    }
}

extension SelfTest {
    /// Counts that outgrow a 32-bit Int (armv7) must wrap into 64 bits or be refused, never trap:
    /// the WebSocket decoder's stream offset after more than 4 GiB, and numbers from the peer
    /// larger than Int (a Content-Length).
    mutating func thirtyTwoBitSafety() {
        var frame: [UInt8] = [0x82, 0x7E, 0xFF, 0xFF] + [UInt8](repeating: 0, count: 65_535)
        let decoder = WebSocketFrameDecoder(role: .client)
        let frames = Int((UInt64(1) << 32) / 65_539 + 2)
        var payloadBytes: UInt64 = 0
        var failed = false
        frame.withUnsafeMutableBytes { raw in
            for _ in 0..<frames {
                var input = raw
                while input.count > 0 && !failed {
                    do throws(WebSocketProtocolError) {
                        if case .binary(let payload, _)? = try decoder.next(&input) { payloadBytes += UInt64(payload.count) }
                    } catch {
                        failed = true
                    }
                }
            }
        }
        let total = UInt64(frames) * 65_539
        check(!failed && decoder.streamOffset == total && total > UInt64(UInt32.max) && payloadBytes == UInt64(frames) * 65_535,
              "WebSocket stream offset past 4 GiB (\(decoder.streamOffset) of \(total))")

        let request = WebSocketUpgradeRequest(host: "localhost", mode: .destination, accessToken: "t", clientToken: nil,
                                              keyBytes: [UInt8](repeating: 7, count: 16))
        var reader = WebSocketUpgradeResponseReader(request: request)
        let answer = Array("HTTP/1.1 403 Forbidden\r\nContent-Length: 99999999999999999\r\n\r\n".utf8)
        var outcomeSeen = false
        answer.withUnsafeBytes { raw in
            var input = raw
            do throws(WebSocketUpgradeError) {
                _ = try reader.read(&input)
                outcomeSeen = true
            } catch {
                outcomeSeen = true
            }
        }
        check(outcomeSeen, "a Content-Length beyond Int is read or refused")
    }
}

func runSelfTest() -> Int32 {
    var test = SelfTest()
    test.protobufVectors()
    test.webSocketVectors()
    test.ringBuffer()
    test.thirtyTwoBitSafety()
    print("core-selftest: \(test.checks - test.failures) passed, \(test.failures) failed")
    return test.failures == 0 ? 0 : 1
}
