import Foundation

/// A throwaway CA and a server certificate it signed (SAN localhost and 127.0.0.1), made with the
/// openssl command line in a temporary directory. Nothing is committed; each run makes new keys.
struct TestCertificates {
    let directory: URL
    var caCertificate: String { directory.appendingPathComponent("ca.pem").path }
    var serverCertificate: String { directory.appendingPathComponent("server.pem").path }
    var serverKey: String { directory.appendingPathComponent("server-key.pem").path }
    /// A second, unrelated CA: trusting it must make verification fail.
    var otherCA: String { directory.appendingPathComponent("other-ca.pem").path }

    static func make() throws -> TestCertificates {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("lp-tls-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let certs = TestCertificates(directory: dir)
        func openssl(_ args: [String]) throws {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
            p.arguments = args
            p.currentDirectoryURL = dir
            p.standardOutput = FileHandle.nullDevice
            p.standardError = FileHandle.nullDevice
            try p.run()
            p.waitUntilExit()
            if p.terminationStatus != 0 { throw CertificateError.openssl(args.joined(separator: " ")) }
        }
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        try openssl(["req", "-x509"] + ec + ["-keyout", "ca-key.pem", "-out", "ca.pem", "-days", "2",
                     "-subj", "/CN=localproxy test CA", "-addext", "basicConstraints=critical,CA:TRUE",
                     "-addext", "keyUsage=critical,keyCertSign"])
        try openssl(["req", "-x509"] + ec + ["-keyout", "other-ca-key.pem", "-out", "other-ca.pem", "-days", "2",
                     "-subj", "/CN=unrelated CA", "-addext", "basicConstraints=critical,CA:TRUE"])
        try openssl(["req", "-new"] + ec + ["-keyout", "server-key.pem", "-out", "server.csr", "-subj", "/CN=localhost"])
        try "subjectAltName=DNS:localhost,IP:127.0.0.1\n".write(to: dir.appendingPathComponent("san.ext"), atomically: true, encoding: .utf8)
        try openssl(["x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem", "-CAcreateserial",
                     "-out", "server.pem", "-days", "2", "-extfile", "san.ext"])
        return certs
    }

    func remove() { try? FileManager.default.removeItem(at: directory) }
}

enum CertificateError: Error { case openssl(String) }
