import Foundation

/// The emulator's own small PKI: a CA and a server certificate it signed, made once with the
/// openssl command line and kept in the state directory, so that clients can trust the CA file
/// across restarts. The keys are made on the machine that runs the emulator and never leave the
/// state directory (the repository's .gitignore excludes *.pem and *.key).
public enum Certificates {
    public struct Files: Equatable {
        public var certificate: String
        public var key: String
        public var ca: String
    }

    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    /// Uses the files in `directory` if they are there, else makes them.
    public static func ensure(directory: String, log: ServiceLog) throws(Failure) -> Files {
        let dir = URL(fileURLWithPath: directory).standardizedFileURL
        let files = Files(certificate: dir.appendingPathComponent("server.pem").path,
                          key: dir.appendingPathComponent("server.key").path,
                          ca: dir.appendingPathComponent("ca.pem").path)
        let manager = FileManager.default
        if [files.certificate, files.key, files.ca].allSatisfy(manager.fileExists(atPath:)) {
            log.debug("using the certificates in \(dir.path)")
            return files
        }
        do {
            try manager.createDirectory(at: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        } catch {
            throw Failure(description: "cannot create the state directory \(dir.path): \(error.localizedDescription)")
        }
        log.info("generating a CA and a server certificate in \(dir.path)")
        // Work in a fresh subdirectory and move the results in last, so an interrupted run never
        // leaves a certificate without its key.
        let work = dir.appendingPathComponent("generating-\(ProcessInfo.processInfo.processIdentifier)")
        try? manager.removeItem(at: work)
        do {
            try manager.createDirectory(at: work, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        } catch {
            throw Failure(description: "cannot create \(work.path): \(error.localizedDescription)")
        }
        defer { try? manager.removeItem(at: work) }
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        // basicConstraints CA:TRUE and keyCertSign: strict verifiers refuse an issuer without them.
        try openssl(["req", "-x509"] + ec + ["-keyout", "ca.key", "-out", "ca.pem", "-days", "3650",
                     "-subj", "/CN=tunnel-service local CA",
                     "-addext", "basicConstraints=critical,CA:TRUE",
                     "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                     "-addext", "subjectKeyIdentifier=hash"], in: work)
        try openssl(["req", "-new"] + ec + ["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost"], in: work)
        let extensions = """
        basicConstraints=CA:FALSE
        keyUsage=critical,digitalSignature
        extendedKeyUsage=serverAuth
        subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1
        subjectKeyIdentifier=hash
        authorityKeyIdentifier=keyid

        """
        do {
            try extensions.write(to: work.appendingPathComponent("server.ext"), atomically: true, encoding: .utf8)
        } catch {
            throw Failure(description: "cannot write \(work.path)/server.ext: \(error.localizedDescription)")
        }
        let serial = "0x" + (0..<16).map { _ in String(UInt8.random(in: 0...255), radix: 16) }.joined()
        try openssl(["x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-set_serial", serial,
                     "-out", "server.pem", "-days", "825", "-extfile", "server.ext"], in: work)
        do {
            for name in ["ca.key", "server.key"] {
                try manager.setAttributes([.posixPermissions: 0o600], ofItemAtPath: work.appendingPathComponent(name).path)
            }
            for name in ["ca.key", "ca.pem", "server.key", "server.pem"] {
                let target = dir.appendingPathComponent(name)
                try? manager.removeItem(at: target)
                try manager.moveItem(at: work.appendingPathComponent(name), to: target)
            }
        } catch {
            throw Failure(description: "cannot store the certificates in \(dir.path): \(error.localizedDescription)")
        }
        return files
    }

    private static func openssl(_ arguments: [String], in directory: URL) throws(Failure) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["openssl"] + arguments
        process.currentDirectoryURL = directory
        let errors = Pipe()
        process.standardOutput = FileHandle.nullDevice
        process.standardError = errors
        do {
            try process.run()
        } catch {
            throw Failure(description: "cannot run openssl (is it installed?): \(error.localizedDescription)")
        }
        let output = errors.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw Failure(description: "openssl \(arguments.prefix(2).joined(separator: " ")) failed: "
                          + String(decoding: output.suffix(2000), as: UTF8.self))
        }
    }
}

/// `--state-file`: tunnels and tokens as JSON, replaced atomically on every change, so that a
/// restarted emulator keeps its open tunnels (and a crash never leaves half a file).
public struct StateFile {
    public let path: String

    public init(path: String) { self.path = path }

    public func load() throws(Certificates.Failure) -> TunnelRegistry.Snapshot? {
        guard FileManager.default.fileExists(atPath: path) else { return nil }
        do {
            let data = try Data(contentsOf: URL(fileURLWithPath: path))
            return try JSONDecoder().decode(TunnelRegistry.Snapshot.self, from: data)
        } catch {
            throw Certificates.Failure(description: "cannot read the state file \(path): \(error)")
        }
    }

    public func save(_ snapshot: TunnelRegistry.Snapshot) throws(Certificates.Failure) {
        do {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            let data = try encoder.encode(snapshot)
            // Written beside the target with owner-only permissions from the start (it holds
            // live access tokens), then renamed over it: readers see the old or the new file.
            let temporary = path + ".tmp-\(ProcessInfo.processInfo.processIdentifier)"
            guard FileManager.default.createFile(atPath: temporary, contents: data, attributes: [.posixPermissions: 0o600]) else {
                throw Certificates.Failure(description: "cannot write the state file \(temporary)")
            }
            guard rename(temporary, path) == 0 else {
                let problem = String(cString: strerror(errno))
                unlink(temporary)
                throw Certificates.Failure(description: "cannot replace the state file \(path): \(problem)")
            }
        } catch let failure as Certificates.Failure {
            throw failure
        } catch {
            throw Certificates.Failure(description: "cannot write the state file \(path): \(error)")
        }
    }
}
