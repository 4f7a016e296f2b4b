import TunnelCore
import TunnelIO

/// Everything a run needs, resolved from the command line, `--config` file and environment
/// (in that order of precedence; docs/PROTOCOL.md §15).
public struct Configuration {
    public var mode: TunnelMode = .destination
    public var endpointHost = ""
    public var endpointPort: UInt16 = 443
    public var accessToken = ""
    /// Where the access token came from, for the log ("command line", "environment", a file).
    public var accessTokenSource = ""
    /// `--access-token-file`, re-read when the service ends a session (token rotation).
    public var accessTokenFile: String? = nil
    /// How long to wait for a new token in that file before exiting.
    public var tokenWaitMilliseconds = 10_000
    /// Source mode: how long a half-closed local connection waits for tunnel data.
    public var halfCloseLingerMilliseconds = 10_000
    public var clientToken: String? = nil
    public var destinationMappings: [ServiceMapping] = []
    /// `--config-dir`: consulted for service mappings when `-d` gives none.
    public var configDirectory: String? = nil
    public var sourceMappings: [SourceSession.Mapping] = []
    public var bindAddress: String? = nil
    public var trustPaths: [String] = []
    public var verifyCertificates = true
    public var destinationClientType: MessageFormat? = nil
    public var verbosity = 4
    public var connectRetries = 3
    public var connectRetryDelayMilliseconds = 1000
    public var pingIntervalMilliseconds = 20_000
    /// How long without a pong (or any byte) from the service before the connection counts as
    /// dead and is replaced; nil: two ping intervals plus 5 s; 0: never.
    public var pongTimeoutMilliseconds: Int? = nil
    /// How long a local connection may hold the whole tunnel back without taking a byte before
    /// it is reset (0: never).
    public var stallTimeoutMilliseconds = 15_000
    public var reconnectDelayMaximumMilliseconds = 120_000
    public var maximumPayload = TunnelMessage.maximumPayloadLength
    /// `--dns`: how host names are resolved; nil keeps the build's default (`Resolver.defaultMode`).
    public var resolverMode: ResolverMode? = nil
    /// The built-in resolver's files and nameserver port, from LOCALPROXY_RESOLV_CONF,
    /// LOCALPROXY_HOSTS and LOCALPROXY_DNS_PORT (meant for tests).
    public var resolvConfPath: String? = nil
    public var hostsPath: String? = nil
    public var nameserverPort: UInt16? = nil
    /// `--log-format`: text lines or one JSON object a line.
    public var logFormat = LogFormat.text
    /// `--syslog`: the system log socket lines go to (nil: standard error).
    public var systemLogPath: String? = nil
    /// The web proxy the service is reached through (`https_proxy`), nil for a direct connection.
    public var webProxy: WebProxy? = nil
    /// What to log once about the web proxy: which one is used, or that `no_proxy` bypasses it.
    public var webProxyNote: String? = nil
    /// Warnings found while parsing (logged once the logger is set up).
    public var warnings: [String] = []
    /// `--mqtt-endpoint` and its companions: agent mode, in which the access tokens come from
    /// MQTT notifications (docs/AGENT.md); nil otherwise.
    public var agent: AgentSettings? = nil

    public init() {}

    /// The pong deadline in effect (0: off).
    public var effectivePongTimeoutMilliseconds: Int { pongTimeoutMilliseconds ?? 2 * pingIntervalMilliseconds + 5_000 }
}

/// Agent mode: where the notifications come from and who this device is.
public struct AgentSettings: Equatable {
    /// The MQTT broker (the account's AWS IoT data endpoint).
    public var brokerHost: String
    /// 8883 by default; on 443 the connection asks for ALPN `x-amzn-mqtt-ca`, as AWS IoT requires.
    public var brokerPort: UInt16
    public var thingName: String
    /// The device certificate (PEM) and its private key, for mutual TLS.
    public var certificateFile: String
    public var keyFile: String
    /// The MQTT client id: the thing name unless `--mqtt-client-id` says otherwise.
    public var clientId: String
    public var keepAliveSeconds: UInt16

    /// The AWS IoT topic the service publishes destination tokens to.
    public var notifyTopic: String { "$aws/things/\(thingName)/tunnels/notify" }
    /// ALPN for MQTT over TLS on port 443 (AWS IoT tells MQTT from HTTPS by it).
    public var alpn: [String] { brokerPort == 443 ? ["x-amzn-mqtt-ca"] : [] }

    public init(brokerHost: String, brokerPort: UInt16, thingName: String, certificateFile: String, keyFile: String,
                clientId: String, keepAliveSeconds: UInt16) {
        self.brokerHost = brokerHost
        self.brokerPort = brokerPort
        self.thingName = thingName
        self.certificateFile = certificateFile
        self.keyFile = keyFile
        self.clientId = clientId
        self.keepAliveSeconds = keepAliveSeconds
    }
}

/// What the command line asked for.
public enum Command {
    case run(Configuration)
    case help
    case version
}

public struct ConfigurationError: Error, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

// The parser cuts and compares text as UTF-8 bytes (TunnelCore/ByteText.swift), never through
// `Character` or `String ==`, which would link the Unicode tables into the device binary. Its
// loops run over `Array(text.utf8)` rather than `text.utf8`, whose iterator Embedded Swift inlines
// into each loop (about 900 bytes on armv7), where the array is one shared call. The options
// themselves, each with its handler and its `--help` text, are in CommandLineOptions.swift.
public enum ConfigurationParser {
    /// The place of the option named `long` in `options`.
    static func index(long: String) -> Int? {
        for (i, o) in options.enumerated() where o.long.bytesEqual(long) { return i }
        return nil
    }

    static func spec(long: String) -> OptionSpec? {
        index(long: long).map { options[$0] }
    }

    static func spec(short: String) -> OptionSpec? {
        for o in options where o.short?.bytesEqual(short) == true { return o }
        return nil
    }

    /// Splits arguments into (long name, value) pairs, in order.
    static func tokenize(_ arguments: [String]) throws(ConfigurationError) -> [(String, String)] {
        var out: [(String, String)] = []
        var i = 0
        while i < arguments.count {
            let (option, inline) = try parseOption(arguments[i], number: i + 1)
            i += 1
            let long = option.long
            if !option.takesValue {
                if inline != nil { throw ConfigurationError("option --\(long) takes no value") }
                out.append((long, ""))
            } else if let inline {
                out.append((long, inline))
            } else {
                guard i < arguments.count else { throw ConfigurationError("option --\(long) needs a value") }
                out.append((long, arguments[i]))
                i += 1
            }
        }
        return out
    }

    /// The option an argument names (`--long`, `--long=VALUE`, `-x`, `-xVALUE`) and the value
    /// written into the argument, if any; `number` counts arguments from 1, for the error
    /// about an argument that is no option.
    static func parseOption(_ argument: String, number: Int) throws(ConfigurationError) -> (OptionSpec, inline: String?) {
        if argument.hasBytePrefix("--") {
            var name = argument.droppingBytes(2)
            var inline: String? = nil
            if let parts = name.splitOnce(at: 0x3D) {
                name = parts.before
                inline = parts.after
            }
            guard let option = spec(long: name) else { throw ConfigurationError("unknown option --\(name) (see --help)") }
            return (option, inline)
        }
        let bytes = Array(argument.utf8)
        guard bytes.count >= 2 && bytes[0] == 0x2D else {
            // Not echoed: a stray argument is often a token whose option was forgotten.
            throw ConfigurationError("unexpected argument number \(number) (\(bytes.count) characters): options start with - or --; did an option before it lose its name? (see --help)")
        }
        // The letter is the character after '-': its lead byte and continuation bytes.
        var end = 2
        while end < bytes.count && bytes[end] & 0xC0 == 0x80 { end += 1 }
        let letter = utf8Text(bytes[1..<end])
        guard let option = spec(short: letter) else { throw ConfigurationError("unknown option -\(letter) (see --help)") }
        return (option, end < bytes.count ? utf8Text(bytes[end...]) : nil)
    }

    /// Parses `long-option = value` lines (blank lines and `#` comments ignored).
    static func parseConfigFile(_ text: String, path: String) throws(ConfigurationError) -> [(String, String)] {
        var out: [(String, String)] = []
        var lineNumber = 0
        for rawLine in lines(of: text) {
            lineNumber += 1
            let line = trim(rawLine)
            if line.isEmpty || line.hasBytePrefix("#") { continue }
            guard let parts = line.splitOnce(at: 0x3D) else {
                throw ConfigurationError("\(path) line \(lineNumber): expected 'option = value'")
            }
            let name = trim(parts.before)
            let value = trim(parts.after)
            guard let spec = spec(long: name), !spec.long.bytesEqual("config") else {
                throw ConfigurationError("\(path) line \(lineNumber): unknown option '\(name)'")
            }
            if spec.takesValue {
                out.append((spec.long, value))
                continue
            }
            switch Bytewise(lowercased(value)) {
            case "", "true", "1", "yes", "on": out.append((spec.long, ""))
            case "false", "0", "no", "off": continue
            default:
                throw ConfigurationError("\(path) line \(lineNumber): '\(name)' takes true or false, not '\(value)'")
            }
        }
        return out
    }

    /// Parses a command line. `environment` and `readFile` give access to the system (tests pass
    /// their own).
    ///
    /// `--help` and `--version` win wherever they are. Otherwise the `--config` files' values
    /// come first and the command line's after them, the last value of an option wins, and each
    /// option's handler (`options`) applies it; then the `resolve` steps settle what depends on
    /// several options and on the environment.
    public static func parse(
        _ arguments: [String],
        environment: (String) -> String? = SystemAccess.environment,
        readFile: (String) throws(ConfigurationError) -> String = defaultReadFile,
        fileStatus: (String) -> FileStatus? = SystemAccess.status,
        userId: UInt32 = SystemAccess.userId
    ) throws(ConfigurationError) -> Command {
        let commandLine = try tokenize(arguments)
        for (name, _) in commandLine {
            if name.bytesEqual("help") { return .help }
            if name.bytesEqual("version") { return .version }
        }
        var settings: [(String, String)] = []
        var configFile: String? = nil
        for (name, value) in commandLine where name.bytesEqual("config") {
            settings += try parseConfigFile(try readFile(value), path: value)
            configFile = value
        }
        settings += commandLine.filter { !$0.0.bytesEqual("config") }

        var o = OptionValues()
        try applyLastValues(settings, to: &o)
        try resolveMode(&o)
        try resolveEndpoint(&o, environment: environment)
        if o.agent.endpoint != nil {
            try resolveAgent(&o, environment: environment, fileStatus: fileStatus, userId: userId)
        } else {
            // A token from a --config file is a secret of that file, as one of a token file.
            let tokenFile = commandLine.contains { $0.0.bytesEqual("access-token") } ? nil : configFile
            try resolveToken(&o, configFile: tokenFile, environment: environment, readFile: readFile,
                             fileStatus: fileStatus, userId: userId)
            try resolveClientToken(&o, environment: environment)
        }
        try checkPongTimeout(o.configuration)
        try resolveTestEnvironment(&o.configuration, environment: environment)
        try parseWebProxy(environment: environment, into: &o.configuration)
        try resolveMappings(&o, readFile: readFile)
        return .run(o.configuration)
    }

    public static func defaultReadFile(_ path: String) throws(ConfigurationError) -> String {
        do {
            return String(decoding: try SystemAccess.readFile(path), as: UTF8.self)
        } catch {
            throw ConfigurationError("cannot read \(error)")
        }
    }

    // MARK: Resolving what depends on several options

    /// Runs each given option's handler once, with its last value, in the order of `options`.
    static func applyLastValues(_ settings: [(String, String)], to o: inout OptionValues) throws(ConfigurationError) {
        var last = [String?](repeating: nil, count: options.count)
        for (name, value) in settings {
            if let i = index(long: name) { last[i] = value }
        }
        for (i, value) in last.enumerated() {
            if let value, let apply = options[i].apply { try apply(&o, value) }
        }
    }

    /// The mode, from `-m` or from which of `-s`/`-d` is given; agent mode (`--mqtt-endpoint`)
    /// serves the device side, and its companion options mean nothing without it.
    static func resolveMode(_ o: inout OptionValues) throws(ConfigurationError) {
        var mode = o.mode
        if o.agent.endpoint != nil {
            if mode == .source || o.sourcePorts != nil {
                throw ConfigurationError("--mqtt-endpoint (agent mode) serves the device side: leave out -s/--source-listen-port and --mode source")
            }
            mode = .destination
        } else if let name = o.agent.firstCompanion {
            throw ConfigurationError("--\(name) is for agent mode: give --mqtt-endpoint HOST[:PORT] too (see --help)")
        }
        if o.sourcePorts != nil && o.destinationApp != nil {
            throw ConfigurationError("give either -s/--source-listen-port (source mode) or -d/--destination-app (destination mode), not both")
        }
        if o.sourcePorts != nil {
            if mode == .destination { throw ConfigurationError("-s/--source-listen-port contradicts --mode destination") }
            mode = .source
        }
        if o.destinationApp != nil {
            if mode == .source { throw ConfigurationError("-d/--destination-app contradicts --mode source") }
            mode = .destination
        }
        guard let mode else {
            throw ConfigurationError("say which end this is: -d/--destination-app for the device, -s/--source-listen-port for the source, or -m/--mode")
        }
        o.configuration.mode = mode
    }

    /// Exactly one of `-e` and `-r`; the environment fills in when neither is given. In agent
    /// mode there may be none: each notification's region then names the endpoint.
    static func resolveEndpoint(_ o: inout OptionValues, environment: (String) -> String?) throws(ConfigurationError) {
        if o.endpoint != nil && o.region != nil {
            throw ConfigurationError("give either -e/--proxy-endpoint or -r/--region, not both")
        }
        if let e = o.endpoint ?? (o.region == nil ? environment("AWSIOT_TUNNEL_ENDPOINT") : nil) {
            (o.configuration.endpointHost, o.configuration.endpointPort) = try parseEndpoint(e)
        } else if let r = o.region ?? environment("AWSIOT_TUNNEL_REGION") {
            o.configuration.endpointHost = try endpointHost(forRegion: r)
        } else if o.agent.endpoint == nil {
            throw ConfigurationError("no tunnel endpoint: give -r/--region (e.g. -r us-east-1) or -e/--proxy-endpoint HOST[:PORT]")
        }
    }

    /// The access token: `-t` (on the command line, or from the `--config` file `configFile`),
    /// then `--access-token-file`, then the environment.
    static func resolveToken(_ o: inout OptionValues, configFile: String?, environment: (String) -> String?,
                             readFile: (String) throws(ConfigurationError) -> String,
                             fileStatus: (String) -> FileStatus?, userId: UInt32) throws(ConfigurationError) {
        if let t = o.accessToken {
            o.configuration.accessToken = t
            if let configFile {
                o.configuration.accessTokenSource = configFile
                try checkPrivateFile(configFile, option: "--config", holding: "access-token", fileStatus: fileStatus, userId: userId,
                                     unreadable: "cannot examine --config \(configFile), which holds access-token")
            } else {
                o.configuration.accessTokenSource = "the command line"
                o.configuration.warnings.append("the access token was given on the command line, where other users can see it in the process list: prefer AWSIOT_TUNNEL_ACCESS_TOKEN or --access-token-file")
            }
        } else if let file = o.accessTokenFile {
            try checkPrivateFile(file, option: "--access-token-file", holding: "the access token", fileStatus: fileStatus, userId: userId,
                                 unreadable: "cannot read --access-token-file \(file): no such file or no permission")
            o.configuration.accessToken = trim(try readFile(file))
            o.configuration.accessTokenSource = file
            o.configuration.accessTokenFile = file
        } else if let t = environment("AWSIOT_TUNNEL_ACCESS_TOKEN") {
            o.configuration.accessToken = t
            o.configuration.accessTokenSource = "AWSIOT_TUNNEL_ACCESS_TOKEN"
        }
        if o.configuration.accessToken.isEmpty {
            throw ConfigurationError("no access token: set AWSIOT_TUNNEL_ACCESS_TOKEN, or use --access-token-file FILE or -t TOKEN")
        }
        if let problem = accessTokenProblem(o.configuration.accessToken) { throw ConfigurationError(problem) }
    }

    /// `-i`, else the environment's client token; none: the runtime makes one.
    static func resolveClientToken(_ o: inout OptionValues, environment: (String) -> String?) throws(ConfigurationError) {
        guard let token = o.clientToken ?? environment("AWSIOT_TUNNEL_CLIENT_TOKEN") else { return }
        guard isValidClientToken(token) else {
            throw ConfigurationError("the client token must be 32 to 128 characters of letters, digits and '-' (a UUID works)")
        }
        o.configuration.clientToken = token
    }

    /// Agent mode takes the access and client tokens from each notification, so none may be given.
    static func resolveAgent(_ o: inout OptionValues, environment: (String) -> String?,
                             fileStatus: (String) -> FileStatus?, userId: UInt32) throws(ConfigurationError) {
        if o.accessToken != nil || o.accessTokenFile != nil {
            throw ConfigurationError("agent mode (--mqtt-endpoint) takes each access token from the MQTT notification: leave out -t/--access-token and --access-token-file")
        }
        if o.clientToken != nil {
            throw ConfigurationError("agent mode (--mqtt-endpoint) makes a client token for each tunnel: leave out -i/--client-token")
        }
        if environment("AWSIOT_TUNNEL_ACCESS_TOKEN") != nil {
            o.configuration.warnings.append("AWSIOT_TUNNEL_ACCESS_TOKEN is ignored in agent mode: the access tokens come from the MQTT notifications")
        }
        o.configuration.agent = try agentSettings(o.agent, fileStatus: fileStatus, userId: userId)
    }

    /// A `--pong-timeout-ms` other than 0 must outlast the ping interval it waits on.
    static func checkPongTimeout(_ c: Configuration) throws(ConfigurationError) {
        guard let value = c.pongTimeoutMilliseconds, value != 0, value <= c.pingIntervalMilliseconds else { return }
        throw ConfigurationError("--pong-timeout-ms (\(value)) must be longer than --ping-interval-ms (\(c.pingIntervalMilliseconds)), or 0 to turn the check off")
    }

    /// The environment variables meant for tests: LOCALPROXY_SYSLOG_SOCKET (for `--syslog`), and
    /// the built-in resolver's LOCALPROXY_RESOLV_CONF, LOCALPROXY_HOSTS and LOCALPROXY_DNS_PORT.
    static func resolveTestEnvironment(_ c: inout Configuration, environment: (String) -> String?) throws(ConfigurationError) {
        if c.systemLogPath != nil, let socket = environment("LOCALPROXY_SYSLOG_SOCKET") { c.systemLogPath = socket }
        c.resolvConfPath = environment("LOCALPROXY_RESOLV_CONF")
        c.hostsPath = environment("LOCALPROXY_HOSTS")
        if let p = environment("LOCALPROXY_DNS_PORT") {
            guard let port = parsePort(trim(p)) else {
                throw ConfigurationError("LOCALPROXY_DNS_PORT must be a port from 1 to 65535, got '\(p)'")
            }
            c.nameserverPort = port
        }
        let overridden = c.resolvConfPath != nil || c.hostsPath != nil || c.nameserverPort != nil
        if overridden && (c.resolverMode ?? Resolver.defaultMode) == .system {
            c.warnings.append("LOCALPROXY_RESOLV_CONF, LOCALPROXY_HOSTS and LOCALPROXY_DNS_PORT apply to the built-in resolver only (--dns builtin)")
        }
    }

    /// The mode's mappings: `-d` (else the `--config-dir` files) or `-s`, parsed now that the
    /// mode and the `-b` host are known.
    static func resolveMappings(_ o: inout OptionValues, readFile: (String) throws(ConfigurationError) -> String) throws(ConfigurationError) {
        let defaultHost = o.configuration.bindAddress ?? "127.0.0.1"
        switch o.configuration.mode {
        case .destination:
            if let d = o.destinationApp {
                o.configuration.destinationMappings = try parseDestinationMappings(d, defaultHost: defaultHost)
            } else if let dir = o.configuration.configDirectory {
                o.configuration.destinationMappings = try mappingsFromDirectory(dir, defaultHost: defaultHost, readFile: readFile)
            }
            if o.configuration.destinationMappings.isEmpty {
                throw ConfigurationError("destination mode needs -d/--destination-app, e.g. -d 22 or -d SSH=22,HTTP=localhost:80")
            }
        case .source:
            guard let s = o.sourcePorts else {
                throw ConfigurationError("source mode needs -s/--source-listen-port, e.g. -s 5555 or -s SSH=5555,HTTP=8080")
            }
            o.configuration.sourceMappings = try parseSourceMappings(s)
            if o.configuration.destinationClientType == .v1 && o.configuration.sourceMappings.count > 1 {
                throw ConfigurationError("-y V1 destinations serve a single service: give one -s entry")
            }
        }
    }

    // MARK: Pieces

    /// A file holding a secret (`what`) must be private to this user; `unreadable` is the
    /// error when its status cannot be read.
    static func checkPrivateFile(_ path: String, option: String, holding what: String, fileStatus: (String) -> FileStatus?,
                                 userId: UInt32, unreadable: @autoclosure () -> String) throws(ConfigurationError) {
        guard let status = fileStatus(path) else { throw ConfigurationError(unreadable()) }
        if let problem = status.problem(path: path, holding: what, user: userId) {
            throw ConfigurationError(option + " " + problem)
        }
    }

    /// `--mqtt-endpoint HOST[:PORT]`, `--thing-name`, `--cert`, `--key`, `--mqtt-client-id`,
    /// `--mqtt-keep-alive`. The key is a secret like a token file: it must be private.
    static func agentSettings(_ a: AgentOptions, fileStatus: (String) -> FileStatus?,
                              userId: UInt32) throws(ConfigurationError) -> AgentSettings {
        let endpoint = lowercased(trim(a.endpoint ?? ""))
        guard !endpoint.isEmpty else {
            throw ConfigurationError("--mqtt-endpoint needs the AWS IoT data endpoint, e.g. --mqtt-endpoint abc123-ats.iot.us-east-1.amazonaws.com")
        }
        let (host, port) = try splitHostPort(endpoint, what: "--mqtt-endpoint")
        guard let thing = a.thingName else {
            throw ConfigurationError("agent mode needs --thing-name: the AWS IoT thing whose tunnel notifications this device takes")
        }
        try checkThingName(thing)
        guard let certificate = a.certificate, !certificate.isEmpty, let key = a.key, !key.isEmpty else {
            throw ConfigurationError("agent mode needs the device certificate and its key: --cert FILE --key FILE (PEM, as AWS IoT issued them)")
        }
        try checkPrivateFile(key, option: "--key", holding: "the device's private key", fileStatus: fileStatus, userId: userId,
                             unreadable: "cannot read --key \(key): no such file or no permission")
        if fileStatus(certificate) == nil {
            throw ConfigurationError("cannot read --cert \(certificate): no such file or no permission")
        }
        let clientId = a.clientId ?? thing
        try checkClientId(clientId)
        let keepAlive = try a.keepAlive.map { v throws(ConfigurationError) in try number(v, "mqtt-keep-alive", 30...1200) } ?? 60
        return AgentSettings(brokerHost: host, brokerPort: port ?? 8883, thingName: thing, certificateFile: certificate,
                             keyFile: key, clientId: clientId, keepAliveSeconds: UInt16(keepAlive))
    }

    /// MQTT client ids as AWS IoT takes them: 1 to 128 bytes, no control characters.
    static func checkClientId(_ id: String) throws(ConfigurationError) {
        let bytes = Array(id.utf8)
        guard !bytes.isEmpty, bytes.count <= 128 else {
            throw ConfigurationError("--mqtt-client-id must be 1 to 128 bytes (AWS IoT's limit)")
        }
        for b in bytes where b < 0x20 || b == 0x7F {
            throw ConfigurationError("--mqtt-client-id must not contain control characters")
        }
    }

    /// `HOST[:PORT]`, `[IPv6]:PORT`; lower-cased, port 443 by default.
    static func parseEndpoint(_ text: String) throws(ConfigurationError) -> (String, UInt16) {
        let value = lowercased(trim(text))
        let bytes = Array(value.utf8)
        guard !bytes.isEmpty, bytes.count <= 253 + 8 else {
            throw ConfigurationError("--proxy-endpoint '\(text)' is not HOST or HOST:PORT")
        }
        for b in bytes {
            let ok = (b >= 0x61 && b <= 0x7A) || (b >= 0x30 && b <= 0x39) || b == 0x2E || b == 0x2D || b == 0x3A || b == 0x5B || b == 0x5D
            if !ok { throw ConfigurationError("--proxy-endpoint '\(text)' contains characters a host name cannot have") }
        }
        let (host, port) = try splitHostPort(value, what: "--proxy-endpoint")
        return (host, port ?? 443)
    }

    static func endpointHost(forRegion region: String) throws(ConfigurationError) -> String {
        let r = trim(region)
        guard isValidRegionName(r) else { throw ConfigurationError("--region '\(region)' is not a region name like us-east-1") }
        let suffix = r.hasBytePrefix("cn-") ? "amazonaws.com.cn" : "amazonaws.com"
        return "data.tunneling.iot.\(r).\(suffix)"
    }

    /// Splits `host:port`, `[v6]:port`, `host` or `[v6]`.
    static func splitHostPort(_ value: String, what: String) throws(ConfigurationError) -> (String, UInt16?) {
        if value.hasBytePrefix("[") {
            guard let parts = value.droppingBytes(1).splitOnce(at: 0x5D) else { throw ConfigurationError("\(what) '\(value)': missing ']' after an IPv6 address") }
            let host = parts.before
            guard !host.isEmpty else { throw ConfigurationError("\(what) '\(value)': no address between the brackets") }
            let rest = parts.after
            if rest.isEmpty { return (host, nil) }
            guard rest.hasBytePrefix(":"), let port = parsePort(rest.droppingBytes(1)) else {
                throw ConfigurationError("\(what) '\(value)': expected [IPv6]:PORT with a port from 1 to 65535")
            }
            return (host, port)
        }
        let parts = value.splitBytes(at: 0x3A, omittingEmpty: false)
        if parts.count == 1 { return (value, nil) }
        if parts.count == 2 {
            guard let port = parsePort(parts[1]), !parts[0].isEmpty else {
                throw ConfigurationError("\(what) '\(value)': expected HOST:PORT with a port from 1 to 65535")
            }
            return (parts[0], port)
        }
        throw ConfigurationError("\(what) '\(value)': an IPv6 address needs brackets, e.g. [::1]:22")
    }

    /// The `-d` grammar (docs/PROTOCOL.md §8.1): `ENDPOINT` alone, or `SVC=ENDPOINT,...`.
    public static func parseDestinationMappings(_ text: String, defaultHost: String) throws(ConfigurationError) -> [ServiceMapping] {
        let items = text.splitBytes(at: 0x2C).map { trim($0) }.filter { !$0.isEmpty }
        guard !items.isEmpty else { throw ConfigurationError("-d/--destination-app is empty") }
        var out: [ServiceMapping] = []
        for item in items {
            if let parts = item.splitOnce(at: 0x3D) {
                let service = trim(parts.before)
                try checkServiceId(service)
                if out.contains(where: { $0.serviceId.bytesEqual(service) }) {
                    throw ConfigurationError("-d maps service \(service) twice")
                }
                out.append(ServiceMapping(serviceId: service, endpoint: try parseLocalEndpoint(trim(parts.after), defaultHost: defaultHost)))
            } else {
                guard items.count == 1 else {
                    throw ConfigurationError("-d entry '\(item)' needs a service name (SVC=\(item)) when several are given")
                }
                out.append(ServiceMapping(serviceId: "", endpoint: try parseLocalEndpoint(item, defaultHost: defaultHost)))
            }
        }
        return out
    }

    /// `PORT`, `HOST:PORT`, `[IPv6]:PORT`, or a Unix socket path (contains '/').
    static func parseLocalEndpoint(_ text: String, defaultHost: String) throws(ConfigurationError) -> Endpoint {
        if text.containsByte(0x2F) { return .unix(path: text) }
        if let port = parsePort(text) { return .tcp(host: defaultHost, port: port) }
        let (host, port) = try splitHostPort(text, what: "-d endpoint")
        guard let port else {
            throw ConfigurationError("-d endpoint '\(text)' has no port: use PORT, HOST:PORT, [IPv6]:PORT or a socket path")
        }
        return .tcp(host: host, port: port)
    }

    static func parseSourceMappings(_ text: String) throws(ConfigurationError) -> [SourceSession.Mapping] {
        let items = text.splitBytes(at: 0x2C).map { trim($0) }.filter { !$0.isEmpty }
        var out: [SourceSession.Mapping] = []
        for item in items {
            if let parts = item.splitOnce(at: 0x3D) {
                let service = trim(parts.before)
                try checkServiceId(service)
                let portText = trim(parts.after)
                guard let port = portText.isEmpty ? 0 : parsePort(portText) else {
                    throw ConfigurationError("-s entry '\(item)': the port must be 1 to 65535")
                }
                if out.contains(where: { $0.serviceId.bytesEqual(service) }) { throw ConfigurationError("-s maps service \(service) twice") }
                out.append(SourceSession.Mapping(serviceId: service, port: port))
            } else {
                guard items.count == 1, let port = parsePort(item) else {
                    throw ConfigurationError("-s entry '\(item)': use PORT alone, or SVC=PORT for each service")
                }
                out.append(SourceSession.Mapping(serviceId: "", port: port))
            }
        }
        return out
    }

    /// `--config-dir`: `SERVICE=ENDPOINT` lines in every file below the directory; the first
    /// file that names a service wins.
    static func mappingsFromDirectory(_ directory: String, defaultHost: String,
                                      readFile: (String) throws(ConfigurationError) -> String) throws(ConfigurationError) -> [ServiceMapping] {
        var out: [ServiceMapping] = []
        for file in SystemAccess.files(under: directory) {
            let text = try readFile(file)
            for line in lines(of: text) {
                let l = trim(line)
                if l.isEmpty || l.hasBytePrefix("#") || l.hasBytePrefix("[") { continue }
                guard let parts = l.splitOnce(at: 0x3D) else { continue }
                let service = trim(parts.before)
                guard (try? checkServiceId(service)) != nil, !out.contains(where: { $0.serviceId.bytesEqual(service) }) else { continue }
                guard let endpoint = try? parseLocalEndpoint(trim(parts.after), defaultHost: defaultHost) else { continue }
                out.append(ServiceMapping(serviceId: service, endpoint: endpoint))
            }
        }
        return out
    }

    /// Service ids as the AWS API allows them: `[A-Za-z0-9:_-]`, 1 to 128 characters.
    static func checkServiceId(_ id: String) throws(ConfigurationError) {
        try checkIdentifier(id, what: "service name")
    }

    /// Thing names as AWS IoT allows them, the same characters as service ids (so never an MQTT
    /// wildcard or a topic separator).
    static func checkThingName(_ name: String) throws(ConfigurationError) {
        try checkIdentifier(name, what: "--thing-name")
    }

    static func checkIdentifier(_ id: String, what: String) throws(ConfigurationError) {
        let bytes = Array(id.utf8)
        guard !bytes.isEmpty, bytes.count <= 128 else {
            throw ConfigurationError("\(what) '\(id)' must be 1 to 128 characters")
        }
        for b in bytes where !isServiceIdByte(b) {
            throw ConfigurationError("\(what) '\(id)' may only contain letters, digits, '_', '-' and ':'")
        }
    }

    /// The web proxy from `https_proxy` (or `HTTPS_PROXY`), unless `no_proxy` (or `NO_PROXY`)
    /// covers the endpoint host; a bypassed proxy's URL is not checked, since it is not used.
    static func parseWebProxy(environment: (String) -> String?, into c: inout Configuration) throws(ConfigurationError) {
        let name = environment("https_proxy") != nil ? "https_proxy" : "HTTPS_PROXY"
        guard let value = environment(name), !trim(value).isEmpty else { return }
        let noProxyName = environment("no_proxy") != nil ? "no_proxy" : "NO_PROXY"
        if let list = environment(noProxyName), WebProxy.bypasses(list, host: c.endpointHost) {
            c.webProxyNote = "\(noProxyName) covers \(c.endpointHost): connecting to the service directly, not through the web proxy of \(name)"
            return
        }
        let proxy: WebProxy
        do {
            proxy = try WebProxy(url: value)
        } catch {
            throw ConfigurationError("\(name): \(error); expected http://[USER:PASSWORD@]HOST[:PORT] (port 3128 by default)")
        }
        c.webProxy = proxy
        c.webProxyNote = "connecting to the service through the web proxy \(proxy)\(proxy.credentials == nil ? "" : " with credentials") (from \(name))"
    }

    /// A whole number in `range`, or an error naming the option and the range.
    static func number(_ text: String, _ name: String, _ range: ClosedRange<Int>) throws(ConfigurationError) -> Int {
        guard let n = parseInt(text), range.contains(n) else {
            throw ConfigurationError("--\(name) must be a number from \(range.lowerBound) to \(range.upperBound), got '\(text)'")
        }
        return n
    }
}

// MARK: Text helpers (no Foundation)

/// Lines of `text`, split on LF bytes (a `Character` split would treat CR LF as one character
/// and never split Windows-edited files); the CR stays, for `trim` to remove.
func lines(of text: String) -> [String] {
    Array(text.utf8).split(separator: 0x0A, omittingEmptySubsequences: false).map(utf8Text)
}

func trim(_ s: String) -> String {
    var bytes = Array(s.utf8)
    while let f = bytes.first, f == 0x20 || f == 0x09 || f == 0x0D || f == 0x0A { bytes.removeFirst() }
    while let l = bytes.last, l == 0x20 || l == 0x09 || l == 0x0D || l == 0x0A { bytes.removeLast() }
    return utf8Text(bytes[...])
}

/// Text from UTF-8 bytes, invalid sequences replaced. One shared copy: `String(decoding:as:)`
/// is otherwise inlined wherever it is called (about 150 bytes each on armv7).
@inline(never)
func utf8Text(_ bytes: ArraySlice<UInt8>) -> String { String(decoding: bytes, as: UTF8.self) }

func lowercased(_ s: String) -> String {
    var bytes = Array(s.utf8)
    for i in bytes.indices where bytes[i] >= 0x41 && bytes[i] <= 0x5A { bytes[i] += 0x20 }
    return utf8Text(bytes[...])
}

func parseInt(_ s: String) -> Int? {
    let bytes = Array(s.utf8)
    guard !bytes.isEmpty, bytes.count <= 12 else { return nil }
    var n = 0
    var negative = false
    for (i, b) in bytes.enumerated() {
        if i == 0 && b == 0x2D && bytes.count > 1 {
            negative = true
            continue
        }
        guard b >= 0x30 && b <= 0x39 else { return nil }
        // Too large for Int (32 bits on armv7) is "not a number", never a trap.
        let (times10, o1) = n.multipliedReportingOverflow(by: 10)
        let (sum, o2) = times10.addingReportingOverflow(Int(b - 0x30))
        if o1 || o2 { return nil }
        n = sum
    }
    return negative ? -n : n
}

func parsePort(_ s: String) -> UInt16? {
    guard let n = parseInt(s), n >= 1 && n <= 65535 else { return nil }
    return UInt16(n)
}

/// Why a (trimmed, non-empty) access token cannot be sent, or nil. The message never quotes it.
func accessTokenProblem(_ token: String) -> String? {
    let bytes = Array(token.utf8)
    if bytes.count > 4096 {
        return "the access token is \(bytes.count) bytes; tokens are at most 4096"
    }
    for b in bytes where b < 0x21 || b > 0x7E {
        return "the access token contains a space or control character: check how it was copied"
    }
    return nil
}

func octal(_ n: UInt32) -> String {
    var digits: [UInt8] = []
    var v = n
    repeat {
        digits.append(UInt8(0x30 + v % 8))
        v /= 8
    } while v > 0
    while digits.count < 4 { digits.append(0x30) }
    return String(decoding: digits.reversed(), as: UTF8.self)
}
