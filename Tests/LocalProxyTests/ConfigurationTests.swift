// The command line, `--config` files and the environment turned into a `Configuration`
// (docs/PROTOCOL.md §2.1, §8.1, §9, §15). Every test hands the parser its own environment, file
// contents and permission bits, so the result does not depend on the machine. The exception is
// `--config-dir`: the parser lists that directory itself, so those tests build a real one.
import Foundation
import Testing
import TunnelCore
@testable import LocalProxy

/// Distinctive enough that finding it inside an error message cannot be a coincidence.
private let secret = "AQGAAXiSecretTokenQ0FUdGVzdA0123456789abcdefXYZ"
private let environmentToken = "AQGAAXiEnvironmentToken0123456789"
private let uuid = "123e4567-e89b-12d3-a456-426614174000"
/// The usual minimum for a destination run; the access token comes from the environment so
/// that most tests see no "-t is visible in the process list" warning.
private let base = ["-r", "us-east-1", "-d", "22"]

/// What one parse sees of the system: environment variables, files and their permission bits.
private struct World: Sendable {
    var environment: [String: String] = ["AWSIOT_TUNNEL_ACCESS_TOKEN": environmentToken]
    var files: [String: String] = [:]
    var modes: [String: UInt32] = [:]
    /// Owners of files, when not this process's user; symbolic links and their owners.
    var owners: [String: UInt32] = [:]
    var links: [String: UInt32] = [:]
    static let user: UInt32 = 1000

    /// A token file with owner-only permissions, as the parser demands.
    mutating func tokenFile(_ path: String, _ contents: String, mode: UInt32 = 0o600) {
        files[path] = contents
        modes[path] = mode
    }

    /// `realFiles`: read through the parser's own file reader, for `--config-dir`, whose files
    /// the parser finds by listing a real directory.
    func parse(_ arguments: [String], realFiles: Bool = false) throws(ConfigurationError) -> Command {
        let environment = self.environment, files = self.files, modes = self.modes, owners = self.owners, links = self.links
        func status(_ path: String) -> FileStatus? {
            guard let mode = modes[path] else { return nil }
            return FileStatus(mode: mode, owner: owners[path] ?? World.user, linkOwner: links[path])
        }
        func fakeRead(_ path: String) throws(ConfigurationError) -> String {
            guard let text = files[path] else { throw ConfigurationError("test: no such file \(path)") }
            return text
        }
        if realFiles {
            return try ConfigurationParser.parse(arguments, environment: { environment[$0] },
                                                 readFile: ConfigurationParser.defaultReadFile,
                                                 fileStatus: status, userId: World.user)
        }
        return try ConfigurationParser.parse(arguments, environment: { environment[$0] },
                                             readFile: fakeRead, fileStatus: status, userId: World.user)
    }

    /// The configuration of a run; a thrown error fails the test with the parser's message.
    func run(_ arguments: [String], realFiles: Bool = false) throws -> Configuration {
        let command = try parse(arguments, realFiles: realFiles)
        guard case .run(let c) = command else { throw ConfigurationError("expected a run, got \(kind(command))") }
        return c
    }

    /// The error message, after checking that each of `parts` is in it. A parse that succeeds
    /// fails the test and yields "" (so the caller's own checks fail too, rather than crash).
    @discardableResult
    func failure(_ arguments: [String], mentioning parts: String..., realFiles: Bool = false,
                 sourceLocation: SourceLocation = #_sourceLocation) -> String {
        let message: String
        do {
            let command = try parse(arguments, realFiles: realFiles)
            Issue.record("expected an error for \(arguments), got \(kind(command))", sourceLocation: sourceLocation)
            return ""
        } catch {
            message = error.message
        }
        for part in parts {
            #expect(message.contains(part), "'\(part)' missing from: \(message)", sourceLocation: sourceLocation)
        }
        return message
    }
}

private func kind(_ command: Command) -> String {
    switch command {
    case .help: return "help"
    case .version: return "version"
    case .run(let c): return "a \(c.mode) run"
    }
}

/// Source mappings as text, short to write and readable in a failure.
private func pairs(_ c: Configuration) -> [String] { c.sourceMappings.map { "\($0.serviceId)=\($0.port)" } }
private func tcp(_ host: String, _ port: UInt16, _ service: String = "") -> ServiceMapping {
    ServiceMapping(serviceId: service, endpoint: .tcp(host: host, port: port))
}

@Suite struct ConfigurationTests {
    private let world = World()

    // MARK: Command-line syntax

    @Test func defaultsOfAPlainDestinationRun() throws {
        let c = try world.run(base)
        #expect(c.mode == .destination)
        #expect(c.endpointHost == "data.tunneling.iot.us-east-1.amazonaws.com")
        #expect(c.endpointPort == 443)
        #expect(c.accessToken == environmentToken)
        #expect(c.accessTokenSource == "AWSIOT_TUNNEL_ACCESS_TOKEN")
        #expect(c.clientToken == nil)
        #expect(c.destinationMappings == [tcp("127.0.0.1", 22)])
        #expect(c.sourceMappings.isEmpty)
        #expect(c.bindAddress == nil)
        #expect(c.configDirectory == nil)
        #expect(c.trustPaths == [])
        #expect(c.verifyCertificates)
        #expect(c.destinationClientType == nil)
        #expect(c.verbosity == 4)
        #expect(c.connectRetries == 3)
        #expect(c.connectRetryDelayMilliseconds == 1000)
        #expect(c.pingIntervalMilliseconds == 20_000)
        #expect(c.reconnectDelayMaximumMilliseconds == 120_000)
        #expect(c.maximumPayload == 64_512)
        #expect(c.tokenWaitMilliseconds == 10_000)
        #expect(c.halfCloseLingerMilliseconds == 10_000)
        #expect(c.accessTokenFile == nil)
        #expect(c.warnings == [])
    }

    // Help and version must work even when the rest of the line is wrong or incomplete: that is
    // when a user reaches for them.
    @Test(arguments: [
        ["-h"], ["--help"], ["-r", "us-east-1", "-d", "22", "-h"], ["-d", "22", "--help", "-r", "us-east-1"],
        ["-s", "1", "-d", "2", "--help"], ["--settings-json", "x.json", "-h"], ["-v", "99", "--help"],
        ["-e", "a", "-r", "b", "-h"], ["--config", "/missing.conf", "-h"],
    ])
    func helpWinsAnywhere(_ arguments: [String]) throws {
        #expect(kind(try world.parse(arguments)) == "help")
    }

    @Test(arguments: [
        ["-V"], ["--version"], ["-r", "us-east-1", "-d", "22", "-V"], ["-s", "1", "-d", "2", "--version"],
        ["-v", "99", "-V"], ["--max-payload", "0", "--version"], ["--config", "/missing.conf", "-V"],
    ])
    func versionWinsAnywhere(_ arguments: [String]) throws {
        #expect(kind(try world.parse(arguments)) == "version")
    }

    @Test func unknownOptionsAreNamed() {
        world.failure(base + ["-x"], mentioning: "unknown option -x")
        world.failure(base + ["-xyz"], mentioning: "unknown option -x")
        world.failure(base + ["--bogus"], mentioning: "unknown option --bogus")
        // Only the name: the value after '=' may be a secret.
        let m = world.failure(base + ["--bogus=value"], mentioning: "unknown option --bogus")
        #expect(!m.contains("value"))
        // Names are case-sensitive, as in the reference.
        world.failure(["--Region", "us-east-1", "-d", "22"], mentioning: "unknown option --Region")
    }

    @Test func aMissingValueIsAnError() {
        world.failure(["-d", "22", "-r"], mentioning: "--region", "needs a value")
        world.failure(base + ["--verbose"], mentioning: "--verbose", "needs a value")
        world.failure(base + ["-t"], mentioning: "--access-token", "needs a value")
        world.failure(base + ["--config"], mentioning: "--config", "needs a value")
    }

    @Test func inlineValueForms() throws {
        let c = try world.run(["--region=eu-west-1", "--destination-app=SSH=22", "-v5", "-mdst"])
        #expect(c.endpointHost == "data.tunneling.iot.eu-west-1.amazonaws.com")
        #expect(c.destinationMappings == [tcp("127.0.0.1", 22, "SSH")])
        #expect(c.verbosity == 5)
        #expect(c.mode == .destination)
        let d = try world.run(["-rus-west-2", "-d22", "--verbose=0"])
        #expect(d.endpointHost == "data.tunneling.iot.us-west-2.amazonaws.com")
        #expect(d.destinationMappings == [tcp("127.0.0.1", 22)])
        #expect(d.verbosity == 0)
    }

    @Test func aValueIsTakenEvenWhenItLooksLikeAnOption() throws {
        // `-v` consumes the next word whatever it is, so "-5" is a value (and out of range).
        world.failure(base + ["-v", "-5"], mentioning: "--verbose must be 0 to 6", "'-5'")
    }

    @Test func flagsTakeNoValue() throws {
        world.failure(base + ["--no-ssl-host-verify=1"], mentioning: "--no-ssl-host-verify takes no value")
        world.failure(base + ["--no-ssl-host-verify="], mentioning: "--no-ssl-host-verify takes no value")
        world.failure(base + ["-k1"], mentioning: "--no-ssl-host-verify takes no value")
        let c = try world.run(base + ["-k"])
        #expect(!c.verifyCertificates)
        let d = try world.run(base + ["--no-ssl-host-verify"])
        #expect(!d.verifyCertificates)
    }

    @Test func strayArgumentsAreErrors() {
        // The argument itself is not quoted: a stray word is often a token whose -t was lost.
        world.failure(base + ["extra"], mentioning: "unexpected argument number \(base.count + 1) (5 characters)")
        world.failure(["extra"] + base, mentioning: "unexpected argument number 1 (5 characters)")
        world.failure(base + ["-"], mentioning: "unexpected argument number \(base.count + 1) (1 characters)")
        // -k takes no value, so the word after it is a stray argument.
        world.failure(base + ["-k", "yes"], mentioning: "unexpected argument number \(base.count + 2) (3 characters)")
        let forgotten = world.failure(base + ["AQGAAXiSecretToken"])
        #expect(!forgotten.contains("AQGAAXiSecretToken"))
        world.failure(base + ["--"], mentioning: "unknown option --")
    }

    // MARK: Endpoint (§2.1)

    @Test func regionGivesTheDataPlaneHost() throws {
        let c = try world.run(["-r", "us-east-1", "-d", "22"])
        #expect(c.endpointHost == "data.tunneling.iot.us-east-1.amazonaws.com")
        #expect(c.endpointPort == 443)
        let cn = try world.run(["-r", "cn-north-1", "-d", "22"])
        #expect(cn.endpointHost == "data.tunneling.iot.cn-north-1.amazonaws.com.cn")
        #expect(cn.endpointPort == 443)
        let cnw = try world.run(["--region", "cn-northwest-1", "-d", "22"])
        #expect(cnw.endpointHost == "data.tunneling.iot.cn-northwest-1.amazonaws.com.cn")
    }

    @Test(arguments: ["US-EAST-1", "us_east_1", "us.east.1", "us east 1", "", "us-east-1/x",
                      String(repeating: "a", count: 65)])
    func badRegionNames(_ region: String) {
        world.failure(["-r", region, "-d", "22"], mentioning: "--region", "is not a region name")
    }

    @Test func longestRegionNameIsAccepted() throws {
        let r = String(repeating: "a", count: 64)
        #expect(try world.run(["-r", r, "-d", "22"]).endpointHost == "data.tunneling.iot.\(r).amazonaws.com")
    }

    @Test func explicitEndpoints() throws {
        let plain = try world.run(["-e", "proxy.example.com", "-d", "22"])
        #expect(plain.endpointHost == "proxy.example.com")
        #expect(plain.endpointPort == 443)
        let port = try world.run(["-e", "proxy.example.com:8443", "-d", "22"])
        #expect(port.endpointHost == "proxy.example.com")
        #expect(port.endpointPort == 8443)
        let v6 = try world.run(["--proxy-endpoint", "[::1]:8443", "-d", "22"])
        #expect(v6.endpointHost == "::1")
        #expect(v6.endpointPort == 8443)
        let v6Default = try world.run(["-e", "[2001:db8::1]", "-d", "22"])
        #expect(v6Default.endpointHost == "2001:db8::1")
        #expect(v6Default.endpointPort == 443)
        let upper = try world.run(["-e", "Data.Tunneling.IOT.EU-WEST-1.AmazonAWS.com:443", "-d", "22"])
        #expect(upper.endpointHost == "data.tunneling.iot.eu-west-1.amazonaws.com")
        let ip = try world.run(["-e", "127.0.0.1:9000", "-d", "22"])
        #expect(ip.endpointHost == "127.0.0.1")
        #expect(ip.endpointPort == 9000)
    }

    @Test(arguments: ["host name", "host/path", "host_name", "host:0", "host:65536", "host:", ":443",
                      "::1", "::1:8443", "[::1", "[::1]8443", "[::1]:", "host:12x", "https://host"])
    func badEndpoints(_ endpoint: String) {
        world.failure(["-e", endpoint, "-d", "22"], mentioning: "--proxy-endpoint")
    }

    // The brackets only delimit an IPv6 address; with nothing inside there is no host to
    // connect to, and the mistake would only surface later as a name-resolution failure.
    @Test func emptyBracketedHostIsAnError() {
        world.failure(["-e", "[]:8443", "-d", "22"], mentioning: "--proxy-endpoint")
        world.failure(["-e", "[]", "-d", "22"], mentioning: "--proxy-endpoint")
    }

    @Test func endpointAndRegionTogetherAreAnError() {
        world.failure(["-e", "proxy.example.com", "-r", "us-east-1", "-d", "22"],
                      mentioning: "-e/--proxy-endpoint", "-r/--region", "not both")
    }

    @Test func environmentFillsInOnlyWhenNoFlagIsGiven() throws {
        var w = World()
        w.environment["AWSIOT_TUNNEL_ENDPOINT"] = "Env.Example.com:4443"
        let fromEnvironment = try w.run(["-d", "22"])
        #expect(fromEnvironment.endpointHost == "env.example.com")
        #expect(fromEnvironment.endpointPort == 4443)
        // A region flag replaces the environment's endpoint rather than clashing with it.
        let overridden = try w.run(["-d", "22", "-r", "us-east-1"])
        #expect(overridden.endpointHost == "data.tunneling.iot.us-east-1.amazonaws.com")
        #expect(overridden.endpointPort == 443)

        var r = World()
        r.environment["AWSIOT_TUNNEL_REGION"] = "eu-central-1"
        #expect(try r.run(["-d", "22"]).endpointHost == "data.tunneling.iot.eu-central-1.amazonaws.com")
        #expect(try r.run(["-d", "22", "-r", "ap-south-1"]).endpointHost == "data.tunneling.iot.ap-south-1.amazonaws.com")
        let flagEndpoint = try r.run(["-d", "22", "-e", "proxy.example.com"])
        #expect(flagEndpoint.endpointHost == "proxy.example.com")
        // A bad environment value is reported like a bad flag.
        r.environment["AWSIOT_TUNNEL_REGION"] = "EU"
        r.failure(["-d", "22"], mentioning: "is not a region name")
    }

    @Test func noEndpointAtAll() {
        world.failure(["-d", "22"], mentioning: "-r", "-e", "no tunnel endpoint")
    }

    // MARK: Mode

    @Test func modeIsInferredOrGiven() throws {
        #expect(try world.run(["-r", "us-east-1", "-d", "22"]).mode == .destination)
        #expect(try world.run(["-r", "us-east-1", "-s", "5555"]).mode == .source)
        #expect(try world.run(["-r", "us-east-1", "-m", "dst", "-d", "22"]).mode == .destination)
        #expect(try world.run(["-r", "us-east-1", "-m", "destination", "-d", "22"]).mode == .destination)
        #expect(try world.run(["-r", "us-east-1", "-m", "src", "-s", "5555"]).mode == .source)
        #expect(try world.run(["-r", "us-east-1", "--mode", "source", "-s", "5555"]).mode == .source)
        #expect(try world.run(["-r", "us-east-1", "--mode=src", "--source-listen-port=5555"]).mode == .source)
    }

    @Test func modeErrors() {
        world.failure(["-r", "us-east-1", "-m", "source", "-d", "22"], mentioning: "-d/--destination-app contradicts --mode source")
        world.failure(["-r", "us-east-1", "-m", "src", "-d", "22"], mentioning: "contradicts --mode source")
        world.failure(["-r", "us-east-1", "-m", "destination", "-s", "5555"], mentioning: "-s/--source-listen-port contradicts --mode destination")
        world.failure(["-r", "us-east-1", "-s", "5555", "-d", "22"], mentioning: "not both")
        world.failure(["-r", "us-east-1", "-m", "Source", "-s", "5555"], mentioning: "--mode", "'Source'")
        world.failure(["-r", "us-east-1", "-m", "both"], mentioning: "--mode", "'both'")
        world.failure(["-r", "us-east-1"], mentioning: "-d/--destination-app", "-s/--source-listen-port", "-m/--mode")
        // A mode without any mapping has nothing to connect to or listen on.
        world.failure(["-r", "us-east-1", "-m", "dst"], mentioning: "destination mode needs -d")
        world.failure(["-r", "us-east-1", "-m", "src"], mentioning: "source mode needs -s")
    }

    // MARK: Access token

    @Test func commandLineTokenBeatsFileBeatsEnvironment() throws {
        var w = World()
        w.tokenFile("/etc/tok", "FileToken0123")
        let cli = try w.run(base + ["-t", "CliToken0123", "--access-token-file", "/etc/tok"])
        #expect(cli.accessToken == "CliToken0123")
        #expect(cli.accessTokenSource == "the command line")
        #expect(cli.accessTokenFile == nil)
        let file = try w.run(base + ["--access-token-file", "/etc/tok"])
        #expect(file.accessToken == "FileToken0123")
        #expect(file.accessTokenSource == "/etc/tok")
        // Kept so that a rotated token can be read again later.
        #expect(file.accessTokenFile == "/etc/tok")
        let env = try w.run(base)
        #expect(env.accessToken == environmentToken)
        #expect(env.accessTokenSource == "AWSIOT_TUNNEL_ACCESS_TOKEN")
        #expect(env.accessTokenFile == nil)
        // With -t the file is not even looked at, so a missing or open file does not matter.
        #expect(try w.run(base + ["-t", "CliToken0123", "--access-token-file", "/missing"]).accessToken == "CliToken0123")
        w.tokenFile("/etc/open", "x", mode: 0o644)
        #expect(try w.run(base + ["-t", "CliToken0123", "--access-token-file", "/etc/open"]).accessToken == "CliToken0123")
    }

    @Test func commandLineTokenWarnsAboutTheProcessList() throws {
        let c = try world.run(base + ["-t", "CliToken0123"])
        #expect(c.warnings.count == 1)
        #expect(c.warnings.first?.contains("process list") == true)
        #expect(try world.run(base).warnings == [])
        var w = World()
        w.tokenFile("/etc/tok", "FileToken0123")
        #expect(try w.run(base + ["--access-token-file", "/etc/tok"]).warnings == [])
    }

    // A token in a `--config` file is not on the command line: other users cannot see it in
    // the process list, so warning about that (and logging "the command line" as its source)
    // would be wrong.
    @Test func configFileTokenIsNotReportedAsCommandLine() throws {
        var w = World()
        w.files["/etc/lp.conf"] = "access-token = ConfigToken0123\n"
        w.modes["/etc/lp.conf"] = 0o600
        let c = try w.run(base + ["--config", "/etc/lp.conf"])
        #expect(c.accessToken == "ConfigToken0123")
        #expect(c.warnings.filter { $0.contains("process list") } == [])
        #expect(c.accessTokenSource != "the command line")
    }

    @Test func tokenFileIsTrimmed() throws {
        var w = World()
        w.tokenFile("/etc/tok", "  \tFileToken0123\r\n\n")
        #expect(try w.run(base + ["--access-token-file", "/etc/tok"]).accessToken == "FileToken0123")
    }

    @Test(arguments: [0o644, 0o640, 0o604, 0o660, 0o666, 0o704, 0o610] as [UInt32])
    func tokenFileReadableByOthersIsRefused(_ mode: UInt32) {
        var w = World()
        w.tokenFile("/etc/tok", secret, mode: mode)
        let m = w.failure(base + ["--access-token-file", "/etc/tok"], mentioning: "chmod 600 /etc/tok", "/etc/tok")
        #expect(!m.contains(secret))
    }

    // A config file that holds the token is as secret as a token file.
    @Test func configFileHoldingTheTokenMustBePrivate() throws {
        var w = World()
        w.files["/etc/lp.conf"] = "access-token = ConfigToken0123\n"
        w.modes["/etc/lp.conf"] = 0o644
        let m = w.failure(base + ["--config", "/etc/lp.conf"], mentioning: "/etc/lp.conf", "access-token", "chmod 600 /etc/lp.conf")
        #expect(!m.contains("ConfigToken0123"))
        // Without the token in it, a world-readable config file is fine.
        w.files["/etc/lp.conf"] = "verbose = 5\n"
        #expect(try w.run(base + ["--config", "/etc/lp.conf"]).verbosity == 5)
    }

    @Test func tokenFileOwnedBySomeoneElseIsRefused() throws {
        var w = World()
        w.tokenFile("/etc/tok", "FileToken0123")
        w.owners["/etc/tok"] = 4242
        w.failure(base + ["--access-token-file", "/etc/tok"], mentioning: "owned by uid 4242", "chown 1000 /etc/tok")
        // Root's files are trusted (a root-run provisioning agent writes them).
        w.owners["/etc/tok"] = 0
        #expect(try w.run(base + ["--access-token-file", "/etc/tok"]).accessToken == "FileToken0123")
    }

    @Test func tokenFileBehindSomeoneElsesSymlinkIsRefused() throws {
        var w = World()
        w.tokenFile("/etc/tok", "FileToken0123")
        w.links["/etc/tok"] = 4242
        w.failure(base + ["--access-token-file", "/etc/tok"], mentioning: "symbolic link owned by uid 4242")
        w.links["/etc/tok"] = World.user
        #expect(try w.run(base + ["--access-token-file", "/etc/tok"]).accessToken == "FileToken0123")
    }

    @Test func tokenFileModeIsShownInOctal() {
        var w = World()
        w.tokenFile("/etc/tok", "FileToken0123", mode: 0o644)
        w.failure(base + ["--access-token-file", "/etc/tok"], mentioning: "(mode 0644)")
    }

    @Test(arguments: [0o600, 0o400, 0o700, 0o200] as [UInt32])
    func ownerOnlyTokenFileIsAccepted(_ mode: UInt32) throws {
        var w = World()
        w.tokenFile("/etc/tok", "FileToken0123", mode: mode)
        #expect(try w.run(base + ["--access-token-file", "/etc/tok"]).accessToken == "FileToken0123")
    }

    @Test func missingTokenFile() {
        world.failure(base + ["--access-token-file", "/etc/none"], mentioning: "cannot read --access-token-file /etc/none")
        // Permissions visible but the read fails: the reader's error comes through.
        var w = World()
        w.modes["/etc/tok"] = 0o600
        w.failure(base + ["--access-token-file", "/etc/tok"], mentioning: "test: no such file /etc/tok")
    }

    @Test func noTokenAnywhere() {
        var w = World()
        w.environment = [:]
        w.failure(base, mentioning: "no access token", "AWSIOT_TUNNEL_ACCESS_TOKEN", "--access-token-file", "-t")
    }

    @Test func emptyTokens() {
        var env = World()
        env.environment["AWSIOT_TUNNEL_ACCESS_TOKEN"] = ""
        env.failure(base, mentioning: "no access token")
        world.failure(base + ["-t", ""], mentioning: "no access token")
        var file = World()
        file.tokenFile("/etc/tok", " \n\t\n")
        file.failure(base + ["--access-token-file", "/etc/tok"], mentioning: "no access token")
    }

    @Test func tokenLengthLimit() throws {
        let longest = String(repeating: "A", count: 4096)
        #expect(try world.run(base + ["-t", longest]).accessToken == longest)
        world.failure(base + ["-t", longest + "A"], mentioning: "4097 bytes", "at most 4096")
        var w = World()
        w.environment["AWSIOT_TUNNEL_ACCESS_TOKEN"] = longest + "A"
        w.failure(base, mentioning: "4097 bytes")
    }

    @Test(arguments: ["Token With Space", "Token\tTab", "Token\u{1}Control", "Token\u{7F}Delete",
                      "Token\nNewline", "Tokén"])
    func tokenCharacters(_ token: String) {
        world.failure(base + ["-t", token], mentioning: "space or control character")
        var env = World()
        // Environment values keep a pasted newline; the parser must still catch it.
        env.environment["AWSIOT_TUNNEL_ACCESS_TOKEN"] = token
        env.failure(base, mentioning: "space or control character")
    }

    @Test func tokenFileWithInnerSpaceIsRejected() {
        var w = World()
        w.tokenFile("/etc/tok", "Half One\n")
        w.failure(base + ["--access-token-file", "/etc/tok"], mentioning: "space or control character")
    }

    // MARK: Client token

    @Test func clientTokens() throws {
        #expect(try world.run(base + ["-i", uuid]).clientToken == uuid)
        let shortest = String(repeating: "a", count: 32)
        let longest = String(repeating: "Z9-", count: 42) + "ab"
        #expect(longest.count == 128)
        #expect(try world.run(base + ["--client-token", shortest]).clientToken == shortest)
        #expect(try world.run(base + ["-i", longest]).clientToken == longest)
    }

    @Test(arguments: [String(repeating: "a", count: 31), String(repeating: "a", count: 129), "",
                      "123e4567_e89b_12d3_a456_426614174000", "123e4567.e89b.12d3.a456.426614174000",
                      "123e4567-e89b-12d3-a456-42661417400 ", "{123e4567-e89b-12d3-a456-426614174000}"])
    func badClientTokens(_ token: String) {
        world.failure(base + ["-i", token], mentioning: "client token", "32 to 128")
        var env = World()
        env.environment["AWSIOT_TUNNEL_CLIENT_TOKEN"] = token
        env.failure(base, mentioning: "client token")
    }

    @Test func clientTokenFromEnvironmentOnlyWithoutFlag() throws {
        var w = World()
        w.environment["AWSIOT_TUNNEL_CLIENT_TOKEN"] = uuid
        #expect(try w.run(base).clientToken == uuid)
        let flag = String(repeating: "f", count: 40)
        #expect(try w.run(base + ["-i", flag]).clientToken == flag)
        // The flag replaces a bad environment value instead of tripping over it.
        w.environment["AWSIOT_TUNNEL_CLIENT_TOKEN"] = "bad"
        #expect(try w.run(base + ["-i", flag]).clientToken == flag)
    }

    // MARK: Secrets stay out of error messages

    /// Parse attempts that fail after (or while) an access token was supplied.
    struct LeakCase: Sendable, CustomTestStringConvertible {
        let name: String
        let arguments: [String]
        var environment: [String: String] = [:]
        var files: [String: String] = [:]
        var modes: [String: UInt32] = [:]
        var testDescription: String { name }
    }

    static let leakCases: [LeakCase] = [
        LeakCase(name: "bad client token", arguments: ["-t", secret] + base + ["-i", "short"]),
        LeakCase(name: "bad region", arguments: ["-t", secret, "-r", "US", "-d", "22"]),
        LeakCase(name: "bad endpoint", arguments: ["-t", secret, "-e", "bad host", "-d", "22"]),
        LeakCase(name: "no endpoint", arguments: ["-t", secret, "-d", "22"]),
        LeakCase(name: "no mode", arguments: ["-t", secret, "-r", "us-east-1"]),
        LeakCase(name: "both modes", arguments: ["-t", secret, "-r", "us-east-1", "-s", "1", "-d", "2"]),
        LeakCase(name: "bad -d", arguments: ["-t", secret, "-r", "us-east-1", "-d", "host"]),
        LeakCase(name: "bad verbosity", arguments: ["-t", secret] + base + ["-v", "9"]),
        LeakCase(name: "bad -y", arguments: ["-t", secret] + base + ["-y", "V9"]),
        LeakCase(name: "bad max payload", arguments: ["-t" + secret] + base + ["--max-payload", "0"]),
        LeakCase(name: "unknown option", arguments: ["-t", secret] + base + ["--bogus"]),
        LeakCase(name: "stray argument", arguments: ["-t", secret] + base + ["stray"]),
        LeakCase(name: "flag with value", arguments: ["-t", secret] + base + ["-k=1"]),
        LeakCase(name: "missing value", arguments: ["-t", secret] + base + ["-v"]),
        LeakCase(name: "settings json", arguments: ["--access-token=" + secret] + base + ["--settings-json", "s.json"]),
        LeakCase(name: "misspelt long option", arguments: base + ["--access-tokn=" + secret]),
        LeakCase(name: "space in token", arguments: base + ["-t", secret + " x"]),
        LeakCase(name: "control in token", arguments: base + ["-t", secret + "\u{1B}"]),
        LeakCase(name: "newline in token", arguments: base + ["-t", secret + "\n"]),
        LeakCase(name: "token too long", arguments: base + ["-t", String(repeating: secret, count: 100)]),
        LeakCase(name: "environment token with space", arguments: base,
                 environment: ["AWSIOT_TUNNEL_ACCESS_TOKEN": secret + " x"]),
        LeakCase(name: "environment token too long", arguments: base,
                 environment: ["AWSIOT_TUNNEL_ACCESS_TOKEN": String(repeating: secret, count: 100)]),
        LeakCase(name: "environment token, bad -d", arguments: ["-r", "us-east-1", "-d", "0"],
                 environment: ["AWSIOT_TUNNEL_ACCESS_TOKEN": secret]),
        LeakCase(name: "token file readable by others", arguments: base + ["--access-token-file", "/t"],
                 files: ["/t": secret], modes: ["/t": 0o644]),
        LeakCase(name: "token file with space", arguments: base + ["--access-token-file", "/t"],
                 files: ["/t": secret + " x\n"], modes: ["/t": 0o600]),
        LeakCase(name: "token file too long", arguments: base + ["--access-token-file", "/t"],
                 files: ["/t": String(repeating: secret, count: 100)], modes: ["/t": 0o600]),
        LeakCase(name: "token file, bad client token", arguments: base + ["--access-token-file", "/t", "-i", "x"],
                 files: ["/t": secret], modes: ["/t": 0o600]),
        LeakCase(name: "config token with space", arguments: base + ["--config", "/c"],
                 files: ["/c": "access-token = \(secret) x\n"], modes: ["/c": 0o600]),
        LeakCase(name: "config token, later unknown line", arguments: base + ["--config", "/c"],
                 files: ["/c": "access-token = \(secret)\nbogus = 1\n"], modes: ["/c": 0o600]),
        LeakCase(name: "config token misspelt", arguments: base + ["--config", "/c"],
                 files: ["/c": "access_token = \(secret)\n"]),
        LeakCase(name: "config token without '='", arguments: base + ["--config", "/c"],
                 files: ["/c": "access-token \(secret)\n"]),
        // CR LF lines: an error about one value must not quote the lines after it.
        LeakCase(name: "config token after a CR LF line", arguments: ["-d", "22", "--config", "/c"],
                 files: ["/c": "region = us-east-1!\r\naccess-token = \(secret)\r\n"], modes: ["/c": 0o600]),
        LeakCase(name: "config token readable by others", arguments: base + ["--config", "/c"],
                 files: ["/c": "access-token = \(secret)\n"], modes: ["/c": 0o644]),
    ]

    @Test(arguments: leakCases)
    func errorMessagesNeverContainTheToken(_ leak: LeakCase) {
        var w = World()
        w.environment = leak.environment
        w.files = leak.files
        w.modes = leak.modes
        let message = w.failure(leak.arguments)
        #expect(!message.isEmpty)
        #expect(!message.contains(secret), "token leaked: \(message)")
        // A fragment is as bad as the whole: check a run of the token's distinctive middle too.
        #expect(!message.contains("SecretTokenQ0FU"), "token fragment leaked: \(message)")
    }

    // MARK: -d grammar (§8.1)

    private func destinations(_ d: String, bind: String? = nil) throws -> [ServiceMapping] {
        try world.run(["-r", "us-east-1", "-d", d] + (bind.map { ["-b", $0] } ?? [])).destinationMappings
    }

    @Test func destinationForms() throws {
        #expect(try destinations("22") == [tcp("127.0.0.1", 22)])
        #expect(try destinations("22", bind: "10.0.0.5") == [tcp("10.0.0.5", 22)])
        #expect(try world.run(["-b", "10.0.0.5", "-r", "us-east-1", "-d", "22"]).bindAddress == "10.0.0.5")
        // Found by the config-file fuzz target: an empty address made every bare port host "".
        world.failure(["-b", "", "-r", "us-east-1", "-d", "22"], mentioning: "-b/--local-bind-address needs an address")
        #expect(try destinations("localhost:8080") == [tcp("localhost", 8080)])
        // An explicit host is kept even when -b is given: -b only fills in missing hosts.
        #expect(try destinations("localhost:8080", bind: "10.0.0.5") == [tcp("localhost", 8080)])
        #expect(try destinations("[::1]:22") == [tcp("::1", 22)])
        #expect(try destinations("/run/ssh.sock") == [ServiceMapping(serviceId: "", endpoint: .unix(path: "/run/ssh.sock"))])
        #expect(try destinations("65535") == [tcp("127.0.0.1", 65535)])
        #expect(try destinations("1") == [tcp("127.0.0.1", 1)])
    }

    @Test func utf8PathsAreKeptByteForByte() throws {
        // Precomposed and decomposed "é": canonically equivalent, but different file names.
        for path in ["/run/caf\u{E9}/ssh.sock", "/run/cafe\u{301}/ssh.sock"] {
            for d in [path, "SSH=\(path)", " SSH = \(path) "] {
                let mappings = try destinations(d)
                #expect(mappings.count == 1)
                guard case .unix(let got)? = mappings.first?.endpoint else {
                    Issue.record("\(d): not a socket path: \(mappings)")
                    continue
                }
                #expect(Array(got.utf8) == Array(path.utf8))
            }
        }
        // An option letter that is not ASCII is named whole in the error.
        world.failure(base + ["-\u{E9}"], mentioning: "unknown option -\u{E9}")
        world.failure(base + ["-\u{E9}x"], mentioning: "unknown option -\u{E9}")
    }

    @Test func namedDestinations() throws {
        #expect(try destinations("SSH=22,HTTP=localhost:80") == [tcp("127.0.0.1", 22, "SSH"), tcp("localhost", 80, "HTTP")])
        #expect(try destinations(" SSH = 22 , HTTP = localhost:80 ") == [tcp("127.0.0.1", 22, "SSH"), tcp("localhost", 80, "HTTP")])
        #expect(try destinations(",SSH=22,,HTTP=80,") == [tcp("127.0.0.1", 22, "SSH"), tcp("127.0.0.1", 80, "HTTP")])
        #expect(try destinations("SSH1=22,HTTP=10.0.0.1:80,VNC=/run/vnc.sock", bind: "192.168.1.9") == [
            tcp("192.168.1.9", 22, "SSH1"), tcp("10.0.0.1", 80, "HTTP"),
            ServiceMapping(serviceId: "VNC", endpoint: .unix(path: "/run/vnc.sock")),
        ])
        #expect(try destinations("V6=[fe80::1]:2222") == [tcp("fe80::1", 2222, "V6")])
        // A single bare endpoint is allowed with empty items around it.
        #expect(try destinations(",22,") == [tcp("127.0.0.1", 22)])
    }

    @Test func serviceIdentifiers() throws {
        // The AWS API allows ':' in service ids (the reference proxy does not; §8.1).
        #expect(try destinations("aws:ssh=22") == [tcp("127.0.0.1", 22, "aws:ssh")])
        #expect(try destinations("a_b-C9=22") == [tcp("127.0.0.1", 22, "a_b-C9")])
        let longest = String(repeating: "s", count: 128)
        #expect(try destinations("\(longest)=22") == [tcp("127.0.0.1", 22, longest)])
        world.failure(["-r", "us-east-1", "-d", String(repeating: "s", count: 129) + "=22"], mentioning: "1 to 128 characters")
        world.failure(["-r", "us-east-1", "-d", "a/b=22"], mentioning: "service name 'a/b'")
        world.failure(["-r", "us-east-1", "-d", "a.b=22"], mentioning: "service name 'a.b'")
        world.failure(["-r", "us-east-1", "-d", "a b=22"], mentioning: "service name 'a b'")
        world.failure(["-r", "us-east-1", "-d", "=22"], mentioning: "service name ''")
    }

    @Test func destinationErrors() {
        let r = ["-r", "us-east-1", "-d"]
        world.failure(r + ["SSH=22,SSH=23"], mentioning: "service SSH twice")
        world.failure(r + ["SSH=22,HTTP=80,SSH=22"], mentioning: "service SSH twice")
        world.failure(r + ["22,SSH=23"], mentioning: "'22'", "needs a service name")
        world.failure(r + ["SSH=22,80"], mentioning: "'80'", "needs a service name")
        world.failure(r + ["22,23"], mentioning: "needs a service name")
        world.failure(r + ["host"], mentioning: "'host' has no port")
        world.failure(r + ["SSH=host"], mentioning: "'host' has no port")
        world.failure(r + ["[::1]"], mentioning: "has no port")
        world.failure(r + ["SSH="], mentioning: "has no port")
        world.failure(r + ["::1:22"], mentioning: "IPv6 address needs brackets")
        world.failure(r + ["0"], mentioning: "-d endpoint '0'")
        world.failure(r + ["65536"], mentioning: "-d endpoint '65536'")
        world.failure(r + ["host:0"], mentioning: "port from 1 to 65535")
        world.failure(r + ["host:65536"], mentioning: "port from 1 to 65535")
        world.failure(r + ["[::1]:0"], mentioning: "port from 1 to 65535")
        world.failure(r + [":22"], mentioning: "-d endpoint ':22'")
        world.failure(r + [","], mentioning: "-d/--destination-app is empty")
        world.failure(r + [""], mentioning: "-d/--destination-app is empty")
    }

    @Test func emptyBracketedDestinationHostIsAnError() {
        world.failure(["-r", "us-east-1", "-d", "[]:22"], mentioning: "-d endpoint")
    }

    // MARK: -s grammar (§9)

    @Test func sourceForms() throws {
        let r = ["-r", "us-east-1", "-s"]
        #expect(pairs(try world.run(r + ["5555"])) == ["=5555"])
        #expect(pairs(try world.run(r + ["SSH=5555,HTTP=8080"])) == ["SSH=5555", "HTTP=8080"])
        #expect(pairs(try world.run(r + [" SSH = 5555 , , HTTP=8080 "])) == ["SSH=5555", "HTTP=8080"])
        // No port: an ephemeral one, reported in the log.
        #expect(pairs(try world.run(r + ["SSH="])) == ["SSH=0"])
        #expect(pairs(try world.run(r + ["SSH=,HTTP=8080"])) == ["SSH=0", "HTTP=8080"])
        #expect(pairs(try world.run(r + ["aws:ssh=22"])) == ["aws:ssh=22"])
    }

    @Test func sourceErrors() {
        let r = ["-r", "us-east-1", "-s"]
        world.failure(r + ["5555,6666"], mentioning: "-s entry '5555'")
        world.failure(r + ["5555,SSH=6666"], mentioning: "-s entry '5555'")
        world.failure(r + ["0"], mentioning: "-s entry '0'")
        world.failure(r + ["65536"], mentioning: "-s entry '65536'")
        world.failure(r + ["localhost:5555"], mentioning: "-s entry 'localhost:5555'")
        world.failure(r + ["SSH=65536"], mentioning: "-s entry 'SSH=65536'", "1 to 65535")
        world.failure(r + ["SSH=0"], mentioning: "-s entry 'SSH=0'")
        world.failure(r + ["SSH=x"], mentioning: "-s entry 'SSH=x'")
        world.failure(r + ["a.b=1"], mentioning: "service name 'a.b'")
    }

    // As with -d: one service cannot listen on two ports.
    @Test func duplicateSourceServiceIsAnError() {
        world.failure(["-r", "us-east-1", "-s", "SSH=5555,SSH=6666"], mentioning: "service SSH twice")
        world.failure(["-r", "us-east-1", "-s", "SSH=,HTTP=80,SSH=22"], mentioning: "service SSH twice")
    }

    // A V1 destination knows no service ids, so it can only be reached for one service.
    @Test func v1DestinationTakesOneSourceService() throws {
        world.failure(["-r", "us-east-1", "-s", "SSH=5555,HTTP=8080", "-y", "V1"], mentioning: "-y V1", "one -s entry")
        #expect(pairs(try world.run(["-r", "us-east-1", "-s", "SSH=5555", "-y", "V1"])) == ["SSH=5555"])
        #expect(pairs(try world.run(["-r", "us-east-1", "-s", "SSH=5555,HTTP=8080", "-y", "V2"])) == ["SSH=5555", "HTTP=8080"])
    }

    // MARK: --config FILE

    @Test func configFileValues() throws {
        var w = World()
        w.files["/etc/lp.conf"] = """
        # tunnel of the lab device
        region = eu-west-1

           destination-app = SSH=22, HTTP = localhost:80
        verbose = 2
        no-ssl-host-verify = true
        capath=/etc/ca.pem
        """
        let c = try w.run(["--config", "/etc/lp.conf"])
        #expect(c.endpointHost == "data.tunneling.iot.eu-west-1.amazonaws.com")
        #expect(c.destinationMappings == [tcp("127.0.0.1", 22, "SSH"), tcp("localhost", 80, "HTTP")])
        #expect(c.verbosity == 2)
        #expect(!c.verifyCertificates)
        #expect(c.trustPaths == ["/etc/ca.pem"])
    }

    // Files edited on Windows end lines with CR LF. The parser trims CR from each line, so it
    // means to accept them; each line must still be read as its own line.
    @Test func configFileWithCRLFLineEndings() throws {
        var w = World()
        w.files["/etc/lp.conf"] = "# edited on Windows\r\nregion = eu-west-1\r\ndestination-app = SSH=22\r\nverbose = 2\r\n"
        let c = try w.run(["--config", "/etc/lp.conf"])
        #expect(c.endpointHost == "data.tunneling.iot.eu-west-1.amazonaws.com")
        #expect(c.destinationMappings == [tcp("127.0.0.1", 22, "SSH")])
        #expect(c.verbosity == 2)
    }

    @Test func configFileErrorLineNumbersWithCRLF() {
        var w = World()
        w.files["/etc/lp.conf"] = "region = us-east-1\r\n\r\nbogus = 1\r\n"
        w.failure(["--config", "/etc/lp.conf", "-d", "22"], mentioning: "/etc/lp.conf line 3", "unknown option 'bogus'")
    }

    @Test func commandLineOverridesConfigFile() throws {
        var w = World()
        w.files["/etc/lp.conf"] = "verbose = 2\nregion = eu-west-1\ndestination-app = 22\n"
        #expect(try w.run(["--config", "/etc/lp.conf", "-v", "6"]).verbosity == 6)
        // Also when the option comes before --config on the line.
        #expect(try w.run(["-v", "6", "--config", "/etc/lp.conf"]).verbosity == 6)
        let c = try w.run(["--config", "/etc/lp.conf", "-r", "us-east-1", "-d", "SSH=2222"])
        #expect(c.endpointHost == "data.tunneling.iot.us-east-1.amazonaws.com")
        #expect(c.destinationMappings == [tcp("127.0.0.1", 2222, "SSH")])
        #expect(try w.run(["--config", "/etc/lp.conf"]).verbosity == 2)
    }

    @Test func configFileBeatsEnvironment() throws {
        var w = World()
        w.environment["AWSIOT_TUNNEL_CLIENT_TOKEN"] = uuid
        let fileToken = String(repeating: "c", count: 32)
        w.files["/c"] = "client-token = \(fileToken)\n"
        #expect(try w.run(base + ["--config", "/c"]).clientToken == fileToken)
    }

    @Test func flagsInConfigFile() throws {
        for (value, verify) in [("", false), ("1", false), ("true", false), ("false", true), ("0", true)] {
            var w = World()
            w.files["/c"] = "no-ssl-host-verify = \(value)\n"
            #expect(try w.run(base + ["--config", "/c"]).verifyCertificates == verify, "value '\(value)'")
        }
    }

    @Test func configFileErrorsNameFileAndLine() {
        var w = World()
        w.files["/etc/lp.conf"] = "# comment\n\nbogus-option = 1\n"
        w.failure(["--config", "/etc/lp.conf"] + base, mentioning: "/etc/lp.conf line 3", "unknown option 'bogus-option'")
        w.files["/etc/lp.conf"] = "region = us-east-1\nverbose 5\n"
        w.failure(["--config", "/etc/lp.conf", "-d", "22"], mentioning: "/etc/lp.conf line 2", "expected 'option = value'")
        // Short names are command-line only.
        w.files["/etc/lp.conf"] = "v = 5\n"
        w.failure(["--config", "/etc/lp.conf"] + base, mentioning: "/etc/lp.conf line 1", "unknown option 'v'")
        // No nesting of config files.
        w.files["/etc/lp.conf"] = "\n\n\n\nconfig = /etc/other.conf\n"
        w.failure(["--config", "/etc/lp.conf"] + base, mentioning: "/etc/lp.conf line 5", "unknown option 'config'")
        // Values are still checked like command-line values.
        w.files["/etc/lp.conf"] = "verbose = 9\n"
        w.failure(["--config", "/etc/lp.conf"] + base, mentioning: "--verbose must be 0 to 6")
        world.failure(["--config", "/etc/none.conf"] + base, mentioning: "test: no such file /etc/none.conf")
    }

    // MARK: --config-dir DIR

    /// A fresh directory with the given files (relative path → contents), removed afterwards.
    private func withDirectory<T>(_ files: [String: String], _ body: (String) throws -> T) throws -> T {
        let manager = FileManager.default
        let directory = manager.temporaryDirectory.appendingPathComponent("localproxy-config-\(UUID().uuidString)")
        try manager.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? manager.removeItem(at: directory) }
        for (name, contents) in files {
            let url = directory.appendingPathComponent(name)
            try manager.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
            try contents.write(to: url, atomically: true, encoding: .utf8)
        }
        return try body(directory.path)
    }

    @Test func configDirectoryMappings() throws {
        let files = [
            "10-first.ini": "# the first file\n[services]\nSSH = 22\n",
            "20-second.ini": "SSH = 2222\nHTTP = localhost:80\nnot a mapping\nweb.site = 81\nBAD = host\n",
            "sub/30-third.ini": "VNC = /run/vnc.sock\n",
        ]
        try withDirectory(files) { dir in
            let c = try world.run(["-r", "us-east-1", "-m", "dst", "--config-dir", dir], realFiles: true)
            #expect(c.configDirectory == dir)
            #expect(c.destinationMappings == [
                tcp("127.0.0.1", 22, "SSH"), tcp("localhost", 80, "HTTP"),
                ServiceMapping(serviceId: "VNC", endpoint: .unix(path: "/run/vnc.sock")),
            ])
            let bound = try world.run(["-r", "us-east-1", "-m", "dst", "-b", "10.0.0.5", "--config-dir", dir], realFiles: true)
            #expect(bound.destinationMappings.first == tcp("10.0.0.5", 22, "SSH"))
            // -d wins outright: the directory is not merged in.
            let explicit = try world.run(["-r", "us-east-1", "-d", "HTTP=8080", "--config-dir", dir], realFiles: true)
            #expect(explicit.destinationMappings == [tcp("127.0.0.1", 8080, "HTTP")])
        }
    }

    // As for --config files: CR LF line endings must not glue lines together.
    @Test func configDirectoryWithCRLFLineEndings() throws {
        try withDirectory(["services.ini": "[services]\r\nSSH = 22\r\nHTTP = 80\r\n"]) { dir in
            let c = try world.run(["-r", "us-east-1", "-m", "dst", "--config-dir", dir], realFiles: true)
            #expect(c.destinationMappings == [tcp("127.0.0.1", 22, "SSH"), tcp("127.0.0.1", 80, "HTTP")])
        }
    }

    @Test func emptyConfigDirectoryGivesNoMappings() throws {
        try withDirectory([:]) { dir in
            world.failure(["-r", "us-east-1", "-m", "dst", "--config-dir", dir], mentioning: "destination mode needs -d", realFiles: true)
            world.failure(["-r", "us-east-1", "-m", "dst", "--config-dir", dir + "/absent"], mentioning: "destination mode needs -d", realFiles: true)
        }
    }

    // MARK: Tuning options

    @Test func numericOptionsInRange() throws {
        let c = try world.run(base + ["--connect-retries", "0", "--connect-retry-delay-ms", "1",
                                      "--ping-interval-ms", "100", "--reconnect-delay-max-ms", "1",
                                      "--max-payload", "1", "-v", "0",
                                      "--token-wait-ms", "0", "--half-close-linger-ms", "0"])
        #expect(c.connectRetries == 0)
        #expect(c.connectRetryDelayMilliseconds == 1)
        #expect(c.pingIntervalMilliseconds == 100)
        #expect(c.reconnectDelayMaximumMilliseconds == 1)
        #expect(c.maximumPayload == 1)
        #expect(c.verbosity == 0)
        #expect(c.tokenWaitMilliseconds == 0)
        #expect(c.halfCloseLingerMilliseconds == 0)
        let d = try world.run(base + ["--connect-retries", "1000", "--connect-retry-delay-ms", "600000",
                                      "--ping-interval-ms", "3600000", "--reconnect-delay-max-ms", "3600000",
                                      "--max-payload", "64512", "-v", "6",
                                      "--token-wait-ms", "86400000", "--half-close-linger-ms", "3600000"])
        #expect(d.connectRetries == 1000)
        #expect(d.connectRetryDelayMilliseconds == 600_000)
        #expect(d.pingIntervalMilliseconds == 3_600_000)
        #expect(d.reconnectDelayMaximumMilliseconds == 3_600_000)
        #expect(d.maximumPayload == 64_512)
        #expect(d.verbosity == 6)
        #expect(d.tokenWaitMilliseconds == 86_400_000)
        #expect(d.halfCloseLingerMilliseconds == 3_600_000)
    }

    @Test(arguments: [
        ("--connect-retries", "-1", "0 to 1000"), ("--connect-retries", "1001", "0 to 1000"),
        ("--connect-retries", "three", "0 to 1000"),
        ("--connect-retry-delay-ms", "0", "1 to 600000"), ("--connect-retry-delay-ms", "600001", "1 to 600000"),
        ("--ping-interval-ms", "99", "100 to 3600000"), ("--ping-interval-ms", "3600001", "100 to 3600000"),
        ("--reconnect-delay-max-ms", "0", "1 to 3600000"), ("--reconnect-delay-max-ms", "3600001", "1 to 3600000"),
        ("--max-payload", "0", "1 to 64512"), ("--max-payload", "64513", "1 to 64512"),
        ("--max-payload", "", "1 to 64512"), ("--max-payload", "1e3", "1 to 64512"),
        ("--max-payload", "99999999999999999999", "1 to 64512"),
        ("--token-wait-ms", "-1", "0 to 86400000"), ("--token-wait-ms", "86400001", "0 to 86400000"),
        ("--half-close-linger-ms", "-1", "0 to 3600000"), ("--half-close-linger-ms", "3600001", "0 to 3600000"),
    ])
    func numericOptionsOutOfRange(_ option: String, _ value: String, _ range: String) {
        world.failure(base + [option, value], mentioning: "\(option) must be a number from \(range)", "'\(value)'")
    }

    @Test(arguments: ["7", "-1", "", "debug", "4.5"])
    func badVerbosity(_ value: String) {
        world.failure(base + ["-v", value], mentioning: "--verbose must be 0 to 6", "'\(value)'")
    }

    @Test func otherOptions() throws {
        let c = try world.run(base + ["-c", "/etc/a.pem, /etc/ssl/certs", "-y", "V1"])
        #expect(c.trustPaths == ["/etc/a.pem", "/etc/ssl/certs"])
        #expect(c.destinationClientType == .v1)
        #expect(try world.run(base + ["--destination-client-type", "v2"]).destinationClientType == .v2)
        world.failure(base + ["-y", "V4"], mentioning: "--destination-client-type", "'V4'")
    }

    // MARK: Name resolution

    @Test func dnsOptionAndTheBuiltinResolverEnvironment() throws {
        #expect(try world.run(base).resolverMode == nil, "no --dns: the build's default")
        #expect(try world.run(base + ["--dns", "builtin"]).resolverMode == .builtin)
        #expect(try world.run(base + ["--dns=system"]).resolverMode == .system)
        world.failure(base + ["--dns", "nss"], mentioning: "--dns must be system or builtin", "'nss'")
        var file = World()
        file.files["/c"] = "dns = builtin\n"
        #expect(try file.run(base + ["--config", "/c"]).resolverMode == .builtin)

        var w = World()
        w.environment["LOCALPROXY_RESOLV_CONF"] = "/tmp/test-resolv.conf"
        w.environment["LOCALPROXY_HOSTS"] = "/tmp/test-hosts"
        w.environment["LOCALPROXY_DNS_PORT"] = "5353"
        let c = try w.run(base + ["--dns", "builtin"])
        #expect(c.resolvConfPath == "/tmp/test-resolv.conf")
        #expect(c.hostsPath == "/tmp/test-hosts")
        #expect(c.nameserverPort == 5353)
        #expect(c.warnings == [])
        // The overrides mean nothing to getaddrinfo: say so.
        let system = try w.run(base + ["--dns", "system"])
        #expect(system.warnings.count == 1)
        #expect(system.warnings.first?.contains("--dns builtin") == true)
        for bad in ["0", "65536", "53x", ""] {
            w.environment["LOCALPROXY_DNS_PORT"] = bad
            w.failure(base + ["--dns", "builtin"], mentioning: "LOCALPROXY_DNS_PORT must be a port from 1 to 65535", "'\(bad)'")
        }
    }

    @Test func settingsJsonIsNotSupported() {
        world.failure(base + ["--settings-json", "settings.json"], mentioning: "--settings-json", "not supported")
        world.failure(base + ["--export-default-settings", "out.json"], mentioning: "--export-default-settings", "not supported")
        var w = World()
        w.files["/c"] = "settings-json = s.json\n"
        w.failure(base + ["--config", "/c"], mentioning: "not supported")
    }

    // MARK: Help text

    /// Parsed but rejected as unsupported, so the help does not advertise them.
    static let unadvertised: Set<String> = ["settings-json", "export-default-settings"]

    @Test func helpListsEveryOption() {
        let help = LocalProxyMain.helpText
        for option in ConfigurationParser.options where !Self.unadvertised.contains(option.long) {
            if let short = option.short {
                #expect(help.contains("-\(short), --\(option.long)"), "help lacks -\(short), --\(option.long)")
            } else {
                #expect(help.contains("    --\(option.long)"), "help lacks --\(option.long)")
            }
        }
        // The exceptions are real: if the help starts listing them, they leave the list.
        for long in Self.unadvertised {
            #expect(!help.contains("--\(long)"), "help now lists --\(long): drop it from unadvertised")
            #expect(ConfigurationParser.spec(long: long) != nil)
        }
    }

    /// The help is printed from the option table: each option the parser takes has exactly one
    /// line in it, and no line names an option the parser does not take.
    @Test func helpListsEachOptionExactlyOnce() {
        var listed: [String] = []
        for line in LocalProxyMain.helpText.split(separator: "\n").map(String.init) {
            // An option's first line: "  -x, --long VALUE  text" or "      --long VALUE  text".
            let names: Substring
            if line.hasPrefix("      --") {
                names = line.dropFirst(8)
            } else if line.hasPrefix("  -"), line.dropFirst(4).hasPrefix(", --") {
                names = line.dropFirst(8)
            } else {
                continue
            }
            listed.append(String(names.prefix { $0 != " " }))
        }
        let advertised = ConfigurationParser.options.map(\.long).filter { !Self.unadvertised.contains($0) }
        #expect(listed.sorted() == advertised.sorted())
    }

    @Test func helpKeepsItsColumns() {
        let help = LocalProxyMain.helpText
        #expect(help.contains("\n  -h, --help                      show this help and exit\n"))
        #expect(help.contains("\n      --config-dir DIR            destination: SVC=ENDPOINT lines from files in DIR, used\n"
                              + "                                  when -d is not given\n"))
        // Names that reach into the column get two spaces.
        #expect(help.contains("\n  -e, --proxy-endpoint HOST[:PORT]  endpoint instead of -r (port 443 by default)\n"))
        #expect(help.contains("\nOptions:\n"))
        #expect(help.contains("\n\nAgent mode (device side, tokens delivered by AWS IoT over MQTT instead of -t):\n"))
        #expect(help.contains("the tunneling service.\n\nEnvironment: AWSIOT_TUNNEL_ACCESS_TOKEN"))
    }

    /// Each row of the table: `-x, --long[ VALUE]` or `--long[ VALUE]`, names used once.
    @Test func optionTableIsWellFormed() {
        let options = ConfigurationParser.options
        for option in options {
            let expected = (option.short.map { "-\($0), " } ?? "") + "--" + option.long
            #expect(option.names.hasPrefix(expected), "\(option.names)")
            #expect(!option.long.isEmpty && !option.long.contains("="), "\(option.names)")
            #expect(option.takesValue == option.names.dropFirst(expected.count).hasPrefix(" "), "\(option.names)")
            #expect(options.filter { $0.long == option.long }.count == 1, "--\(option.long) twice")
            if let short = option.short {
                #expect(options.filter { $0.short == short }.count == 1, "-\(short) twice")
            }
            // What --help shows is what the parser takes.
            #expect((option.group == .unadvertised) == Self.unadvertised.contains(option.long))
            #expect(option.help.isEmpty == (option.group == .unadvertised))
            #expect(ConfigurationParser.spec(long: option.long)?.names == option.names)
        }
    }

    /// Every row's handler is reached: each option is given with a sample value and its effect
    /// checked. An option added to the table without a sample here fails this test.
    @Test func everyOptionReachesItsHandler() throws {
        var w = World()
        w.tokenFile("/etc/tok", "FileToken0123")
        w.files["/c"] = "verbose = 6\n"
        w.modes["/c"] = 0o644
        w.modes["/device.crt"] = 0o644
        w.modes["/device.key"] = 0o600
        let agent = try w.run(["--mqtt-endpoint", "broker.example:443", "--thing-name", "gw1", "--cert", "/device.crt",
                               "--key", "/device.key", "--mqtt-client-id", "gw1-agent", "--mqtt-keep-alive", "30", "-d", "22"]).agent
        for option in ConfigurationParser.options {
            let long = option.long
            switch long {
            case "help": #expect(kind(try w.parse(base + ["--help"])) == "help")
            case "version": #expect(kind(try w.parse(base + ["--version"])) == "version")
            case "settings-json", "export-default-settings": w.failure(base + ["--" + long, "s.json"], mentioning: "not supported")
            case "access-token": #expect(try w.run(base + ["-t", "CliToken0123"]).accessToken == "CliToken0123")
            case "access-token-file": #expect(try w.run(base + ["--access-token-file", "/etc/tok"]).accessTokenFile == "/etc/tok")
            case "client-token": #expect(try w.run(base + ["-i", uuid]).clientToken == uuid)
            case "region": #expect(try w.run(["-r", "eu-west-1", "-d", "22"]).endpointHost == "data.tunneling.iot.eu-west-1.amazonaws.com")
            case "proxy-endpoint": #expect(try w.run(["-e", "example.com:8443", "-d", "22"]).endpointPort == 8443)
            case "mode": w.failure(["-r", "us-east-1", "-m", "src"], mentioning: "source mode needs -s")
            case "local-bind-address": #expect(try w.run(base + ["-b", "10.0.0.5"]).bindAddress == "10.0.0.5")
            case "capath": #expect(try w.run(base + ["-c", "/a.pem"]).trustPaths == ["/a.pem"])
            case "no-ssl-host-verify": #expect(try w.run(base + ["-k"]).verifyCertificates == false)
            case "verbose": #expect(try w.run(base + ["-v", "6"]).verbosity == 6)
            case "config": #expect(try w.run(base + ["--config", "/c"]).verbosity == 6)
            case "syslog": #expect(try w.run(base + ["--syslog"]).systemLogPath == "/dev/log")
            case "log-format": #expect(try w.run(base + ["--log-format", "json"]).logFormat == .json)
            case "dns": #expect(try w.run(base + ["--dns", "builtin"]).resolverMode == .builtin)
            case "destination-app": #expect(try w.run(["-r", "us-east-1", "-d", "SSH=2222"]).destinationMappings == [tcp("127.0.0.1", 2222, "SSH")])
            case "config-dir": #expect(try w.run(base + ["--config-dir", "/etc/lp.d"]).configDirectory == "/etc/lp.d")
            case "connect-retries": #expect(try w.run(base + ["--connect-retries", "7"]).connectRetries == 7)
            case "connect-retry-delay-ms": #expect(try w.run(base + ["--connect-retry-delay-ms", "250"]).connectRetryDelayMilliseconds == 250)
            case "source-listen-port": #expect(pairs(try w.run(["-r", "us-east-1", "-s", "5555"])) == ["=5555"])
            case "destination-client-type": #expect(try w.run(base + ["-y", "V2"]).destinationClientType == .v2)
            case "half-close-linger-ms": #expect(try w.run(base + ["--half-close-linger-ms", "5"]).halfCloseLingerMilliseconds == 5)
            case "ping-interval-ms": #expect(try w.run(base + ["--ping-interval-ms", "1000"]).pingIntervalMilliseconds == 1000)
            case "pong-timeout-ms": #expect(try w.run(base + ["--pong-timeout-ms", "30000"]).pongTimeoutMilliseconds == 30_000)
            case "stall-timeout-ms": #expect(try w.run(base + ["--stall-timeout-ms", "0"]).stallTimeoutMilliseconds == 0)
            case "reconnect-delay-max-ms": #expect(try w.run(base + ["--reconnect-delay-max-ms", "60000"]).reconnectDelayMaximumMilliseconds == 60_000)
            case "max-payload": #expect(try w.run(base + ["--max-payload", "1000"]).maximumPayload == 1000)
            case "token-wait-ms": #expect(try w.run(base + ["--token-wait-ms", "0"]).tokenWaitMilliseconds == 0)
            case "mqtt-endpoint": #expect(agent?.brokerHost == "broker.example" && agent?.brokerPort == 443)
            case "thing-name": #expect(agent?.thingName == "gw1")
            case "cert": #expect(agent?.certificateFile == "/device.crt")
            case "key": #expect(agent?.keyFile == "/device.key")
            case "mqtt-client-id": #expect(agent?.clientId == "gw1-agent")
            case "mqtt-keep-alive": #expect(agent?.keepAliveSeconds == 30)
            default: Issue.record("no sample for --\(long): add one to this test")
            }
        }
    }

    /// The handlers run once each, with the option's last value, in the table's order: so an
    /// earlier bad value is replaced rather than reported, and the first error does not depend
    /// on the order of the arguments.
    @Test func onlyTheLastValueIsApplied() throws {
        #expect(try world.run(base + ["-v", "9", "-v", "5"]).verbosity == 5)
        #expect(try world.run(base + ["-c", "/a.pem", "-c", "/b.pem"]).trustPaths == ["/b.pem"])
        #expect(try world.run(base + ["-m", "both", "-m", "dst"]).mode == .destination)
        let one = world.failure(base + ["-v", "9", "--max-payload", "0"])
        let other = world.failure(base + ["--max-payload", "0", "-v", "9"])
        #expect(one == other)
    }

    // MARK: Web proxy (https_proxy, no_proxy)

    @Test func noProxyVariableMeansADirectConnection() throws {
        let c = try world.run(base)
        #expect(c.webProxy == nil)
        #expect(c.webProxyNote == nil)
        var w = World()
        w.environment["https_proxy"] = "  "
        #expect(try w.run(base).webProxy == nil)
    }

    @Test func lowerCaseHttpsProxyIsPreferred() throws {
        var w = World()
        w.environment["HTTPS_PROXY"] = "http://upper:8080"
        #expect(try w.run(base).webProxy == WebProxy(host: "upper", port: 8080))
        w.environment["https_proxy"] = "lower"
        let c = try w.run(base)
        #expect(c.webProxy == WebProxy(host: "lower", port: 3128))
        #expect(c.webProxyNote == "connecting to the service through the web proxy http://lower:3128 (from https_proxy)")
    }

    @Test func credentialsAreMentionedButNeverShown() throws {
        var w = World()
        w.environment["HTTPS_PROXY"] = "http://gateway:\(secret)@10.1.2.3:3129"
        let c = try w.run(base)
        #expect(c.webProxy?.credentials == Array("gateway:\(secret)".utf8))
        #expect(c.webProxyNote == "connecting to the service through the web proxy http://10.1.2.3:3129 with credentials (from HTTPS_PROXY)")
        w.environment["HTTPS_PROXY"] = "http://gateway:\(secret)%00@10.1.2.3:3129"
        let message = w.failure(base, mentioning: "HTTPS_PROXY", "%00", "http://[USER:PASSWORD@]HOST[:PORT]")
        #expect(!message.contains(secret))
    }

    @Test func httpsSchemeIsAClearConfigurationError() {
        var w = World()
        w.environment["https_proxy"] = "https://proxy:443"
        w.failure(base, mentioning: "https_proxy", "https:// proxies", "not supported", "http://")
    }

    @Test func noProxyBypassesTheProxyForTheEndpoint() throws {
        var w = World()
        w.environment["https_proxy"] = "http://proxy:3128"
        w.environment["NO_PROXY"] = "localhost,.amazonaws.com"
        var c = try w.run(base)
        #expect(c.webProxy == nil)
        #expect(c.webProxyNote == "NO_PROXY covers data.tunneling.iot.us-east-1.amazonaws.com: connecting to the service directly, not through the web proxy of https_proxy")
        // no_proxy is preferred to NO_PROXY, as https_proxy is to HTTPS_PROXY.
        w.environment["no_proxy"] = "localhost"
        c = try w.run(base)
        #expect(c.webProxy == WebProxy(host: "proxy", port: 3128))
        // The endpoint of -e is the host compared.
        w.environment["no_proxy"] = "127.0.0.1"
        c = try w.run(["-e", "127.0.0.1:8443", "-d", "22"])
        #expect(c.webProxy == nil)
        // A bypassed proxy is not used, so a URL this program could not use is no error.
        w.environment["https_proxy"] = "https://proxy"
        #expect(try w.run(["-e", "127.0.0.1:8443", "-d", "22"]).webProxy == nil)
    }

    @Test func helpNamesTheEnvironment() {
        for name in ["AWSIOT_TUNNEL_ACCESS_TOKEN", "AWSIOT_TUNNEL_CLIENT_TOKEN", "AWSIOT_TUNNEL_ENDPOINT", "AWSIOT_TUNNEL_REGION",
                     "https_proxy", "HTTPS_PROXY", "no_proxy", "NO_PROXY"] {
            #expect(LocalProxyMain.helpText.contains(name))
        }
    }
}
