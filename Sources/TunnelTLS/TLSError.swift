import CMbedTLS

/// An mbedTLS failure, with what we were doing and mbedTLS's own text for the code.
public struct TLSError: Error, Equatable, CustomStringConvertible {
    public let code: Int32
    public let context: String
    /// For certificate verification failures: mbedTLS's list of what was wrong with the chain.
    public let verification: String?

    public init(_ code: Int32, _ context: String, verification: String? = nil) {
        self.code = code
        self.context = context
        self.verification = verification
    }

    public var isCertificateVerificationFailure: Bool { verification != nil }

    public var description: String {
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

/// A C string for the duration of `body` (Embedded Swift has no implicit String-to-pointer
/// bridging for every call shape, so this is done by hand).
func withCString<R>(_ s: String, _ body: (UnsafePointer<CChar>) -> R) -> R {
    var bytes = Array(s.utf8).map { CChar(bitPattern: $0) }
    bytes.append(0)
    return bytes.withUnsafeBufferPointer { body($0.baseAddress!) }
}
