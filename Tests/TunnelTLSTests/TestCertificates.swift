import Foundation

/// A throwaway CA and a server certificate it signed (SAN localhost and 127.0.0.1), and on demand
/// client certificates, made with the openssl command line in a temporary directory. Nothing is
/// committed; each run makes new keys.
struct TestCertificates {
    let directory: URL
    var caCertificate: String { directory.appendingPathComponent("ca.pem").path }
    var serverCertificate: String { directory.appendingPathComponent("server.pem").path }
    var serverKey: String { directory.appendingPathComponent("server-key.pem").path }
    /// A second, unrelated CA: trusting it must make verification fail.
    var otherCA: String { directory.appendingPathComponent("other-ca.pem").path }

    // Made by `addClientCertificates()`, for the mutual TLS tests.
    /// A device certificate signed by the CA (extendedKeyUsage clientAuth), and its key.
    var clientCertificate: String { directory.appendingPathComponent("client.pem").path }
    var clientKey: String { directory.appendingPathComponent("client-key.pem").path }
    /// A device certificate signed by the unrelated CA, and its key.
    var otherClientCertificate: String { directory.appendingPathComponent("other-client.pem").path }
    var otherClientKey: String { directory.appendingPathComponent("other-client-key.pem").path }
    /// `clientKey` encrypted with a passphrase (PKCS#8), and in the older PEM form with a
    /// Proc-Type header.
    var encryptedClientKey: String { directory.appendingPathComponent("client-key-pkcs8-encrypted.pem").path }
    var legacyEncryptedClientKey: String { directory.appendingPathComponent("client-key-legacy-encrypted.pem").path }

    private static let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    static func make() throws -> TestCertificates {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("lp-tls-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let certs = TestCertificates(directory: dir)
        try certs.openssl(["req", "-x509"] + ec + ["-keyout", "ca-key.pem", "-out", "ca.pem", "-days", "2",
                          "-subj", "/CN=localproxy test CA", "-addext", "basicConstraints=critical,CA:TRUE",
                          "-addext", "keyUsage=critical,keyCertSign"])
        try certs.openssl(["req", "-x509"] + ec + ["-keyout", "other-ca-key.pem", "-out", "other-ca.pem", "-days", "2",
                          "-subj", "/CN=unrelated CA", "-addext", "basicConstraints=critical,CA:TRUE"])
        try certs.openssl(["req", "-new"] + ec + ["-keyout", "server-key.pem", "-out", "server.csr", "-subj", "/CN=localhost"])
        try "subjectAltName=DNS:localhost,IP:127.0.0.1\n".write(to: dir.appendingPathComponent("san.ext"), atomically: true, encoding: .utf8)
        try certs.openssl(["x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem", "-CAcreateserial",
                          "-out", "server.pem", "-days", "2", "-extfile", "san.ext"])
        return certs
    }

    /// Makes the client certificates and keys above (a few more openssl runs, so only the tests
    /// that need them pay for them).
    func addClientCertificates() throws {
        try "extendedKeyUsage=clientAuth\n".write(to: directory.appendingPathComponent("client.ext"), atomically: true, encoding: .utf8)
        for (name, ca) in [("client", "ca"), ("other-client", "other-ca")] {
            try openssl(["req", "-new"] + TestCertificates.ec + ["-keyout", "\(name)-key.pem", "-out", "\(name).csr",
                                                                 "-subj", "/CN=gateway-1"])
            try openssl(["x509", "-req", "-in", "\(name).csr", "-CA", "\(ca).pem", "-CAkey", "\(ca)-key.pem",
                         "-CAcreateserial", "-out", "\(name).pem", "-days", "2", "-extfile", "client.ext"])
        }
        try openssl(["pkcs8", "-topk8", "-in", "client-key.pem", "-out", "client-key-pkcs8-encrypted.pem",
                     "-v2", "aes-256-cbc", "-passout", "pass:secret"])
        try openssl(["ec", "-in", "client-key.pem", "-out", "client-key-legacy-encrypted.pem", "-aes256",
                     "-passout", "pass:secret"])
    }

    private func openssl(_ args: [String]) throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
        p.arguments = args
        p.currentDirectoryURL = directory
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        p.waitUntilExit()
        if p.terminationStatus != 0 { throw CertificateError.openssl(args.joined(separator: " ")) }
    }

    func remove() { try? FileManager.default.removeItem(at: directory) }
}

enum CertificateError: Error { case openssl(String) }
