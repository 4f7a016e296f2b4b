/// The emulator's command line. Parsing is a pure function so that every option and every
/// refusal is testable.

public enum ReconnectPolicy: String, Equatable, Sendable, CaseIterable {
    /// Tell the other side nothing (peers "have no knowledge" of each other, docs/PROTOCOL.md §14.5).
    case none
    /// Send the other side STREAM_RESET for each stream that was active (the V1 guide's "peer
    /// replaced" behaviour).
    case streamReset = "stream-reset"
    /// Send the other side SESSION_RESET.
    case sessionReset = "session-reset"
}

public struct ServiceOptions: Equatable, Sendable {
    public var stateDirectory = ".tunnel-service"
    /// Only the loopback address by default: the emulator accepts any signature and hands out
    /// tokens to whoever asks, so it must not be reachable from elsewhere unless asked for.
    public var host = "127.0.0.1"
    public var dataPort: UInt16 = 0
    public var apiPort: UInt16 = 0
    public var certificateFile: String? = nil
    public var keyFile: String? = nil
    /// The CA to announce on the `ca` line when --cert/--key are given.
    public var caFile: String? = nil
    public var region = "us-east-1"
    public var framing = FramingMode.passthrough
    public var onReconnect = ReconnectPolicy.streamReset
    public var stateFile: String? = nil
    public var requiredAccessKeyId: String? = nil
    public var maximumOpenTunnels = 300
    /// Milliseconds per minute of tunnel lifetime (tests shrink it).
    public var minuteMilliseconds = 60_000
    public var maximumConnections = 128
    public var verbosity = 4
    /// `--mqtt-broker HOST:PORT`: where destination notifications are published (none: not sent).
    public var mqttBrokerHost: String? = nil
    public var mqttBrokerPort: UInt16 = 8883
    /// The broker's CA, and this emulator's client certificate and key when the broker wants one.
    public var mqttCAFile: String? = nil
    public var mqttCertificateFile: String? = nil
    public var mqttKeyFile: String? = nil

    public init() {}
}

public enum ServiceCommand: Equatable {
    case run(ServiceOptions)
    case help
}

public struct OptionError: Error, Equatable, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

public enum ServiceOptionParser {
    public static func parse(_ arguments: [String]) throws(OptionError) -> ServiceCommand {
        var options = ServiceOptions()
        var seed: UInt64 = 1
        var framingName = "passthrough"
        var i = 0
        func value(_ name: String) throws(OptionError) -> String {
            guard i + 1 < arguments.count else { throw OptionError("\(name) needs a value") }
            i += 1
            return arguments[i]
        }
        func number(_ name: String, _ range: ClosedRange<Int>) throws(OptionError) -> Int {
            let text = try value(name)
            guard let n = Int(text), range.contains(n) else {
                throw OptionError("\(name) must be a number from \(range.lowerBound) to \(range.upperBound), not '\(text)'")
            }
            return n
        }
        while i < arguments.count {
            var argument = arguments[i]
            // --name=value is accepted as well as --name value.
            if argument.hasPrefix("--"), let equals = argument.firstIndex(of: "=") {
                var split = arguments
                split.replaceSubrange(i...i, with: [String(argument[..<equals]), String(argument[argument.index(after: equals)...])])
                return try parse(split)
            }
            switch argument {
            case "-h", "--help": return .help
            case "--state-dir": options.stateDirectory = try value(argument)
            case "--host": options.host = try value(argument)
            case "--data-port": options.dataPort = UInt16(try number(argument, 0...65535))
            case "--api-port": options.apiPort = UInt16(try number(argument, 0...65535))
            case "--cert": options.certificateFile = try value(argument)
            case "--key": options.keyFile = try value(argument)
            case "--ca": options.caFile = try value(argument)
            case "--region":
                options.region = try value(argument)
                guard !options.region.isEmpty, options.region.count <= 64,
                      options.region.unicodeScalars.allSatisfy({ ("a"..."z").contains($0) || ("0"..."9").contains($0) || $0 == "-" }) else {
                    throw OptionError("--region must be lower-case letters, digits and '-', e.g. us-east-1")
                }
            case "--framing": framingName = try value(argument)
            case "--seed":
                let text = try value(argument)
                guard let n = UInt64(text) else { throw OptionError("--seed must be a non-negative integer, not '\(text)'") }
                seed = n
            case "--on-reconnect":
                let text = try value(argument)
                guard let policy = ReconnectPolicy(rawValue: text) else {
                    throw OptionError("--on-reconnect must be none, stream-reset or session-reset, not '\(text)'")
                }
                options.onReconnect = policy
            case "--state-file": options.stateFile = try value(argument)
            case "--require-access-key-id":
                options.requiredAccessKeyId = try value(argument)
                if options.requiredAccessKeyId!.isEmpty { throw OptionError("--require-access-key-id needs a non-empty key id") }
            case "--max-open-tunnels": options.maximumOpenTunnels = try number(argument, 1...100_000)
            case "--max-connections": options.maximumConnections = try number(argument, 2...4096)
            case "--minute-ms": options.minuteMilliseconds = try number(argument, 1...60_000)
            case "-v", "--verbose": options.verbosity = try number(argument, 0...6)
            case "--mqtt-broker":
                let text = try value(argument)
                guard let colon = text.lastIndex(of: ":"), let port = UInt16(text[text.index(after: colon)...]), port > 0,
                      colon != text.startIndex else {
                    throw OptionError("--mqtt-broker must be HOST:PORT, e.g. 127.0.0.1:8883, not '\(text)'")
                }
                var host = String(text[..<colon])
                if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
                options.mqttBrokerHost = host
                options.mqttBrokerPort = port
            case "--mqtt-ca": options.mqttCAFile = try value(argument)
            case "--mqtt-cert": options.mqttCertificateFile = try value(argument)
            case "--mqtt-key": options.mqttKeyFile = try value(argument)
            default:
                argument = argument.isEmpty ? "''" : argument
                throw OptionError("unknown option \(argument)")
            }
            i += 1
        }
        switch framingName {
        case "passthrough": options.framing = .passthrough
        case "coalesce": options.framing = .coalesce
        case "split": options.framing = .split(seed: seed)
        default: throw OptionError("--framing must be passthrough, coalesce or split, not '\(framingName)'")
        }
        if (options.certificateFile == nil) != (options.keyFile == nil) {
            throw OptionError("--cert and --key go together")
        }
        if (options.mqttCertificateFile == nil) != (options.mqttKeyFile == nil) {
            throw OptionError("--mqtt-cert and --mqtt-key go together")
        }
        if options.mqttBrokerHost == nil && (options.mqttCAFile != nil || options.mqttCertificateFile != nil) {
            throw OptionError("--mqtt-ca, --mqtt-cert and --mqtt-key belong to --mqtt-broker HOST:PORT")
        }
        if options.mqttBrokerHost != nil && options.mqttCAFile == nil {
            throw OptionError("--mqtt-broker needs --mqtt-ca FILE: the CA that signed the broker's certificate (the connection is always TLS)")
        }
        if options.caFile != nil && options.certificateFile == nil {
            throw OptionError("--ca only names the CA of a certificate given with --cert")
        }
        return .run(options)
    }

    public static let helpText = """
    tunnel-service: a local emulator of the AWS IoT Secure Tunneling service (data plane and
    control plane) for running and testing whole tunnels on one machine.

    Usage: tunnel-service [options]

      --state-dir DIR          where the generated CA and server certificate live (./.tunnel-service)
      --host ADDR              address to listen on (127.0.0.1)
      --data-port N            TLS WebSocket data plane port (0: any free port)
      --api-port N             HTTP control plane port (0: any free port)
      --cert FILE --key FILE   serve this certificate instead of generating one
      --ca FILE                with --cert: the CA file to print on the 'ca' line
      --region REGION          region named in tunnel ARNs (us-east-1)
      --framing MODE           WebSocket framing of relayed messages: passthrough (default),
                               coalesce (frames up to 131076 bytes) or split (random cuts)
      --seed N                 seed of the split framing's cuts (1)
      --on-reconnect POLICY    when a side reconnects, tell the other side: none,
                               stream-reset (default) or session-reset
      --state-file FILE        keep tunnels and tokens in FILE (JSON) across restarts
      --require-access-key-id ID  refuse control-plane calls not signed with this access key id
      --max-open-tunnels N     open tunnels allowed at once (300)
      --max-connections N      WebSocket connections served at once (128)
      --minute-ms N            length of a lifetime minute in ms, for tests (60000)
      --mqtt-broker HOST:PORT  publish each destination token (OpenTunnel, or a destination
                               rotation, of a tunnel with destinationConfig.thingName) with
                               QoS 1 on $aws/things/THING/tunnels/notify, over TLS
      --mqtt-ca FILE           the CA of the broker's certificate (required with --mqtt-broker)
      --mqtt-cert FILE --mqtt-key FILE  the client certificate the broker asks for
      -v, --verbose N          0 silent ... 4 info (default) ... 6 trace, on stderr
      -h, --help               show this help

    On start it prints 'data-plane HOST:PORT', 'control-plane http://HOST:PORT', 'ca FILE' and
    'ready', one per line. SIGTERM or SIGINT closes every WebSocket and exits 0.

    """
}
