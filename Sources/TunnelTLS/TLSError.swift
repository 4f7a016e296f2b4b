import CMbedTLS

/// An mbedTLS failure, with what we were doing and mbedTLS's own text for the code.
public struct TLSError: Error, Equatable, CustomStringConvertible {
    public let code: Int32
    public let context: String
    /// For certificate verification failures: mbedTLS's list of what was wrong with the chain.
    public let verification: String?
    /// mbedTLS's verification flags (MBEDTLS_X509_BADCERT_*), 0 when not a verification failure.
    public let verificationFlags: UInt32

    public init(_ code: Int32, _ context: String, verification: String? = nil, verificationFlags: UInt32 = 0) {
        self.code = code
        self.context = context
        self.verification = verification
        self.verificationFlags = verificationFlags
    }

    public var isCertificateVerificationFailure: Bool { verification != nil }

    /// The chain failed only because a certificate (or CRL) is not valid yet: on a device that
    /// booted without a real-time clock the clock is behind, and a retry after it is set works.
    public var isOnlyNotYetValid: Bool {
        let future = UInt32(MBEDTLS_X509_BADCERT_FUTURE) | UInt32(MBEDTLS_X509_BADCRL_FUTURE)
        return verificationFlags & future != 0 && verificationFlags & ~future == 0
    }

    public var description: String {
        // mbedTLS's X.509 parsers return a positive count of certificates they skipped.
        if code > 0 { return "\(context): \(code) certificate(s) could not be parsed" }
        var buffer = [CChar](repeating: 0, count: 160)
        buffer.withUnsafeMutableBufferPointer { mbedtls_strerror(code, $0.baseAddress, $0.count) }
        let text = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        var out = "\(context): \(text) (mbedTLS -0x\(hex(UInt32(-Int64(code)))))"
        if let verification {
            out += "; certificate problems: \(verification)"
        }
        return out
    }
}

func hex(_ value: UInt32) -> String {
    let digits: [UInt8] = Array("0123456789abcdef".utf8)
    var out: [UInt8] = []
    var v = value
    repeat {
        out.append(digits[Int(v & 0xF)])
        v >>= 4
    } while v > 0
    return String(decoding: out.reversed(), as: UTF8.self)
}

/// The NUL-terminated bytes of `s`, for C functions that take a path (an array passes as a
/// pointer to its elements for the duration of the call).
func cString(_ s: String) -> [CChar] {
    var bytes = Array(s.utf8).map { CChar(bitPattern: $0) }
    bytes.append(0)
    return bytes
}

/// A C string for the duration of `body` (Embedded Swift has no implicit String-to-pointer
/// bridging for every call shape, so this is done by hand).
func withCString<R>(_ s: String, _ body: (UnsafePointer<CChar>) -> R) -> R {
    cString(s).withUnsafeBufferPointer { body($0.baseAddress!) }
}
