import CMbedTLS
import TunnelCore

/// Shared settings for TLS sessions: role, trust anchors or own certificate, verification.
public final class TLSConfiguration {
    public enum Role { case client, server }

    /// Debian's bundle of trusted roots, used when no `-c/--capath` is given.
    public static let systemBundle = "/etc/ssl/certs/ca-certificates.crt"

    public let role: Role
    public let verifiesPeer: Bool
    let random: SecureRandom
    let config: UnsafeMutablePointer<mbedtls_ssl_config>
    let trusted: UnsafeMutablePointer<mbedtls_x509_crt>
    let ownCertificate: UnsafeMutablePointer<mbedtls_x509_crt>
    let ownKey: UnsafeMutablePointer<mbedtls_pk_context>

    private init(role: Role, verifiesPeer: Bool, random: SecureRandom) throws(TLSError) {
        self.role = role
        self.verifiesPeer = verifiesPeer
        self.random = random
        // Before anything else of mbedTLS 3.x's TLS: it needs the PSA crypto core (a no-op on 2.x).
        let psaStatus = lp_tls_global_init()
        if psaStatus != 0 { throw TLSError(psaStatus, "initialising the PSA crypto library") }
        config = .allocate(capacity: 1)
        trusted = .allocate(capacity: 1)
        ownCertificate = .allocate(capacity: 1)
        ownKey = .allocate(capacity: 1)
        mbedtls_ssl_config_init(config)
        mbedtls_x509_crt_init(trusted)
        mbedtls_x509_crt_init(ownCertificate)
        mbedtls_pk_init(ownKey)
        let status = mbedtls_ssl_config_defaults(
            config, role == .client ? MBEDTLS_SSL_IS_CLIENT : MBEDTLS_SSL_IS_SERVER,
            MBEDTLS_SSL_TRANSPORT_STREAM, MBEDTLS_SSL_PRESET_DEFAULT)
        if status != 0 { throw TLSError(status, "setting TLS defaults") }
        lp_ssl_conf_min_tls12(config)
        if role == .client { lp_ssl_conf_client_sig_algs(config) }
        mbedtls_ssl_conf_rng(config, mbedtls_ctr_drbg_random, random.drbg)
        mbedtls_ssl_conf_authmode(config, verifiesPeer ? MBEDTLS_SSL_VERIFY_REQUIRED : MBEDTLS_SSL_VERIFY_NONE)
    }

    deinit {
        mbedtls_ssl_config_free(config)
        mbedtls_x509_crt_free(trusted)
        mbedtls_x509_crt_free(ownCertificate)
        mbedtls_pk_free(ownKey)
        config.deallocate()
        trusted.deallocate()
        ownCertificate.deallocate()
        ownKey.deallocate()
    }

    /// A client configuration. `trustPaths` are PEM bundles or directories of certificates
    /// (each entry may be either); empty means the system bundle. With `verify` false nothing
    /// about the server's certificate is checked (`-k`): for development only.
    public static func client(trustPaths: [String], verify: Bool, random: SecureRandom) throws(TLSError) -> TLSConfiguration {
        let c = try TLSConfiguration(role: .client, verifiesPeer: verify, random: random)
        // The cheapest record cipher first, for servers that let the client choose: AES-GCM
        // where this build has fast code for it on this CPU (AES and carry-less multiply
        // instructions), ChaCha20-Poly1305 everywhere else, where it beats a portable AES-GCM
        // (docs/CRYPTO.md has the figures).
        lp_ssl_conf_cipher_order(c.config, CryptoBackend.aesGCMIsFast ? 1 : 0)
        if verify {
            for path in trustPaths.isEmpty ? [systemBundle] : trustPaths {
                try c.addTrusted(path)
            }
            mbedtls_ssl_conf_ca_chain(c.config, c.trusted, nil)
        }
        return c
    }

    /// A server configuration presenting `certificateFile` (PEM chain) with `keyFile`.
    public static func server(certificateFile: String, keyFile: String, random: SecureRandom) throws(TLSError) -> TLSConfiguration {
        let c = try TLSConfiguration(role: .server, verifiesPeer: false, random: random)
        var status = withCString(certificateFile) { mbedtls_x509_crt_parse_file(c.ownCertificate, $0) }
        if status != 0 { throw TLSError(status, "loading the certificate \(certificateFile)") }
        status = withCString(keyFile) { lp_pk_parse_keyfile(c.ownKey, $0, random.drbg) }
        if status != 0 { throw TLSError(status, "loading the private key \(keyFile)") }
        status = mbedtls_ssl_conf_own_cert(c.config, c.ownCertificate, c.ownKey)
        if status != 0 { throw TLSError(status, "using the certificate \(certificateFile) with the key \(keyFile)") }
        return c
    }

    /// Adds a PEM/DER file, or every certificate file in a directory, to the trusted roots.
    private func addTrusted(_ path: String) throws(TLSError) {
        // A directory first: parse_path fails cleanly on a regular file, while parse_file would
        // try to read a directory as one huge file.
        var status = withCString(path) { mbedtls_x509_crt_parse_path(trusted, $0) }
        if status == Int32(LP_ERR_X509_FILE_IO_ERROR) {
            status = withCString(path) { mbedtls_x509_crt_parse_file(trusted, $0) }
        }
        // A positive result counts certificates that failed to parse while others loaded:
        // bundles often contain a few that mbedTLS does not support, which is harmless.
        if status < 0 { throw TLSError(status, "loading trusted certificates from \(path)") }
        if trusted.pointee.version == 0 {
            throw TLSError(Int32(LP_ERR_X509_FILE_IO_ERROR), "no usable certificate found in \(path)")
        }
    }
}

public enum TLSStatus: Equatable {
    /// Done (handshake complete, or bytes read/written).
    case done
    /// Needs more ciphertext from the peer, or room in the outgoing buffer; try again after I/O.
    case wantIO
}

/// One TLS session driven entirely through memory: the I/O layer puts the bytes it reads from
/// the socket into `ciphertextIn`, and sends whatever appears in `ciphertextOut`. No call ever
/// blocks; "want read/write" from mbedTLS means "come back after I/O", never an error.
public final class TLSEngine {
    /// TLS adds at most this much to a record: header, explicit IV, MAC or tag, CBC padding.
    static let recordOverhead = 512
    /// The largest plaintext one record carries.
    public static let maximumRecordPayload = 16_384

    public let configuration: TLSConfiguration
    public let ciphertextIn: RingBuffer
    public let ciphertextOut: RingBuffer
    private let ssl: UnsafeMutablePointer<mbedtls_ssl_context>
    /// The endpoint's address when it is an IP literal, for the certificate's IP SANs.
    private let ipMatch: UnsafeMutablePointer<lp_ip_match>
    public private(set) var handshakeComplete = false
    public private(set) var receivedCloseNotify = false
    /// The name the certificate must carry (for error messages).
    private let expectedName: String?

    /// `serverName` is sent as SNI and, when verifying, checked against the certificate.
    /// `outputSize` must hold the largest plaintext write plus per-record overhead: a whole
    /// tunnel DATA frame (about 64.7 KB) goes in at once, so the default leaves room for three.
    public init(configuration: TLSConfiguration, serverName: String?, inputSize: Int = 64 * 1024,
                outputSize: Int = 256 * 1024) throws(TLSError) {
        self.configuration = configuration
        do {
            ciphertextIn = try RingBuffer(minimumCapacity: inputSize)
            ciphertextOut = try RingBuffer(minimumCapacity: outputSize)
        } catch {
            throw TLSError(-1, "allocating TLS buffers: \(error)")
        }
        expectedName = serverName
        ssl = .allocate(capacity: 1)
        mbedtls_ssl_init(ssl)
        var status = mbedtls_ssl_setup(ssl, configuration.config)
        if status != 0 { throw TLSError(status, "creating the TLS session") }
        ipMatch = .allocate(capacity: 1)
        ipMatch.initialize(to: lp_ip_match())
        if let name = serverName {
            status = withCString(name) { mbedtls_ssl_set_hostname(ssl, $0) }
            if status != 0 { throw TLSError(status, "setting the TLS server name \(name)") }
            withCString(name) { lp_ip_match_init(ipMatch, $0) }
            if ipMatch.pointee.length != 0 { lp_ssl_set_ip_verify(ssl, ipMatch) }
        }
        mbedtls_ssl_set_bio(ssl, Unmanaged.passUnretained(self).toOpaque(), { context, data, length in
            let engine = Unmanaged<TLSEngine>.fromOpaque(context!).takeUnretainedValue()
            return engine.send(data!, length)
        }, { context, data, length in
            let engine = Unmanaged<TLSEngine>.fromOpaque(context!).takeUnretainedValue()
            return engine.receive(data!, length)
        }, nil)
    }

    deinit {
        mbedtls_ssl_free(ssl)
        ssl.deallocate()
        ipMatch.deallocate()
    }

    private func send(_ data: UnsafePointer<UInt8>, _ length: Int) -> Int32 {
        let n = min(length, ciphertextOut.writableCount)
        if n == 0 { return Int32(LP_ERR_SSL_WANT_WRITE) }
        _ = ciphertextOut.write(UnsafeRawBufferPointer(start: data, count: n))
        return Int32(n)
    }

    private func receive(_ data: UnsafeMutablePointer<UInt8>, _ length: Int) -> Int32 {
        let n = ciphertextIn.read(into: UnsafeMutableRawBufferPointer(start: data, count: min(length, Int(Int32.max))))
        if n == 0 { return Int32(LP_ERR_SSL_WANT_READ) }
        return Int32(n)
    }

    private func isWant(_ status: Int32) -> Bool {
        status == Int32(LP_ERR_SSL_WANT_READ) || status == Int32(LP_ERR_SSL_WANT_WRITE)
            || status == Int32(LP_ERR_SSL_NEW_SESSION_TICKET)
    }

    /// Advances the handshake as far as the buffered bytes allow.
    public func handshake() throws(TLSError) -> TLSStatus {
        if handshakeComplete { return .done }
        let status = mbedtls_ssl_handshake(ssl)
        if status == 0 {
            handshakeComplete = true
            return .done
        }
        if isWant(status) { return .wantIO }
        if status == Int32(LP_ERR_X509_CERT_VERIFY_FAILED) {
            throw TLSError(status, "verifying the server's certificate", verification: verificationProblems(),
                           verificationFlags: mbedtls_ssl_get_verify_result(ssl))
        }
        switch status {
        case Int32(LP_ERR_SSL_FATAL_ALERT_MESSAGE):
            throw TLSError(status, "TLS handshake (the server ended it with an alert: most often it shares no TLS version, cipher suite or key-exchange group with this build, which offers \(offeredVersions) with ECDHE and AES-GCM or ChaCha20-Poly1305)")
        case Int32(LP_ERR_SSL_BAD_PROTOCOL_VERSION):
            throw TLSError(status, "TLS handshake (the server does not speak TLS 1.2 or newer)")
        default:
            throw TLSError(status, "TLS handshake")
        }
    }

    /// "TLS 1.2", or "TLS 1.2 and 1.3" with mbedTLS 3.x built with TLS 1.3.
    private var offeredVersions: String { text(of: lp_tls_offered_versions()) }

    private func verificationProblems() -> String {
        let flags = mbedtls_ssl_get_verify_result(ssl)
        var buffer = [CChar](repeating: 0, count: 512)
        let n = buffer.withUnsafeMutableBufferPointer { out in
            withCString("") { prefix in mbedtls_x509_crt_verify_info(out.baseAddress, out.count, prefix, flags) }
        }
        guard n > 0 else { return "flags 0x\(hex(flags))" }
        // Lines and dots cut as bytes: String's Character operations would link the Unicode
        // tables into the device binary (TunnelCore/ByteText.swift).
        let text = buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }
        var out = ""
        for var part in text.split(separator: 0x0A) {
            if !out.isEmpty { out += "; " }
            while part.last == 0x2E { part.removeLast() }
            let line = String(decoding: part, as: UTF8.self)
            out += line
            // mbedTLS says "CN" for any name mismatch (the subjectAltName entries are what it checks).
            if flags & UInt32(MBEDTLS_X509_BADCERT_CN_MISMATCH) != 0, line.hasBytePrefix("The certificate Common Name"),
               let expected = expectedName {
                out += " (expected \(expected) among the certificate's names)"
            }
        }
        return out
    }

    /// Decrypts into `buffer`. Returns the number of bytes (0 with `.wantIO`). After the peer's
    /// close_notify, returns 0 with `.done` and `receivedCloseNotify` is set.
    public func read(into buffer: UnsafeMutableRawBufferPointer) throws(TLSError) -> (Int, TLSStatus) {
        guard !receivedCloseNotify else { return (0, .done) }
        var status: Int32
        repeat {
            // A TLS 1.3 server may send session tickets at any time after the handshake. mbedTLS
            // 3.x returns "received a new session ticket" when it took one in (only when built
            // with tickets and told to report them): nothing to do but read on, since data
            // may already wait behind the ticket with no more bytes to come from the socket.
            status = mbedtls_ssl_read(ssl, buffer.baseAddress!.assumingMemoryBound(to: UInt8.self), buffer.count)
        } while status == Int32(LP_ERR_SSL_NEW_SESSION_TICKET)
        if status > 0 { return (Int(status), .done) }
        if isWant(status) { return (0, .wantIO) }
        if status == Int32(LP_ERR_SSL_PEER_CLOSE_NOTIFY) || status == 0 {
            receivedCloseNotify = true
            return (0, .done)
        }
        throw TLSError(status, "reading TLS data")
    }

    /// Bytes that `read` can return without more ciphertext.
    public var bufferedPlaintext: Int { mbedtls_ssl_get_bytes_avail(ssl) }

    /// The negotiated protocol version and cipher suite, e.g. "TLSv1.2 TLS-ECDHE-ECDSA-WITH-AES-128-GCM-SHA256"
    /// (for the log, once the handshake is done).
    public var negotiated: String {
        guard handshakeComplete, let version = mbedtls_ssl_get_version(ssl),
              let suite = mbedtls_ssl_get_ciphersuite(ssl) else { return "no session" }
        return text(of: version) + " " + text(of: suite)
    }

    private func text(of name: UnsafePointer<CChar>) -> String {
        String(decoding: UnsafeRawBufferPointer(start: name, count: strlen(name)), as: UTF8.self)
    }

    /// How many plaintext bytes `write` accepts now without overrunning `ciphertextOut`.
    public var writableCapacity: Int {
        let room = ciphertextOut.writableCount
        guard room > TLSEngine.recordOverhead else { return 0 }
        let records = room / (TLSEngine.maximumRecordPayload + TLSEngine.recordOverhead)
        if records > 0 { return records * TLSEngine.maximumRecordPayload }
        return room - TLSEngine.recordOverhead
    }

    /// Encrypts up to `writableCapacity` bytes of `bytes` into `ciphertextOut`. Returns how many
    /// were taken; the caller keeps the rest for when the outgoing buffer has drained.
    public func write(_ bytes: UnsafeRawBufferPointer) throws(TLSError) -> Int {
        var taken = 0
        while taken < bytes.count {
            let capacity = writableCapacity
            if capacity == 0 { break }
            let n = min(bytes.count - taken, capacity, TLSEngine.maximumRecordPayload)
            let status = mbedtls_ssl_write(ssl, bytes.baseAddress!.advanced(by: taken).assumingMemoryBound(to: UInt8.self), n)
            if status > 0 {
                taken += Int(status)
                continue
            }
            // With room reserved for a whole record, mbedTLS has no reason to want I/O here.
            if isWant(status) { break }
            throw TLSError(status, "writing TLS data")
        }
        return taken
    }

    /// Queues a close_notify alert (sent with the rest of `ciphertextOut`).
    public func close() {
        _ = mbedtls_ssl_close_notify(ssl)
    }
}
