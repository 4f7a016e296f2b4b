/// Fuzz target `config-file`: the `--config` file format and everything the settings in it go
/// through (ConfigurationParser in Sources/LocalProxy/Configuration.swift, its option table in
/// Sources/LocalProxy/CommandLineOptions.swift): option names and values, endpoints, `-d`/`-s`
/// mappings, numbers, tokens, and the `--config-dir` line format.
///
/// The input is the text of the `--config` file, optionally followed by a NUL byte and the text
/// that every other file read returns (the `--config-dir` file and an `--access-token-file`).
/// Files, file status and the environment are given to the parser as functions, so nothing of the
/// system is read, except one directory holding one empty file, which the command line always
/// names as `--config-dir` (the directory listing is the one thing not injectable).
///
/// Properties checked:
/// - a file that parses contains known option names only (never `config`), and the settings,
///   written out again as `name = value` lines, parse to the same settings;
/// - a configuration that parses has its values in range: verbosity, payload limit, endpoint,
///   access and client tokens, and at least one destination mapping with distinct service names
///   in destination mode.
import Glibc
@testable import LocalProxy
import TunnelCore

let configPath = "fuzz.conf"

/// The `--config-dir` directory: the one Fuzz/fuzz.py makes (FUZZ_CONFIG_DIR), or else one made
/// here under /tmp and removed at a normal exit.
let configDirectory: String = {
    if let given = getenv("FUZZ_CONFIG_DIR") { return String(cString: given) }
    var template = Array("/tmp/localproxy-fuzz-config-dir-XXXXXX".utf8CString)
    let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
    require(made != nil, "cannot make a directory under /tmp for --config-dir")
    let path = String(cString: made!)
    let fd = open(path + "/services.conf", O_CREAT | O_WRONLY | O_EXCL, 0o600)
    require(fd >= 0, "cannot make \(path)/services.conf")
    close(fd)
    atexit {
        unlink(configDirectory + "/services.conf")
        rmdir(configDirectory)
    }
    return path
}()

let environmentValues = [
    "AWSIOT_TUNNEL_REGION": "us-east-1",
    "AWSIOT_TUNNEL_ACCESS_TOKEN": "AQGAAXiFuzzTokenFromTheEnvironment",
]

func render(_ settings: [(String, String)]) -> String {
    var text = ""
    for (name, value) in settings {
        let takesValue = ConfigurationParser.spec(long: name)?.takesValue ?? true
        text += takesValue ? "\(name) = \(value)\n" : "\(name) = true\n"
    }
    return text
}

func same(_ a: [(String, String)], _ b: [(String, String)]) -> Bool {
    a.count == b.count && zip(a, b).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
}

func checkFileFormat(_ text: String) {
    let settings: [(String, String)]
    do throws(ConfigurationError) {
        settings = try ConfigurationParser.parseConfigFile(text, path: configPath)
    } catch {
        require(!error.message.isEmpty, "an empty error message")
        return
    }
    for (name, _) in settings {
        require(ConfigurationParser.spec(long: name) != nil && name != "config", "setting '\(name)' was accepted")
    }
    let written = render(settings)
    do throws(ConfigurationError) {
        let again = try ConfigurationParser.parseConfigFile(written, path: configPath)
        require(same(again, settings), "settings written out again parse differently")
    } catch {
        require(false, "settings written out again do not parse: \(error)")
    }
}

func checkConfiguration(_ config: String, other: String, seed: UInt64) {
    let status = FileStatus(mode: seed & 1 == 0 ? 0o600 : 0o640, owner: seed & 2 == 0 ? 0 : 4242,
                            isRegular: seed & 4 == 0)
    let command: Command
    do throws(ConfigurationError) {
        command = try ConfigurationParser.parse(
            ["--config", configPath, "--config-dir", configDirectory],
            environment: { environmentValues[$0] },
            readFile: { path throws(ConfigurationError) -> String in path == configPath ? config : other },
            fileStatus: { _ in status })
    } catch {
        require(!error.message.isEmpty, "an empty error message")
        return
    }
    guard case .run(let c) = command else {
        require(false, "a --config file alone asked for help or the version")
        return
    }
    require(c.verbosity >= 0 && c.verbosity <= 6, "verbosity \(c.verbosity)")
    require(c.maximumPayload >= 1 && c.maximumPayload <= TunnelMessage.maximumPayloadLength, "payload limit \(c.maximumPayload)")
    require(!c.endpointHost.isEmpty && c.endpointPort >= 1, "endpoint '\(c.endpointHost)' port \(c.endpointPort)")
    require(!c.accessToken.isEmpty && c.accessToken.utf8.count <= 4096
            && c.accessToken.utf8.allSatisfy { $0 >= 0x21 && $0 <= 0x7E }, "an access token that cannot be sent was accepted")
    if let token = c.clientToken { require(isValidClientToken(token), "client token '\(token)' was accepted") }
    switch c.mode {
    case .destination:
        require(!c.destinationMappings.isEmpty, "destination mode without a mapping")
        let ids = c.destinationMappings.map(\.serviceId)
        for (i, id) in ids.enumerated() { require(!ids[..<i].contains(id), "service '\(id)' mapped twice") }
        for mapping in c.destinationMappings {
            switch mapping.endpoint {
            case .tcp(let host, let port):
                require(!host.isEmpty && port >= 1,
                        "service '\(mapping.serviceId)' was mapped to host '\(host)' port \(port): an empty host or port 0 was accepted")
            case .unix(let path):
                require(!path.isEmpty, "service '\(mapping.serviceId)' was mapped to an empty socket path")
            }
        }
    case .source:
        let ids = c.sourceMappings.map(\.serviceId)
        for (i, id) in ids.enumerated() { require(!ids[..<i].contains(id), "service '\(id)' listened for twice") }
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let bytes = inputBytes(data, size)
    let cut = bytes.firstIndex(of: 0) ?? bytes.count
    let config = String(decoding: bytes[..<cut], as: UTF8.self)
    let other = cut < bytes.count ? String(decoding: bytes[(cut + 1)...], as: UTF8.self) : ""
    checkFileFormat(config)
    checkConfiguration(config, other: other, seed: fnv1a(bytes))
    return 0
}
