import TunnelCore
import TunnelIO

/// One option of the command line (and of `--config` files, which use the long names): its
/// names, what `--help` says about it, and how its value goes into the configuration. The
/// table of them, `ConfigurationParser.options`, is both what the parser accepts and what
/// `--help` prints, so the two cannot disagree.
struct OptionSpec: Sendable {
    /// The option as `--help` shows it: the short name if there is one, the long name, and the
    /// value's name for an option that takes one (`-t, --access-token TOKEN`, `--syslog`).
    /// Tests/LocalProxyTests/ConfigurationTests.swift checks that every row has this form.
    let names: String
    let group: OptionGroup
    /// The description in `--help`: lines separated by LF, printed in a column; empty for the
    /// options that are not advertised.
    let help: String
    /// Applies the option's value (of its last occurrence) to the options being gathered;
    /// nil for `--help`, `--version` and `--config`, which `parse` itself handles first.
    let apply: Handler?

    typealias Handler = @Sendable (inout OptionValues, String) throws(ConfigurationError) -> Void

    init(_ names: String, group: OptionGroup, help: String, apply: Handler?) {
        self.names = names
        self.group = group
        self.help = help
        self.apply = apply
    }

    var short: String? { parts.short }
    var long: String { parts.long }
    var takesValue: Bool { parts.takesValue }

    /// `names` cut into the letter after `-` (nil when `names` starts with `--`), the long name,
    /// and whether a value's name follows it. One string per row, read back here, keeps the
    /// table (built when first used) small in the device binary; one copy of this code too.
    @inline(never)
    private var parts: (short: String?, long: String, takesValue: Bool) {
        let bytes = Array(names.utf8)
        let hasShort = bytes[1] != 0x2D
        let start = hasShort ? 6 : 2
        var end = start
        while end < bytes.count && bytes[end] != 0x20 { end += 1 }
        return (hasShort ? utf8Text(bytes[1..<2]) : nil, utf8Text(bytes[start..<end]), end < bytes.count)
    }
}

/// The sections of `--help`.
enum OptionGroup {
    case common, destination, source, timing, agent
    /// Options of the reference proxy that are parsed only to be refused with a clear message.
    case unadvertised

    /// The sections in the order printed.
    static let printed: [OptionGroup] = [.common, .destination, .source, .timing, .agent]

    var heading: String {
        switch self {
        case .common: return "Options:"
        case .destination: return "Destination mode (device side):"
        case .source: return "Source mode:"
        case .timing: return "Timing and limits:"
        case .agent: return "Agent mode (device side, tokens delivered by AWS IoT over MQTT instead of -t):"
        case .unadvertised: return ""
        }
    }

    /// Text printed after the section's options.
    var note: String {
        switch self {
        case .agent: return """
              Each destination notification starts a tunnel with its token, its services mapped by -d;
              a new notification replaces it; -e/-r, when given, override the notification's region.
              -c lists the CAs of both the broker and the tunneling service.

            """
        default: return ""
        }
    }
}

/// The options' values on their way to a `Configuration`. Handlers set what one option decides
/// alone straight in `configuration`; the values that mean something only together with others
/// (the mode, the endpoint, the access token, agent mode) wait here for the `resolve` steps.
struct OptionValues {
    var configuration = Configuration()
    /// `-m`.
    var mode: TunnelMode? = nil
    /// `-s` and `-d` as given: they are parsed once the mode and `-b` are known.
    var sourcePorts: String? = nil
    var destinationApp: String? = nil
    /// `-e` and `-r`: at most one of them.
    var endpoint: String? = nil
    var region: String? = nil
    /// `-t`, `--access-token-file`, `-i`.
    var accessToken: String? = nil
    var accessTokenFile: String? = nil
    var clientToken: String? = nil
    var agent = AgentOptions()
}

/// The agent options as given; `--mqtt-endpoint` turns agent mode on, and the others mean
/// nothing without it.
struct AgentOptions {
    var endpoint: String? = nil
    var thingName: String? = nil
    var certificate: String? = nil
    var key: String? = nil
    var clientId: String? = nil
    var keepAlive: String? = nil

    /// The long name of the first companion option given, if any.
    var firstCompanion: String? {
        if thingName != nil { return "thing-name" }
        if certificate != nil { return "cert" }
        if key != nil { return "key" }
        if clientId != nil { return "mqtt-client-id" }
        if keepAlive != nil { return "mqtt-keep-alive" }
        return nil
    }
}

extension ConfigurationParser {
    /// Every option, in the order `--help` lists them within their section. The handlers run
    /// in this order too, each once with its option's last value, so that the same mistakes
    /// give the same first error whatever the order of the arguments.
    static let options: [OptionSpec] = [
        OptionSpec("-h, --help", group: .common, help: "show this help and exit", apply: nil),
        OptionSpec("-V, --version", group: .common, help: "show the version and exit", apply: nil),
        OptionSpec("--settings-json FILE", group: .unadvertised, help: "", apply: refuseSettingsJSON),
        OptionSpec("--export-default-settings FILE", group: .unadvertised, help: "", apply: refuseSettingsJSON),
        OptionSpec("-t, --access-token TOKEN", group: .common,
                   help: "access token (visible in the process list: prefer the\nenvironment or --access-token-file)") { o, v in
            o.accessToken = v
        },
        OptionSpec("--access-token-file FILE", group: .common,
                   help: "read the access token from FILE (must not be readable by\ngroup or others)") { o, v in
            o.accessTokenFile = v
        },
        OptionSpec("-i, --client-token TOKEN", group: .common,
                   help: "client token (32-128 of A-Z a-z 0-9 -); default: a random\nUUID, kept for every reconnect of this process") { o, v in
            o.clientToken = v
        },
        OptionSpec("-r, --region REGION", group: .common,
                   help: "tunnel region, e.g. us-east-1 (endpoint\ndata.tunneling.iot.REGION.amazonaws.com)") { o, v in
            o.region = v
        },
        OptionSpec("-e, --proxy-endpoint HOST[:PORT]", group: .common,
                   help: "endpoint instead of -r (port 443 by default)") { o, v in
            o.endpoint = v
        },
        OptionSpec("-m, --mode MODE", group: .common,
                   help: "source|src or destination|dst (implied by -s or -d)") { o, v throws(ConfigurationError) in
            switch Bytewise(v) {
            case "src", "source": o.mode = .source
            case "dst", "destination": o.mode = .destination
            default: throw ConfigurationError("--mode must be source (src) or destination (dst), got '\(v)'")
            }
        },
        OptionSpec("-b, --local-bind-address ADDR", group: .common,
                   help: "source: listen address (127.0.0.1); destination: default\nhost for -d ports (127.0.0.1)") { o, v throws(ConfigurationError) in
            guard !v.isEmpty else {
                throw ConfigurationError("-b/--local-bind-address needs an address, e.g. -b 127.0.0.1 (leave it out for the default)")
            }
            o.configuration.bindAddress = v
        },
        OptionSpec("-c, --capath PATH[,PATH]", group: .common,
                   help: "trusted CA certificates: PEM files or directories\n(default: /etc/ssl/certs/ca-certificates.crt)") { o, v in
            for path in v.splitBytes(at: 0x2C) { o.configuration.trustPaths.append(trim(path)) }
        },
        OptionSpec("-k, --no-ssl-host-verify", group: .common,
                   help: "do not verify the service's certificate (testing only)") { o, _ in
            o.configuration.verifyCertificates = false
        },
        OptionSpec("-v, --verbose LEVEL", group: .common,
                   help: "0 silent, 1 fatal, 2 error, 3 warning, 4 info (default),\n5 debug, 6 trace") { o, v throws(ConfigurationError) in
            guard let n = parseInt(v), n >= 0 && n <= 6 else { throw ConfigurationError("--verbose must be 0 to 6, got '\(v)'") }
            o.configuration.verbosity = n
        },
        OptionSpec("--config FILE", group: .common, help: "read 'long-option = value' lines from FILE", apply: nil),
        OptionSpec("--syslog", group: .common, help: "log to the system log (/dev/log, facility daemon)\ninstead of standard error") { o, _ in
            // LOCALPROXY_SYSLOG_SOCKET may name another socket (resolveTestEnvironment).
            o.configuration.systemLogPath = "/dev/log"
        },
        OptionSpec("--log-format text|json", group: .common,
                   help: "log lines as text (default) or one JSON object each") { o, v throws(ConfigurationError) in
            switch Bytewise(v) {
            case "text": o.configuration.logFormat = .text
            case "json": o.configuration.logFormat = .json
            default: throw ConfigurationError("--log-format must be text or json, got '\(v)'")
            }
        },
        OptionSpec("--dns system|builtin", group: .common,
                   help: "how host names are resolved: system (the C library's\ngetaddrinfo) or builtin (own DNS client: /etc/hosts, then\nthe nameservers of /etc/resolv.conf). Default: system;\nbuiltin in fully static builds (no NSS there)") { o, v throws(ConfigurationError) in
            switch Bytewise(v) {
            case "system":
                guard Resolver.systemResolverAvailable else {
                    throw ConfigurationError("--dns system: this build has no system resolver (it was built with LP_BUILTIN_DNS, for a fully static binary); use --dns builtin")
                }
                o.configuration.resolverMode = .system
            case "builtin": o.configuration.resolverMode = .builtin
            default: throw ConfigurationError("--dns must be system or builtin, got '\(v)'")
            }
        },

        OptionSpec("-d, --destination-app MAP", group: .destination,
                   help: "destination mode: where tunnel services go. MAP is one\nENDPOINT, or SVC=ENDPOINT,... ; ENDPOINT is PORT, HOST:PORT,\n[IPv6]:PORT or a Unix socket path") { o, v in
            o.destinationApp = v
        },
        OptionSpec("--config-dir DIR", group: .destination,
                   help: "destination: SVC=ENDPOINT lines from files in DIR, used\nwhen -d is not given") { o, v in
            o.configuration.configDirectory = v
        },
        OptionSpec("--connect-retries N", group: .destination,
                   help: "local connect retries before resetting the stream (3)") { o, v throws(ConfigurationError) in
            o.configuration.connectRetries = try number(v, "connect-retries", 0...1000)
        },
        OptionSpec("--connect-retry-delay-ms N", group: .destination,
                   help: "delay between local connect attempts (1000)") { o, v throws(ConfigurationError) in
            o.configuration.connectRetryDelayMilliseconds = try number(v, "connect-retry-delay-ms", 1...600_000)
        },

        OptionSpec("-s, --source-listen-port MAP", group: .source,
                   help: "source mode: local ports per service. MAP is PORT, or\nSVC=PORT,... (SVC= alone: any free port, logged)") { o, v in
            o.sourcePorts = v
        },
        OptionSpec("-y, --destination-client-type V1|V2", group: .source,
                   help: "source mode: talk to old destinations") { o, v throws(ConfigurationError) in
            switch Bytewise(v) {
            case "V1", "v1": o.configuration.destinationClientType = .v1
            case "V2", "v2": o.configuration.destinationClientType = .v2
            case "V3", "v3": o.configuration.destinationClientType = .v3
            default: throw ConfigurationError("--destination-client-type must be V1, V2 or V3, got '\(v)'")
            }
        },
        OptionSpec("--half-close-linger-ms N", group: .source,
                   help: "source: how long a half-closed local connection waits\nfor the destination's answer (10000)") { o, v throws(ConfigurationError) in
            o.configuration.halfCloseLingerMilliseconds = try number(v, "half-close-linger-ms", 0...3_600_000)
        },

        OptionSpec("--ping-interval-ms N", group: .timing, help: "WebSocket ping interval (20000)") { o, v throws(ConfigurationError) in
            o.configuration.pingIntervalMilliseconds = try number(v, "ping-interval-ms", 100...3_600_000)
        },
        OptionSpec("--pong-timeout-ms N", group: .timing,
                   help: "reconnect when nothing (no pong, no data) came from the\nservice for N ms (default: 2 ping intervals + 5000; 0: off)") { o, v throws(ConfigurationError) in
            // Checked against the ping interval once both are known (checkPongTimeout).
            o.configuration.pongTimeoutMilliseconds = try number(v, "pong-timeout-ms", 0...86_400_000)
        },
        OptionSpec("--stall-timeout-ms N", group: .timing,
                   help: "reset a local connection that takes no data for N ms while\nthe tunnel waits for it, so the others go on (15000; 0: off)") { o, v throws(ConfigurationError) in
            o.configuration.stallTimeoutMilliseconds = try number(v, "stall-timeout-ms", 0...86_400_000)
        },
        OptionSpec("--reconnect-delay-max-ms N", group: .timing, help: "cap of the reconnect backoff (120000)") { o, v throws(ConfigurationError) in
            o.configuration.reconnectDelayMaximumMilliseconds = try number(v, "reconnect-delay-max-ms", 1...3_600_000)
        },
        OptionSpec("--max-payload N", group: .timing, help: "largest DATA payload to send (64512)") { o, v throws(ConfigurationError) in
            o.configuration.maximumPayload = try number(v, "max-payload", 1...TunnelMessage.maximumPayloadLength)
        },
        OptionSpec("--token-wait-ms N", group: .timing,
                   help: "with --access-token-file: after the service ends the\nsession (e.g. token rotated), wait this long for a new\ntoken in the file and reconnect with it (10000; 0: exit)") { o, v throws(ConfigurationError) in
            o.configuration.tokenWaitMilliseconds = try number(v, "token-wait-ms", 0...86_400_000)
        },

        OptionSpec("--mqtt-endpoint HOST[:PORT]", group: .agent,
                   help: "the account's AWS IoT data endpoint (port 8883; on 443\nALPN x-amzn-mqtt-ca is used); turns agent mode on") { o, v in
            o.agent.endpoint = v
        },
        OptionSpec("--thing-name NAME", group: .agent,
                   help: "the thing whose tunnel notifications this device takes\n($aws/things/NAME/tunnels/notify)") { o, v in
            o.agent.thingName = v
        },
        OptionSpec("--cert FILE", group: .agent, help: "the device certificate (PEM), for mutual TLS") { o, v in
            o.agent.certificate = v
        },
        OptionSpec("--key FILE", group: .agent, help: "its private key (PEM; the file must be private to this user)") { o, v in
            o.agent.key = v
        },
        OptionSpec("--mqtt-client-id ID", group: .agent, help: "MQTT client id (default: the thing name)") { o, v in
            o.agent.clientId = v
        },
        OptionSpec("--mqtt-keep-alive SECONDS", group: .agent, help: "MQTT keep-alive, 30 to 1200 (60)") { o, v in
            o.agent.keepAlive = v
        },
    ]

    /// `--settings-json` and `--export-default-settings` of the reference proxy.
    @Sendable static func refuseSettingsJSON(_: inout OptionValues, _: String) throws(ConfigurationError) {
        throw ConfigurationError("--settings-json and --export-default-settings are not supported: the settings they carry are options here (see --help)")
    }

    /// The options part of `--help`: a section per group, each option with its names from
    /// column 2 (6 without a short name) and its description from column 34, each section
    /// followed by a blank line.
    static func optionsHelp() -> String {
        let column = [UInt8](repeating: 0x20, count: 34)
        var text = ""
        for group in OptionGroup.printed {
            text += group.heading + "\n"
            for option in options where option.group == group {
                var line = Array(((option.short == nil ? "      " : "  ") + option.names).utf8)
                // The description starts at the column, or two spaces after longer names.
                repeat { line.append(0x20) } while line.count < 34 || line[line.count - 2] != 0x20
                for b in Array(option.help.utf8) {
                    line.append(b)
                    if b == 0x0A { line += column }
                }
                line.append(0x0A)
                text += utf8Text(line[...])
            }
            text += group.note + "\n"
        }
        return text
    }
}
