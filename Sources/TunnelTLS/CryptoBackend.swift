import CMbedTLS

/// What encrypts and decrypts the TLS records of this build, for `--version` and the log.
public enum CryptoBackend {
    /// e.g. "mbedTLS 2.28.3; AES-GCM: Nettle 3.8.1 (AES-NI, PCLMULQDQ GHASH);
    /// ChaCha20-Poly1305: libsodium 1.0.18 (ChaCha20 AVX2, Poly1305 SSE2)".
    public static var description: String {
        var text = "mbedTLS \(cString(lp_mbedtls_version())); AES-GCM: "
        #if LP_AEAD
        text += cString(lp_aead_gcm_backend())
        text += "; ChaCha20-Poly1305: \(cString(lp_aead_chachapoly_backend()))"
        #else
        text += "mbedTLS portable C"
        switch lp_mbedtls_aes_uses_cpu() {
        case 1: text += ", AES rounds with AES-NI"
        case 0: text += ", AES rounds in C"
        default: break
        }
        text += "; ChaCha20-Poly1305: mbedTLS portable C"
        #endif
        return text
    }

    /// Whether AES-GCM records cost less than ChaCha20-Poly1305 ones here.
    public static var aesGCMIsFast: Bool {
        #if LP_AEAD
        return lp_aead_gcm_fast() != 0
        #else
        return false
        #endif
    }

    private static func cString(_ pointer: UnsafePointer<CChar>) -> String {
        String(decoding: UnsafeRawBufferPointer(start: pointer, count: strlen(pointer)), as: UTF8.self)
    }
}
