import CMbedTLS
import TunnelCore

/// Shared settings for TLS sessions: role, trust anchors, own certificate, verification, ALPN.
public final class TLSConfiguration {
    public enum Role { case client, server }

    /// Debian's bundle of trusted roots, used when no `-c/--capath` is given.
    public static let systemBundle = "/etc/ssl/certs/ca-certificates.crt"

    public let role: Role
    public let verifiesPeer: Bool
    /// Whether this side has a certificate to present (always for a server; for a client, the
    /// one it gives when the server asks, as AWS IoT Core does for MQTT).
    public private(set) var hasOwnCertificate = false
    /// The ALPN protocol names offered (client) or accepted (server), most preferred first.
    public private(set) var alpnProtocols: [String] = []
    let random: SecureRandom
    let config: UnsafeMutablePointer<mbedtls_ssl_config>
    let trusted: UnsafeMutablePointer<mbedtls_x509_crt>
    let ownCertificate: UnsafeMutablePointer<mbedtls_x509_crt>
    let ownKey: UnsafeMutablePointer<mbedtls_pk_context>
    /// The NULL-terminated array of C strings `mbedtls_ssl_conf_alpn_protocols` keeps a pointer
    /// to (not a copy): it lives as long as `config` and is freed in `deinit`.
    private var alpnList: UnsafeMutablePointer<UnsafePointer<CChar>?>?

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
        if let list = alpnList {
            var i = 0
            while let name = list[i] {
                UnsafeMutablePointer(mutating: name).deallocate()
                i += 1
            }
            list.deallocate()
        }
    }

    /// A client configuration. `trustPaths` are PEM bundles or directories of certificates
    /// (each entry may be either); empty means the system bundle. With `verify` false nothing
    /// about the server's certificate is checked (`-k`): for development only.
    ///
    /// With `certificateFile` (PEM or DER, the client's certificate first, then any
    /// intermediates) and its unencrypted `keyFile`, the client presents them when the server
    /// asks for a certificate (mutual TLS, as AWS IoT Core wants of a device); give both or
    /// neither. `alpn` lists the protocol names offered in the ALPN extension (RFC 7301), most
    /// preferred first: AWS IoT Core takes MQTT on port 443 under `x-amzn-mqtt-ca`.
    public static func client(trustPaths: [String], verify: Bool, random: SecureRandom,
                              certificateFile: String? = nil, keyFile: String? = nil,
                              alpn: [String] = []) throws(TLSError) -> TLSConfiguration {
        let c = try TLSConfiguration(role: .client, verifiesPeer: verify, random: random)
        // The cheapest record cipher first, for servers that let the client choose: AES-GCM
        // where this build has fast code for it on this CPU (AES and carry-less multiply
        // instructions), ChaCha20-Poly1305 everywhere else, where it beats a portable AES-GCM
        // (docs/CRYPTO.md has the figures).
        lp_ssl_conf_cipher_order(c.config, CryptoBackend.aesGCMIsFast ? 1 : 0)
        if verify { try c.trust(trustPaths) }
        if let certificateFile, let keyFile {
            try c.useOwnCertificate(certificateFile, keyFile: keyFile)
        } else if let certificateFile {
            throw TLSError(Int32(LP_ERR_SSL_BAD_INPUT_DATA), "the client certificate " + certificateFile + " was given without its private key file")
        } else if let keyFile {
            throw TLSError(Int32(LP_ERR_SSL_BAD_INPUT_DATA), "the private key " + keyFile + " was given without its client certificate file")
        }
        try c.offerALPN(alpn)
        return c
    }

    /// A server configuration presenting `certificateFile` (PEM chain) with `keyFile`.
    /// With `requireClientCertificate`, every client must present a certificate that chains to
    /// one of these trust paths (bundles or directories; empty means the system bundle), as
    /// AWS IoT Core requires: for tests and the emulator. `alpn` lists the protocol names the
    /// server accepts, in its order of preference; a client offering ALPN and none of them is
    /// refused (RFC 7301 §3.2).
    public static func server(certificateFile: String, keyFile: String, random: SecureRandom,
                              requireClientCertificate clientTrustPaths: [String]? = nil,
                              alpn: [String] = []) throws(TLSError) -> TLSConfiguration {
        let c = try TLSConfiguration(role: .server, verifiesPeer: clientTrustPaths != nil, random: random)
        try c.useOwnCertificate(certificateFile, keyFile: keyFile)
        if let clientTrustPaths { try c.trust(clientTrustPaths) }
        try c.offerALPN(alpn)
        return c
    }

    /// Loads the trusted roots the peer's chain is verified against.
    private func trust(_ paths: [String]) throws(TLSError) {
        for path in paths.isEmpty ? [TLSConfiguration.systemBundle] : paths {
            try addTrusted(path)
        }
        mbedtls_ssl_conf_ca_chain(config, trusted, nil)
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

    /// Loads this side's certificate chain and private key, checks that they belong together,
    /// and makes them the ones presented: by a server always, by a client when asked. Each
    /// failure names the file and what is wrong with it. (Texts joined with `+` and each path
    /// made a C string once: both compile to less code than interpolation and `withCString`.)
    private func useOwnCertificate(_ certificateFile: String, keyFile: String) throws(TLSError) {
        let certificatePath = cString(certificateFile)
        var status = mbedtls_x509_crt_parse_file(ownCertificate, certificatePath)
        if status == Int32(LP_ERR_PK_FILE_IO_ERROR) || status == Int32(LP_ERR_X509_FILE_IO_ERROR) {
            throw TLSError(status, "cannot read the certificate file " + certificateFile + " (missing, or not readable by this user)")
        }
        if status < 0 {
            throw TLSError(status, "the certificate file " + certificateFile + " holds no certificate this build can read (it must be PEM, '-----BEGIN CERTIFICATE-----', or DER)")
        }
        // Positive: that many certificates of the chain could not be parsed; the chain would
        // be sent incomplete.
        if status > 0 { throw TLSError(status, "loading the certificate chain " + certificateFile) }

        let keyPath = cString(keyFile)
        status = lp_pk_parse_keyfile(ownKey, keyPath, random.drbg)
        if status != 0 {
            let problem: String
            if status == Int32(LP_ERR_PK_FILE_IO_ERROR) {
                throw TLSError(status, "cannot read the private key file " + keyFile + " (missing, or not readable by this user)")
            } else if status == Int32(LP_ERR_PK_PASSWORD_REQUIRED) || status == Int32(LP_ERR_PK_PASSWORD_MISMATCH)
                || lp_file_says_encrypted(keyPath) != 0 {
                // The minimal 3.6 build has no PKCS#5, so it sees an encrypted PKCS#8 key as an
                // invalid one: the file itself tells.
                problem = " is encrypted with a passphrase, which is not supported: store it unencrypted (e.g. openssl pkey -in KEY -out PLAIN), readable only by the proxy's user"
            } else if status == Int32(LP_ERR_PK_UNKNOWN_PK_ALG) || status == Int32(LP_ERR_PK_FEATURE_UNAVAILABLE) {
                problem = " is of a type or curve this build does not support (RSA, or ECDSA on P-256 or P-384)"
            } else {
                throw TLSError(status, "the file " + keyFile + " holds no private key this build can read (it must be an unencrypted PEM or DER key: PKCS#8, or PKCS#1 RSA, or SEC1 EC)")
            }
            throw TLSError(status, "the private key " + keyFile + problem)
        }
        status = lp_x509_crt_check_key(ownCertificate, ownKey, random.drbg)
        if status != 0 {
            throw TLSError(status, "the private key " + keyFile + " does not match the certificate " + certificateFile + " (it is not the key of the certificate's public key)")
        }
        status = mbedtls_ssl_conf_own_cert(config, ownCertificate, ownKey)
        if status != 0 { throw TLSError(status, "using the certificate " + certificateFile + " with the key " + keyFile) }
        hasOwnCertificate = true
    }

    /// Sets the ALPN protocol names (none: no ALPN extension). Each name is 1 to 255 bytes
    /// without NUL (RFC 7301 §3.1), copied into memory this configuration owns.
    private func offerALPN(_ names: [String]) throws(TLSError) {
        guard !names.isEmpty else { return }
        for name in names where name.isEmpty || name.utf8.count > 255 || name.containsByte(0) {
            throw TLSError(Int32(LP_ERR_SSL_BAD_INPUT_DATA), "the ALPN protocol name '" + name + "' must be 1 to 255 bytes without NUL")
        }
        let list = UnsafeMutablePointer<UnsafePointer<CChar>?>.allocate(capacity: names.count + 1)
        for (i, name) in names.enumerated() {
            let bytes = cString(name)
            let copy = UnsafeMutablePointer<CChar>.allocate(capacity: bytes.count)
            copy.initialize(from: bytes, count: bytes.count)
            list[i] = UnsafePointer(copy)
        }
        list[names.count] = nil
        alpnList = list
        alpnProtocols = names
        let status = mbedtls_ssl_conf_alpn_protocols(config, list)
        if status != 0 { throw TLSError(status, "setting the ALPN protocols") }
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
        let peer = configuration.role == .client ? "server" : "client"
        if status == Int32(LP_ERR_X509_CERT_VERIFY_FAILED) {
            throw TLSError(status, "verifying the " + peer + "'s certificate", verification: verificationProblems(),
                           verificationFlags: mbedtls_ssl_get_verify_result(ssl))
        }
        switch status {
        case Int32(LP_ERR_SSL_FATAL_ALERT_MESSAGE):
            throw TLSError(status, "TLS handshake (the " + peer + " ended it with " + alertReason(lp_ssl_received_alert(ssl)) + ")")
        case Int32(LP_ERR_SSL_BAD_PROTOCOL_VERSION):
            throw TLSError(status, "TLS handshake (the " + peer + " does not speak TLS 1.2 or newer)")
        case Int32(LP_ERR_SSL_NO_CLIENT_CERTIFICATE):
            // mbedTLS's TLS 1.2 server ends the handshake here without telling the client (its
            // TLS 1.3 server sends certificate_required itself): say it with handshake_failure,
            // as RFC 5246 §7.4.6 has it, so the client learns why rather than seeing the
            // connection drop. A second alert after TLS 1.3's is ignored by the client.
            _ = mbedtls_ssl_send_alert_message(ssl, UInt8(MBEDTLS_SSL_ALERT_LEVEL_FATAL), UInt8(MBEDTLS_SSL_ALERT_MSG_HANDSHAKE_FAILURE))
            throw TLSError(status, "TLS handshake (the client presented no certificate, and this server requires one)")
        default:
            throw TLSError(status, "TLS handshake")
        }
    }

    /// What the peer's fatal alert (RFC 8446 §6.2) most likely means, for the handshake error.
    /// Texts are joined with `+`, which compiles to less code than interpolation.
    private func alertReason(_ alert: Int32) -> String {
        let asClient = configuration.role == .client
        let hasCertificate = configuration.hasOwnCertificate
        let wanted = "the server wanted a client certificate, and none was configured"
        let mismatch = "most often it shares no TLS version, cipher suite or key-exchange group with this build, which offers "
            + offeredVersions + " with ECDHE and AES-GCM or ChaCha20-Poly1305"
        switch alert {
        case 116:
            // certificate_required: TLS 1.3's own word for it.
            return "a certificate_required alert: " + (asClient && !hasCertificate
                ? wanted + " (give the device certificate and its private key)" : "the peer wanted a certificate")
        case 40:
            // handshake_failure: also what TLS 1.2 servers send when a required client
            // certificate is missing.
            return "a handshake_failure alert: " + mismatch + (asClient && !hasCertificate ? "; or " + wanted : "")
        case 42, 43, 44, 45, 46, 48, 49:
            return alertName(alert) + " alert: " + (asClient && hasCertificate
                ? "the server refused this client's certificate (is it registered and active, and does the server trust its issuer?)"
                : "the peer refused a certificate or this connection")
        case 120:
            var offered = ""
            for name in configuration.alpnProtocols { offered += (offered.isEmpty ? "" : ", ") + name }
            return "a no_application_protocol alert: it accepts none of the ALPN protocols offered (" + offered + ")"
        case -1:
            return "an alert: " + mismatch
        default:
            return "alert \(alert): " + mismatch
        }
    }

    /// The alerts that refuse a certificate or the peer behind it, by name with their article.
    private func alertName(_ alert: Int32) -> String {
        switch alert {
        case 42: return "a bad_certificate"
        case 43: return "an unsupported_certificate"
        case 44: return "a certificate_revoked"
        case 45: return "a certificate_expired"
        case 46: return "a certificate_unknown"
        case 48: return "an unknown_ca"
        default: return "an access_denied"
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
        if status == Int32(LP_ERR_SSL_FATAL_ALERT_MESSAGE) {
            // A TLS 1.3 client finishes its handshake before the server has checked the
            // client's certificate: a server that refuses it (AWS IoT Core, OpenSSL) says so
            // in an alert that arrives with the first read.
            let peer = configuration.role == .client ? "server" : "client"
            throw TLSError(status, "reading TLS data (the " + peer + " ended the connection with " + alertReason(lp_ssl_received_alert(ssl)) + ")")
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

    /// The protocol both sides agreed on through ALPN (RFC 7301), nil when the client offered
    /// none, the server did not answer the extension, or the handshake is not done.
    public var negotiatedALPN: String? {
        guard handshakeComplete, let name = mbedtls_ssl_get_alpn_protocol(ssl) else { return nil }
        return text(of: name)
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

    /// Queues a fatal alert with this description (RFC 8446 §6.2), as a server refusing a
    /// client after the handshake does: for tests.
    func sendFatalAlert(_ description: UInt8) {
        _ = mbedtls_ssl_send_alert_message(ssl, UInt8(MBEDTLS_SSL_ALERT_LEVEL_FATAL), description)
    }
}
