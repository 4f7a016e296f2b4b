import CMbedTLS

/// What encrypts and decrypts the TLS records of this build, for `--version` and the log.
public enum CryptoBackend {
    /// e.g. "mbedTLS 2.28.3; record AEADs (AES-GCM, ChaCha20-Poly1305) in mbedTLS's portable C,
    /// AES rounds with AES-NI".
    public static var description: String {
        let version = String(decoding: UnsafeRawBufferPointer(start: lp_mbedtls_version(), count: strlen(lp_mbedtls_version())),
                             as: UTF8.self)
        var text = "mbedTLS \(version); record AEADs (AES-GCM, ChaCha20-Poly1305) in mbedTLS's portable C"
        switch lp_mbedtls_aes_uses_cpu() {
        case 1: text += ", AES rounds with AES-NI"
        case 0: text += ", AES rounds in C"
        default: break
        }
        return text
    }
}
