import Foundation
import Testing
import TunnelCore
@testable import TunnelTLS

/// Runs both handshakes until each side is done or has failed, and returns each side's error:
/// unlike `handshake(_:_:)`, a failure of one side does not hide what the other then reports.
func handshakeOutcomes(_ client: TLSEngine, _ server: TLSEngine) -> (client: TLSError?, server: TLSError?) {
    var clientError: TLSError?
    var serverError: TLSError?
    for _ in 0..<50 {
        if clientError == nil && !client.handshakeComplete {
            do { _ = try client.handshake() } catch { clientError = error }
        }
        if serverError == nil && !server.handshakeComplete {
            do { _ = try server.handshake() } catch { serverError = error }
        }
        pump(client, server)
        let clientSettled = clientError != nil || client.handshakeComplete
        let serverSettled = serverError != nil || server.handshakeComplete
        if clientSettled && serverSettled { break }
    }
    return (clientError, serverError)
}

/// Client certificates (mutual TLS, as AWS IoT Core asks of a device) and ALPN, between our own
/// client and server configurations.
@Suite("Mutual TLS and ALPN over memory buffers", .serialized)
final class MutualTLSTests {
    let certs: TestCertificates
    let random: SecureRandom

    init() throws {
        certs = try TestCertificates.make()
        try certs.addClientCertificates()
        random = try SecureRandom()
    }

    deinit { certs.remove() }

    func server(requiring trust: [String]? = nil, alpn: [String] = []) throws -> TLSEngine {
        let config = try TLSConfiguration.server(certificateFile: certs.serverCertificate, keyFile: certs.serverKey,
                                                 random: random, requireClientCertificate: trust, alpn: alpn)
        return try TLSEngine(configuration: config, serverName: nil)
    }

    func client(certificate: String? = nil, key: String? = nil, alpn: [String] = []) throws -> TLSEngine {
        let config = try TLSConfiguration.client(trustPaths: [certs.caCertificate], verify: true, random: random,
                                                 certificateFile: certificate, keyFile: key, alpn: alpn)
        return try TLSEngine(configuration: config, serverName: "localhost")
    }

    func loadError(certificate: String?, key: String?, alpn: [String] = []) throws -> TLSError {
        try #require(throws: TLSError.self) {
            _ = try TLSConfiguration.client(trustPaths: [self.certs.caCertificate], verify: true, random: self.random,
                                            certificateFile: certificate, keyFile: key, alpn: alpn)
        }
    }

    func file(_ name: String, _ text: String) throws -> String {
        let path = certs.directory.appendingPathComponent(name).path
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    @Test func clientCertificateFromTheTrustedCAIsAccepted() throws {
        let c = try client(certificate: certs.clientCertificate, key: certs.clientKey)
        let s = try server(requiring: [certs.caCertificate])
        #expect(c.configuration.hasOwnCertificate && s.configuration.verifiesPeer)
        try handshake(c, s)
        #expect(c.handshakeComplete && s.handshakeComplete)

        // Data crosses both ways once the server has checked the client.
        let hello = Array("CONNECT".utf8)
        #expect(try hello.withUnsafeBytes { try c.write($0) } == hello.count)
        pump(c, s)
        var scratch = [UInt8](repeating: 0, count: 64)
        let (n, status) = try scratch.withUnsafeMutableBytes { try s.read(into: $0) }
        #expect(status == .done && Array(scratch[0..<n]) == hello)
    }

    @Test func missingClientCertificateFailsTheHandshake() throws {
        let c = try client()
        let s = try server(requiring: [certs.caCertificate])
        let (clientError, serverError) = handshakeOutcomes(c, s)
        #expect(!c.handshakeComplete && !s.handshakeComplete)
        let server = try #require(serverError)
        #expect(server.description.contains("the client presented no certificate, and this server requires one"), "\(server)")
        // The server's handshake_failure alert reaches the client, whose error names the cause.
        let client = try #require(clientError)
        #expect(client.description.contains("the server wanted a client certificate, and none was configured"), "\(client)")
    }

    /// What a TLS 1.3 server (AWS IoT Core, OpenSSL) answers a client without a certificate:
    /// a certificate_required alert, here written by hand in answer to the ClientHello.
    @Test func certificateRequiredAlertSaysTheServerWantedAClientCertificate() throws {
        let c = try client()
        #expect(try c.handshake() == .wantIO)
        #expect(c.ciphertextOut.readableCount > 0)
        let alert: [UInt8] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 116]
        _ = alert.withUnsafeBytes { c.ciphertextIn.write($0) }
        let error = try #require(throws: TLSError.self) { try c.handshake() }
        #expect(error.description.contains("the server wanted a client certificate, and none was configured"), "\(error)")
    }

    /// TLS 1.2 servers say handshake_failure for the same thing; the error names both causes.
    @Test func handshakeFailureAlertWithoutClientCertificateNamesBothCauses() throws {
        let c = try client()
        _ = try c.handshake()
        let alert: [UInt8] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 40]
        _ = alert.withUnsafeBytes { c.ciphertextIn.write($0) }
        let error = try #require(throws: TLSError.self) { try c.handshake() }
        #expect(error.description.contains("shares no TLS version, cipher suite or key-exchange group"), "\(error)")
        #expect(error.description.contains("or the server wanted a client certificate, and none was configured"), "\(error)")
    }

    /// A TLS 1.3 client finishes its handshake before the server checks its certificate, so a
    /// refusal arrives as an alert on the first read (seen with the static build's mbedTLS 3.6
    /// against openssl s_server: certificate_required without a certificate, unknown_ca with
    /// one from another CA). Here our TLS 1.2 server sends the same alerts after the handshake.
    @Test func refusalAfterTheHandshakeIsExplainedOnRead() throws {
        for (certificate, key, alert, text) in [
            (nil, nil, UInt8(116), "the server wanted a client certificate, and none was configured"),
            (certs.clientCertificate, certs.clientKey, UInt8(48), "an unknown_ca alert: the server refused this client's certificate"),
        ] {
            let c = try client(certificate: certificate, key: key)
            let s = try server()
            try handshake(c, s)
            s.sendFatalAlert(alert)
            pump(c, s)
            var scratch = [UInt8](repeating: 0, count: 64)
            let error = try #require(throws: TLSError.self) { _ = try scratch.withUnsafeMutableBytes { try c.read(into: $0) } }
            #expect(error.description.hasPrefix("reading TLS data (the server ended the connection with "), "\(error)")
            #expect(error.description.contains(text), "\(error)")
        }
    }

    @Test func clientCertificateFromAnotherCAIsRefused() throws {
        let c = try client(certificate: certs.otherClientCertificate, key: certs.otherClientKey)
        let s = try server(requiring: [certs.caCertificate])
        let (clientError, serverError) = handshakeOutcomes(c, s)
        #expect(!s.handshakeComplete)
        let server = try #require(serverError)
        #expect(server.isCertificateVerificationFailure)
        #expect(server.description.contains("verifying the client's certificate"), "\(server)")
        #expect(server.description.lowercased().contains("not trusted") || server.description.contains("not correctly signed"), "\(server)")
        let client = try #require(clientError)
        #expect(client.description.contains("the server refused this client's certificate"), "\(client)")
    }

    @Test func keyOfAnotherCertificateIsALoadError() throws {
        let error = try loadError(certificate: certs.clientCertificate, key: certs.serverKey)
        #expect(error.description.contains("the private key \(certs.serverKey) does not match the certificate \(certs.clientCertificate)"), "\(error)")
    }

    @Test func encryptedKeysAreRefusedByName() throws {
        for key in [certs.encryptedClientKey, certs.legacyEncryptedClientKey] {
            let error = try loadError(certificate: certs.clientCertificate, key: key)
            #expect(error.description.contains("the private key \(key) is encrypted with a passphrase, which is not supported"), "\(error)")
        }
    }

    @Test func filesThatAreNotPEMAreNamed() throws {
        let garbage = try file("garbage.pem", "this is not a certificate\n")
        var error = try loadError(certificate: garbage, key: certs.clientKey)
        #expect(error.description.contains("the certificate file \(garbage) holds no certificate"), "\(error)")
        error = try loadError(certificate: certs.clientCertificate, key: garbage)
        #expect(error.description.contains("the file \(garbage) holds no private key"), "\(error)")
        // A certificate given as the key, and the key as the certificate.
        error = try loadError(certificate: certs.clientCertificate, key: certs.clientCertificate)
        #expect(error.description.contains("holds no private key"), "\(error)")
        error = try loadError(certificate: certs.clientKey, key: certs.clientKey)
        #expect(error.description.contains("holds no certificate"), "\(error)")
    }

    @Test func missingFilesAreNamed() throws {
        var error = try loadError(certificate: "/nonexistent/device.pem", key: certs.clientKey)
        #expect(error.description.contains("cannot read the certificate file /nonexistent/device.pem"), "\(error)")
        error = try loadError(certificate: certs.clientCertificate, key: "/nonexistent/device.key")
        #expect(error.description.contains("cannot read the private key file /nonexistent/device.key"), "\(error)")
    }

    @Test func certificateAndKeyComeTogether() throws {
        var error = try loadError(certificate: certs.clientCertificate, key: nil)
        #expect(error.description.contains("without its private key"), "\(error)")
        error = try loadError(certificate: nil, key: certs.clientKey)
        #expect(error.description.contains("without its client certificate"), "\(error)")
    }

    @Test func serverKeyIsCheckedAgainstItsCertificateToo() throws {
        let error = try #require(throws: TLSError.self) {
            _ = try TLSConfiguration.server(certificateFile: self.certs.serverCertificate, keyFile: self.certs.clientKey,
                                            random: self.random)
        }
        #expect(error.description.contains("does not match the certificate"), "\(error)")
    }

    @Test func alpnIsNegotiated() throws {
        let c = try client(certificate: certs.clientCertificate, key: certs.clientKey, alpn: ["x-amzn-mqtt-ca"])
        let s = try server(requiring: [certs.caCertificate], alpn: ["x-amzn-mqtt-ca"])
        #expect(c.negotiatedALPN == nil)
        try handshake(c, s)
        #expect(c.negotiatedALPN == "x-amzn-mqtt-ca")
        #expect(s.negotiatedALPN == "x-amzn-mqtt-ca")
    }

    @Test func alpnServerPicksFromTheClientsList() throws {
        let c = try client(alpn: ["h2", "x-amzn-mqtt-ca", "http/1.1"])
        let s = try server(alpn: ["x-amzn-mqtt-ca"])
        try handshake(c, s)
        #expect(c.negotiatedALPN == "x-amzn-mqtt-ca")
    }

    @Test func noALPNWhenEitherSideHasNone() throws {
        for (offered, accepted) in [([String](), ["x-amzn-mqtt-ca"]), (["x-amzn-mqtt-ca"], [String]())] {
            let c = try client(alpn: offered)
            let s = try server(alpn: accepted)
            try handshake(c, s)
            #expect(c.negotiatedALPN == nil && s.negotiatedALPN == nil)
        }
    }

    @Test func alpnWithNoCommonProtocolFailsByName() throws {
        let c = try client(alpn: ["x-amzn-mqtt-ca"])
        let s = try server(alpn: ["h2"])
        let (clientError, serverError) = handshakeOutcomes(c, s)
        #expect(serverError != nil)
        let error = try #require(clientError)
        #expect(error.description.contains("a no_application_protocol alert: it accepts none of the ALPN protocols offered (x-amzn-mqtt-ca)"), "\(error)")
    }

    @Test func alpnNamesAreChecked() throws {
        for bad in ["", String(repeating: "a", count: 256), "a\u{0}b"] {
            let error = try loadError(certificate: nil, key: nil, alpn: ["x-amzn-mqtt-ca", bad])
            #expect(error.description.contains("must be 1 to 255 bytes without NUL"), "\(error)")
        }
        _ = try client(alpn: [String(repeating: "a", count: 255)])
    }
}
