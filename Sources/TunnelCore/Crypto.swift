import CMbedTLS

/// The two hash and encoding primitives the WebSocket handshake needs, from mbedTLS (which the
/// device binary links for TLS anyway, so they cost no extra code).
public enum HandshakeCrypto {
    /// SHA-1 digest (20 bytes).
    public static func sha1(_ bytes: [UInt8]) -> [UInt8] {
        var digest = [UInt8](repeating: 0, count: 20)
        let status = bytes.withUnsafeBufferPointer { input in
            digest.withUnsafeMutableBufferPointer { out in
                lp_sha1(input.baseAddress, input.count, out.baseAddress)
            }
        }
        // mbedTLS's software SHA-1 cannot fail; a failure means a broken library build.
        precondition(status == 0, "mbedTLS SHA-1 failed")
        return digest
    }

    /// Standard base64 with padding.
    public static func base64Encode(_ bytes: [UInt8]) -> String {
        var out = [UInt8](repeating: 0, count: (bytes.count + 2) / 3 * 4 + 1)
        var written = 0
        let status = bytes.withUnsafeBufferPointer { input in
            out.withUnsafeMutableBufferPointer { dst in
                mbedtls_base64_encode(dst.baseAddress, dst.count, &written, input.baseAddress, input.count)
            }
        }
        precondition(status == 0, "mbedTLS base64 encode failed with a correctly sized buffer")
        return String(decoding: out[0..<written], as: UTF8.self)
    }

    /// Decodes standard base64; nil when `text` is not valid base64.
    public static func base64Decode(_ text: String) -> [UInt8]? {
        let input = Array(text.utf8)
        // mbedTLS silently drops an incomplete last group; padded base64 is always whole groups.
        guard input.count % 4 == 0 else { return nil }
        var out = [UInt8](repeating: 0, count: input.count / 4 * 3 + 3)
        var written = 0
        let status = input.withUnsafeBufferPointer { src in
            out.withUnsafeMutableBufferPointer { dst in
                mbedtls_base64_decode(dst.baseAddress, dst.count, &written, src.baseAddress, src.count)
            }
        }
        guard status == 0 else { return nil }
        return Array(out[0..<written])
    }

    /// The value a server returns in `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`
    /// (RFC 6455 §4.2.2): base64(SHA-1(key + the protocol's GUID)).
    public static func webSocketAccept(forKey key: String) -> String {
        base64Encode(sha1(Array((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").utf8)))
    }
}
