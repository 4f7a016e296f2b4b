import CMbedTLS
import Foundation
import Testing
import TunnelCore
@testable import TunnelTLS

/// Moves ciphertext between two engines until neither has anything to send.
func pump(_ a: TLSEngine, _ b: TLSEngine) {
    func move(_ from: RingBuffer, _ to: RingBuffer) -> Bool {
        var moved = false
        while from.readableCount > 0 && to.writableCount > 0 {
            let (span, _) = from.readableSpans
            let n = min(span.count, to.writableCount)
            _ = to.write(UnsafeRawBufferPointer(rebasing: span[0..<n]))
            from.consume(n)
            moved = true
        }
        return moved
    }
    while move(a.ciphertextOut, b.ciphertextIn) || move(b.ciphertextOut, a.ciphertextIn) {}
}

/// Runs both handshakes to completion (or the first error).
func handshake(_ client: TLSEngine, _ server: TLSEngine) throws {
    for _ in 0..<50 {
        let c = try client.handshake()
        let s = try server.handshake()
        pump(client, server)
        if c == .done && s == .done { return }
    }
    Issue.record("handshake did not finish")
}

@Suite("TLS over memory buffers", .serialized)
final class TLSEngineTests {
    let certs: TestCertificates
    let random: SecureRandom

    init() throws {
        certs = try TestCertificates.make()
        random = try SecureRandom()
    }

    deinit { certs.remove() }

    func server() throws -> TLSEngine {
        let config = try TLSConfiguration.server(certificateFile: certs.serverCertificate, keyFile: certs.serverKey, random: random)
        return try TLSEngine(configuration: config, serverName: nil)
    }

    func client(trust: [String], verify: Bool = true, name: String = "localhost") throws -> TLSEngine {
        let config = try TLSConfiguration.client(trustPaths: trust, verify: verify, random: random)
        return try TLSEngine(configuration: config, serverName: name)
    }

    @Test func handshakeAndDataBothWays() throws {
        let c = try client(trust: [certs.caCertificate])
        let s = try server()
        try handshake(c, s)
        #expect(c.handshakeComplete && s.handshakeComplete)

        // 1 MiB each way, in uneven writes, through 64 KiB ciphertext buffers.
        let payload = (0..<(1 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 131 &+ ($0 >> 9)) }
        for (sender, receiver) in [(c, s), (s, c)] {
            var sent = 0
            var received: [UInt8] = []
            var scratch = [UInt8](repeating: 0, count: 20_000)
            while received.count < payload.count {
                if sent < payload.count {
                    let chunk = min(payload.count - sent, 5_000 + sent % 30_000)
                    sent += try payload.withUnsafeBytes { try sender.write(UnsafeRawBufferPointer(rebasing: $0[sent..<(sent + chunk)])) }
                }
                pump(sender, receiver)
                while true {
                    let (n, status) = try scratch.withUnsafeMutableBytes { try receiver.read(into: $0) }
                    if n == 0 || status == .wantIO { break }
                    received += scratch[0..<n]
                }
            }
            #expect(received == payload)
        }
    }

    /// Every record reaches the reader whatever its length, one-byte records included (a read
    /// returning 1 was once taken for a status code, and its byte was lost).
    @Test func recordsOfEveryShortLengthAreReadWhole() throws {
        let c = try client(trust: [certs.caCertificate])
        let s = try server()
        try handshake(c, s)
        var scratch = [UInt8](repeating: 0, count: 64)
        for length in 1...40 {
            let record = (0..<length).map { UInt8(truncatingIfNeeded: $0 &+ length) }
            #expect(try record.withUnsafeBytes { try s.write($0) } == length)
            pump(c, s)
            let (n, status) = try scratch.withUnsafeMutableBytes { try c.read(into: $0) }
            #expect(status == .done && Array(scratch[0..<n]) == record, "record of \(length) bytes")
        }
    }

    @Test func closeNotifyIsReported() throws {
        let c = try client(trust: [certs.caCertificate])
        let s = try server()
        try handshake(c, s)
        s.close()
        pump(c, s)
        var scratch = [UInt8](repeating: 0, count: 100)
        let (n, status) = try scratch.withUnsafeMutableBytes { try c.read(into: $0) }
        #expect(n == 0 && status == .done && c.receivedCloseNotify)
    }

    // mbedTLS's certificate parsers return a positive count of certificates they skipped; the
    // emulator once trapped turning that into text.
    @Test func positiveParserCountsAreDescribedNotTrapped() throws {
        #expect(TLSError(2, "loading the certificate x.pem").description == "loading the certificate x.pem: 2 certificate(s) could not be parsed")
        let certs = try TestCertificates.make()
        defer { certs.remove() }
        let bundle = certs.directory.appendingPathComponent("bundle.pem").path
        let good = try String(contentsOfFile: certs.serverCertificate, encoding: .utf8)
        let bad = "-----BEGIN CERTIFICATE-----\nTm90IGEgY2VydGlmaWNhdGUgYXQgYWxs\n-----END CERTIFICATE-----\n"
        try (good + bad).write(toFile: bundle, atomically: true, encoding: .utf8)
        let error = try #require(throws: TLSError.self) {
            _ = try TLSConfiguration.server(certificateFile: bundle, keyFile: certs.serverKey, random: SecureRandom())
        }
        #expect(error.description.contains("could not be parsed") || error.code < 0)
    }

    @Test func onlyNotYetValidIsTellingOfAClockBehind() {
        let future = UInt32(MBEDTLS_X509_BADCERT_FUTURE)
        let untrusted = UInt32(MBEDTLS_X509_BADCERT_NOT_TRUSTED)
        #expect(TLSError(-1, "v", verification: "x", verificationFlags: future).isOnlyNotYetValid)
        #expect(!TLSError(-1, "v", verification: "x", verificationFlags: future | untrusted).isOnlyNotYetValid)
        #expect(!TLSError(-1, "v", verification: "x", verificationFlags: untrusted).isOnlyNotYetValid)
        #expect(!TLSError(-1, "v").isOnlyNotYetValid)
    }

    @Test func untrustedCertificateFailsWithAClearReason() throws {
        let c = try client(trust: [certs.otherCA])
        let s = try server()
        let error = try #require(throws: TLSError.self) { try handshake(c, s) }
        #expect(error.isCertificateVerificationFailure)
        #expect(error.description.contains("verifying the server's certificate"))
        #expect(error.description.lowercased().contains("not trusted") || error.description.contains("not correctly signed"))
    }

    @Test func wrongHostNameFails() throws {
        let c = try client(trust: [certs.caCertificate], name: "data.tunneling.iot.us-east-1.amazonaws.com")
        let s = try server()
        let error = try #require(throws: TLSError.self) { try handshake(c, s) }
        #expect(error.isCertificateVerificationFailure)
        #expect(error.description.contains("CN") || error.description.lowercased().contains("name"))
    }

    @Test func ipEndpointMatchesTheCertificatesIPAddress() throws {
        // mbedTLS 2.28 does not match iPAddress SANs itself; the engine's verify callback does.
        let c = try client(trust: [certs.caCertificate], name: "127.0.0.1")
        let s = try server()
        try handshake(c, s)
        #expect(c.handshakeComplete)
    }

    @Test func otherIPAddressIsRefused() throws {
        let c = try client(trust: [certs.caCertificate], name: "127.0.0.2")
        let s = try server()
        let error = try #require(throws: TLSError.self) { try handshake(c, s) }
        #expect(error.isCertificateVerificationFailure)
    }

    @Test func ipMatchDoesNotExcuseAnUntrustedChain() throws {
        let c = try client(trust: [certs.otherCA], name: "127.0.0.1")
        let s = try server()
        let error = try #require(throws: TLSError.self) { try handshake(c, s) }
        #expect(error.isCertificateVerificationFailure)
    }

    @Test func noVerificationAcceptsAnyCertificate() throws {
        let c = try client(trust: [certs.otherCA], verify: false)
        let s = try server()
        try handshake(c, s)
        #expect(c.handshakeComplete)
    }

    @Test func trustDirectoryIsAccepted() throws {
        let c = try client(trust: [certs.directory.path])
        let s = try server()
        try handshake(c, s)
        #expect(c.handshakeComplete)
    }

    @Test func missingTrustFileIsAnError() throws {
        let error = try #require(throws: TLSError.self) {
            try TLSConfiguration.client(trustPaths: ["/nonexistent/ca.pem"], verify: true, random: random)
        }
        #expect(error.description.contains("/nonexistent/ca.pem"))
    }

    @Test func missingKeyIsAnError() throws {
        let error = try #require(throws: TLSError.self) {
            try TLSConfiguration.server(certificateFile: certs.serverCertificate, keyFile: "/nonexistent/key.pem", random: random)
        }
        #expect(error.description.contains("/nonexistent/key.pem"))
    }

    @Test func systemBundleLoads() throws {
        _ = try TLSConfiguration.client(trustPaths: [], verify: true, random: random)
    }

    @Test func uuidsAreVersion4ClientTokens() {
        let u = random.uuid()
        #expect(u.count == 36)
        #expect(isValidClientToken(u))
        let parts = u.split(separator: "-")
        #expect(parts.map(\.count) == [8, 4, 4, 4, 12])
        #expect(parts[2].first == "4")
        #expect("89ab".contains(parts[3].first!))
        #expect(random.uuid() != u)
    }
}
