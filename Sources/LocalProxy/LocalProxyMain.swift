import TunnelCore
import TunnelIO
import TunnelTLS

/// The program: parse the configuration, set up TLS and the loop, run the mode's runtime.
public enum LocalProxyMain {
    public static func run(arguments: [String]) -> Int32 {
        // Before anything reads the token: a crash must not write it to a core file.
        let coreDumpError = disableCoreDumps()
        let command: Command
        do {
            command = try ConfigurationParser.parse(arguments)
        } catch {
            Logger().log(.error, "\(error)")
            Logger().log(.error, "run 'localproxy --help' for the options")
            return ExitCode.configuration
        }
        let configuration: Configuration
        switch command {
        case .help:
            printOut(helpText)
            return ExitCode.normal
        case .version:
            printOut("""
                localproxy \(LocalProxyVersion.string)
                TLS: \(CryptoBackend.description)
                Licence: Apache-2.0 (LICENSE). The components linked into this binary and their
                licences are listed in NOTICES.md; both files are at the top of the source tree.

                """)
            return ExitCode.normal
        case .run(let c):
            configuration = c
        }

        let logger = Logger(verbosity: configuration.verbosity)
        logger.format = configuration.logFormat
        if let path = configuration.systemLogPath { logger.useSystemLog(path: path) }
        logger.info("localproxy \(LocalProxyVersion.string), \(configuration.mode) mode; TLS: \(CryptoBackend.description)")
        for warning in configuration.warnings { logger.warning(warning) }
        if let note = configuration.webProxyNote { logger.info(note) }
        if let coreDumpError { logger.warning("\(coreDumpError): a crash could write the access token to a core file") }
        ignoreBrokenPipeSignal()
        // The runtime's resolver: the agent gives each of its tunnel sessions a copy.
        let resolver = Resolver()
        useNameResolution(of: configuration, in: resolver, logger: logger)

        let random: SecureRandom
        let tls: TLSConfiguration
        do {
            random = try SecureRandom()
            tls = try TLSConfiguration.client(trustPaths: configuration.trustPaths, verify: configuration.verifyCertificates, random: random)
        } catch {
            logger.fatal("\(error)")
            return ExitCode.configuration
        }
        if !configuration.verifyCertificates {
            logger.warning("-k/--no-ssl-host-verify: the service's certificate is NOT checked; anyone on the network path can read and alter the tunnel. Use only for testing")
        }
        let loop: EventLoop
        do {
            loop = try EventLoop()
        } catch {
            logger.fatal("\(error)")
            return ExitCode.configuration
        }
        logger.attach(to: loop)

        // The runtimes live until the loop is closed: close callbacks still reach them.
        if let agent = configuration.agent {
            let mqttTLS: TLSConfiguration
            do {
                mqttTLS = try agent.brokerTLS(configuration, random: random)
            } catch {
                logger.fatal("\(error)")
                return ExitCode.configuration
            }
            let runtime = AgentRuntime(configuration: configuration, settings: agent, logger: logger, loop: loop, resolver: resolver,
                                       random: random, tunnelTLS: tls, mqttTLS: mqttTLS)
            let code = runtime.run()
            logger.finish()
            _ = loop.close()
            return code
        }
        switch configuration.mode {
        case .destination:
            for m in configuration.destinationMappings {
                logger.info("service \(m.serviceId.isEmpty ? "(unnamed)" : m.serviceId) -> \(m.endpoint)")
            }
            let runtime = DestinationRuntime(configuration: configuration, logger: logger, loop: loop, resolver: resolver, random: random, tls: tls)
            let code = runtime.run()
            logger.finish()
            _ = loop.close()
            return code
        case .source:
            let runtime = SourceRuntime(configuration: configuration, logger: logger, loop: loop, resolver: resolver, random: random, tls: tls)
            let code = runtime.run()
            logger.finish()
            _ = loop.close()
            return code
        }
    }

    /// Applies `--dns` and the built-in resolver's overrides to `resolver`, before any lookup.
    static func useNameResolution(of configuration: Configuration, in resolver: Resolver, logger: Logger) {
        if let mode = configuration.resolverMode { resolver.mode = mode }
        var settings = resolver.builtinSettings
        if let path = configuration.resolvConfPath { settings.resolvConfPath = path }
        if let path = configuration.hostsPath { settings.hostsPath = path }
        if let port = configuration.nameserverPort { settings.nameserverPort = port }
        resolver.builtinSettings = settings
        if resolver.mode == .builtin || !Resolver.systemResolverAvailable {
            logger.debug("host names: built-in resolver (\(settings.hostsPath), then the nameservers of \(settings.resolvConfPath), port \(settings.nameserverPort))")
        } else {
            logger.debug("host names: system resolver (getaddrinfo)")
        }
    }

    /// `--help`: the options come from the parser's table (CommandLineOptions.swift), so the help
    /// lists exactly the options the parser takes.
    public static let helpText = """
    localproxy \(LocalProxyVersion.string): AWS IoT Secure Tunneling local proxy

    Usage (device side):  localproxy -r REGION -d [SVC=]ENDPOINT[,SVC=ENDPOINT...]
      with the destination access token in AWSIOT_TUNNEL_ACCESS_TOKEN (or -t, or --access-token-file)


    """ + ConfigurationParser.optionsHelp() + """
    Environment: AWSIOT_TUNNEL_ACCESS_TOKEN, AWSIOT_TUNNEL_CLIENT_TOKEN, AWSIOT_TUNNEL_ENDPOINT,
    AWSIOT_TUNNEL_REGION (the command line takes precedence).
      https_proxy, HTTPS_PROXY      reach the service through this HTTP proxy (CONNECT):
                                    http://[USER:PASSWORD@]HOST[:PORT], port 3128 by default;
                                    https:// proxies are not supported
      no_proxy, NO_PROXY            hosts reached directly: *, NAME, .DOMAIN or IP, comma-separated

    Signals: TERM or INT stop (local connections get 2 s to finish writing); HUP re-reads
    --access-token-file and reconnects if the token changed; USR1 logs one line of statistics.
    Under systemd (NOTIFY_SOCKET set) it reports readiness, reloads and stopping (Type=notify).

    Exit codes: 0 stopped or tunnel closed by the service; 1 configuration error, or the web
    proxy refused its credentials (407: not retried); 2 access token rejected (a new token is
    needed); 3 the service's certificate did not verify. Other web proxy refusals are retried.

    """
}
