import CMbedTLS

/// Cryptographically secure random bytes: mbedTLS's CTR-DRBG seeded from the system entropy
/// source. One instance serves the TLS configurations and the WebSocket masks, keys and client
/// tokens of a process (it is not thread-safe; the proxy runs one loop on one thread).
public final class SecureRandom {
    let entropy: UnsafeMutablePointer<mbedtls_entropy_context>
    let drbg: UnsafeMutablePointer<mbedtls_ctr_drbg_context>

    public init(personalization: String = "localproxy") throws(TLSError) {
        entropy = .allocate(capacity: 1)
        drbg = .allocate(capacity: 1)
        mbedtls_entropy_init(entropy)
        mbedtls_ctr_drbg_init(drbg)
        let label = Array(personalization.utf8)
        let status = label.withUnsafeBufferPointer {
            mbedtls_ctr_drbg_seed(drbg, mbedtls_entropy_func, entropy, $0.baseAddress, $0.count)
        }
        if status != 0 { throw TLSError(status, "seeding the random generator from system entropy") }
    }

    deinit {
        mbedtls_ctr_drbg_free(drbg)
        mbedtls_entropy_free(entropy)
        drbg.deallocate()
        entropy.deallocate()
    }

    /// Fills `buffer` with random bytes.
    public func fill(_ buffer: UnsafeMutableRawBufferPointer) {
        guard let base = buffer.baseAddress else { return }
        var offset = 0
        // CTR-DRBG hands out at most MBEDTLS_CTR_DRBG_MAX_REQUEST (1024) bytes per call.
        while offset < buffer.count {
            let n = min(1024, buffer.count - offset)
            let status = mbedtls_ctr_drbg_random(drbg, (base + offset).assumingMemoryBound(to: UInt8.self), n)
            // Reseeding reads system entropy; if that fails the process cannot do TLS at all.
            precondition(status == 0, "random generator failed (mbedTLS \(status))")
            offset += n
        }
    }

    public func bytes(_ count: Int) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        out.withUnsafeMutableBytes { fill($0) }
        return out
    }

    public func uint32() -> UInt32 {
        let b = bytes(4)
        return UInt32(b[0]) << 24 | UInt32(b[1]) << 16 | UInt32(b[2]) << 8 | UInt32(b[3])
    }

    /// A random (version 4) UUID in its 36-character text form: a valid client token.
    public func uuid() -> String {
        var b = bytes(16)
        b[6] = b[6] & 0x0F | 0x40
        b[8] = b[8] & 0x3F | 0x80
        let digits: [UInt8] = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        for (i, byte) in b.enumerated() {
            if i == 4 || i == 6 || i == 8 || i == 10 { out.append(0x2D) }
            out.append(digits[Int(byte >> 4)])
            out.append(digits[Int(byte & 0xF)])
        }
        return String(decoding: out, as: UTF8.self)
    }
}
