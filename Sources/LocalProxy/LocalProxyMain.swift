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

    public static let helpText = """
    localproxy \(LocalProxyVersion.string): AWS IoT Secure Tunneling local proxy

    Usage (device side):  localproxy -r REGION -d [SVC=]ENDPOINT[,SVC=ENDPOINT...]
      with the destination access token in AWSIOT_TUNNEL_ACCESS_TOKEN (or -t, or --access-token-file)

    Options:
      -h, --help                      show this help and exit
      -V, --version                   show the version and exit
      -t, --access-token TOKEN        access token (visible in the process list: prefer the
                                      environment or --access-token-file)
          --access-token-file FILE    read the access token from FILE (must not be readable by
                                      group or others)
      -i, --client-token TOKEN        client token (32-128 of A-Z a-z 0-9 -); default: a random
                                      UUID, kept for every reconnect of this process
      -r, --region REGION             tunnel region, e.g. us-east-1 (endpoint
                                      data.tunneling.iot.REGION.amazonaws.com)
      -e, --proxy-endpoint HOST[:PORT]  endpoint instead of -r (port 443 by default)
      -d, --destination-app MAP       destination mode: where tunnel services go. MAP is one
                                      ENDPOINT, or SVC=ENDPOINT,... ; ENDPOINT is PORT, HOST:PORT,
                                      [IPv6]:PORT or a Unix socket path
      -s, --source-listen-port MAP    source mode: local ports per service. MAP is PORT, or
                                      SVC=PORT,... (SVC= alone: any free port, logged)
      -b, --local-bind-address ADDR   source: listen address (127.0.0.1); destination: default
                                      host for -d ports (127.0.0.1)
      -c, --capath PATH[,PATH]        trusted CA certificates: PEM files or directories
                                      (default: /etc/ssl/certs/ca-certificates.crt)
      -k, --no-ssl-host-verify        do not verify the service's certificate (testing only)
      -m, --mode MODE                 source|src or destination|dst (implied by -s or -d)
      -y, --destination-client-type V1|V2  source mode: talk to old destinations
      -v, --verbose LEVEL             0 silent, 1 fatal, 2 error, 3 warning, 4 info (default),
                                      5 debug, 6 trace
          --config FILE               read 'long-option = value' lines from FILE
          --config-dir DIR            destination: SVC=ENDPOINT lines from files in DIR, used
                                      when -d is not given
          --connect-retries N         local connect retries before resetting the stream (3)
          --connect-retry-delay-ms N  delay between local connect attempts (1000)
          --ping-interval-ms N        WebSocket ping interval (20000)
          --pong-timeout-ms N         reconnect when nothing (no pong, no data) came from the
                                      service for N ms (default: 2 ping intervals + 5000; 0: off)
          --stall-timeout-ms N        reset a local connection that takes no data for N ms while
                                      the tunnel waits for it, so the others go on (15000; 0: off)
          --reconnect-delay-max-ms N  cap of the reconnect backoff (120000)
          --max-payload N             largest DATA payload to send (64512)
          --token-wait-ms N           with --access-token-file: after the service ends the
                                      session (e.g. token rotated), wait this long for a new
                                      token in the file and reconnect with it (10000; 0: exit)
          --half-close-linger-ms N    source: how long a half-closed local connection waits
                                      for the destination's answer (10000)
          --syslog                    log to the system log (/dev/log, facility daemon)
                                      instead of standard error
          --log-format text|json      log lines as text (default) or one JSON object each
          --dns system|builtin        how host names are resolved: system (the C library's
                                      getaddrinfo) or builtin (own DNS client: /etc/hosts, then
                                      the nameservers of /etc/resolv.conf). Default: system;
                                      builtin in fully static builds (no NSS there)

    Agent mode (device side, tokens delivered by AWS IoT over MQTT instead of -t):
          --mqtt-endpoint HOST[:PORT] the account's AWS IoT data endpoint (port 8883; on 443
                                      ALPN x-amzn-mqtt-ca is used); turns agent mode on
          --thing-name NAME           the thing whose tunnel notifications this device takes
                                      ($aws/things/NAME/tunnels/notify)
          --cert FILE                 the device certificate (PEM), for mutual TLS
          --key FILE                  its private key (PEM; the file must be private to this user)
          --mqtt-client-id ID         MQTT client id (default: the thing name)
          --mqtt-keep-alive SECONDS   MQTT keep-alive, 30 to 1200 (60)
      Each destination notification starts a tunnel with its token, its services mapped by -d;
      a new notification replaces it; -e/-r, when given, override the notification's region.
      -c lists the CAs of both the broker and the tunneling service.

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
