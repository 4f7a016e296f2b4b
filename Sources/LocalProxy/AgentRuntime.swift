import CLibC
import TunnelCore
import TunnelIO
import TunnelTLS

/// Agent mode (`--mqtt-endpoint`): the device's access tokens come from AWS IoT over MQTT. The
/// agent keeps one MQTT connection up (mutual TLS with the device certificate, reconnecting with
/// jittered backoff and subscribing again each time) and runs one `DestinationRuntime` per
/// destination notification on `$aws/things/THING/tunnels/notify` (docs/AGENT.md).
///
///     listening --notification (new token)--> tunnel session running
///         ^                                        |  a new token: the session is stopped
///         |                                        |  politely and a new one starts at once
///         +------ the session ended (tunnel -------+  the same token again (QoS 1 redelivery):
///                 closed, token refused ...)          ignored
///
/// The MQTT connection and the tunnel session are independent: a broker outage does not touch
/// a running tunnel, and a tunnel ending does not touch the subscription. The agent owns the
/// process: signals, systemd notifications and the exit code (0 after TERM/INT; 3 when the
/// broker's certificate does not verify).
public final class AgentRuntime: MQTTConnectionDelegate {
    let configuration: Configuration
    let settings: AgentSettings
    let logger: Logger
    let loop: EventLoop
    /// The agent's own lookups (the MQTT broker's name). Each tunnel session gets a resolver of
    /// its own, configured the same, so that a session that stops ends only its lookups.
    let resolver: Resolver
    let random: SecureRandom
    let tunnelTLS: TLSConfiguration
    private var mqttTLS: TLSConfiguration
    private var mqtt: MQTTConnection? = nil
    private var brokerReady = false
    private var reconnectAttempt = 0
    private let reconnectTimer: Timer
    private var signalWatchers: [SignalWatcher] = []
    private let serviceManager: ServiceManager
    private var stopping = false
    private var exitCode: Int32? = nil

    /// The tunnel session of the latest notification, while it runs.
    private var current: (number: Int, token: String, runtime: DestinationRuntime)? = nil
    /// Sessions that were replaced or ended, kept until their handles have closed.
    private var retired: [DestinationRuntime] = []
    /// The token of the session that ended last: a redelivery of its notification is ignored.
    private var endedToken: String? = nil
    private var notifications = 0
    private var sessionsStarted = 0
    private let startedAt: UInt64

    public init(configuration: Configuration, settings: AgentSettings, logger: Logger, loop: EventLoop, resolver: Resolver,
                random: SecureRandom, tunnelTLS: TLSConfiguration, mqttTLS: TLSConfiguration) {
        self.configuration = configuration
        self.settings = settings
        self.logger = logger
        self.loop = loop
        self.resolver = resolver
        self.random = random
        self.tunnelTLS = tunnelTLS
        self.mqttTLS = mqttTLS
        reconnectTimer = Timer(loop: loop)
        serviceManager = ServiceManager(environment: SystemAccess.environment, logger: logger)
        startedAt = loop.now
    }

    /// Runs until a signal stops it (or the broker's certificate is refused); returns the exit code.
    public func run() -> Int32 {
        signalWatchers = watchProcessSignals(loop: loop, logger: logger) { [self] n in
            switch n {
            case SIGHUP: reload()
            case SIGUSR1: logger.report(statistics())
            default: stop("on signal \(n)")
            }
        }
        logger.info("agent: thing \(settings.thingName), waiting for tunnel notifications on \(settings.notifyTopic) from \(settings.brokerHost):\(settings.brokerPort) (client id \(settings.clientId))")
        for m in configuration.destinationMappings {
            logger.info("service \(m.serviceId.isEmpty ? "(unnamed)" : m.serviceId) -> \(m.endpoint)")
        }
        connectBroker()
        loop.run()
        return exitCode ?? ExitCode.normal
    }

    // MARK: The broker

    private func connectBroker() {
        guard !stopping else { return }
        var options = MQTTClientOptions(clientId: settings.clientId,
                                        subscriptions: [MQTTSubscription(topicFilter: settings.notifyTopic, qos: 1)])
        options.keepAliveSeconds = settings.keepAliveSeconds
        // A persistent session: notifications published while the device is offline (up to the
        // broker's limit) arrive when it is back, instead of being lost with the token they carry.
        options.cleanSession = false
        let connection = MQTTConnection(loop: loop, resolver: resolver, host: settings.brokerHost, port: settings.brokerPort, tls: mqttTLS,
                                        options: options, logger: logger)
        connection.delegate = self
        mqtt = connection
        logger.info("agent: connecting to the MQTT broker \(connection.target)")
        connection.start()
    }

    public func mqttReady() {
        brokerReady = true
        reconnectAttempt = 0
        logger.info("agent: subscribed to \(settings.notifyTopic): waiting for tunnel notifications")
        serviceManager.ready(status: "listening for tunnel notifications on \(settings.notifyTopic)")
    }

    public func mqttPublished(packetId: UInt16) {}

    public func mqttClosed(_ reason: MQTTCloseReason) {
        mqtt = nil
        brokerReady = false
        guard !stopping else { return }
        switch reason {
        case .refused(let failure):
            logger.error("agent: the MQTT broker refused us: \(failure)")
            scheduleReconnect()
        case .certificate(let error) where error.isOnlyNotYetValid:
            logger.warning("agent: the MQTT broker's certificate is not valid yet by this system's clock (\(error)): the clock is probably behind; retrying")
            scheduleReconnect()
        case .certificate(let error):
            logger.error("agent: the MQTT broker's TLS certificate was not accepted: \(error). Check -c/--capath (AWS IoT endpoints need the Amazon root CA) and --mqtt-endpoint, or the system clock")
            exitCode = ExitCode.certificate
            stop("after the certificate error")
        case .failed(let why):
            logger.warning("agent: MQTT connection ended: \(why)")
            scheduleReconnect()
        case .stopped:
            scheduleReconnect()
        }
    }

    /// Full-jitter exponential backoff, as for the tunnel: a random delay up to 1 s, 2 s, 4 s …
    private func scheduleReconnect() {
        guard !stopping else { return }
        let delay = backoffDelay(attempt: reconnectAttempt, maximum: configuration.reconnectDelayMaximumMilliseconds, random: random)
        reconnectAttempt += 1
        logger.warning("agent: reconnecting to the MQTT broker in \(delay) ms (attempt \(reconnectAttempt))")
        serviceManager.ready(status: "not connected to the MQTT broker; reconnecting (attempt \(reconnectAttempt))")
        reconnectTimer.start(after: UInt64(delay)) { [self] in connectBroker() }
    }

    // MARK: Notifications

    public func mqttMessage(_ message: MQTTPublish) {
        guard message.topic.bytesEqual(settings.notifyTopic) else {
            logger.debug("agent: ignoring a message on \(message.topic), which is not \(settings.notifyTopic)")
            return
        }
        notifications += 1
        var failure: TunnelNotificationError? = nil
        let parsed = message.payload.withUnsafeBytes { bytes -> TunnelNotification? in
            do throws(TunnelNotificationError) {
                return try TunnelNotification.parse(bytes)
            } catch {
                failure = error
                return nil
            }
        }
        guard let notification = parsed else {
            logger.error("agent: ignoring a tunnel notification that cannot be used: \(failure.map { "\($0)" } ?? "unreadable")")
            return
        }
        let token = notification.clientAccessToken
        guard notification.clientMode.bytesEqual("destination") else {
            logger.warning("agent: ignoring a tunnel notification for client mode '\(notification.clientMode)': this device is the destination")
            return
        }
        if let problem = accessTokenProblem(token) {
            logger.error("agent: ignoring a tunnel notification: its access token (fingerprint \(fingerprint(token))) \(problem)")
            return
        }
        if let running = current, running.token.bytesEqual(token) {
            logger.info("agent: notification with the running session's token (fingerprint \(fingerprint(token))\(message.duplicate ? ", a redelivery" : "")): nothing to do")
            return
        }
        if let ended = endedToken, ended.bytesEqual(token) {
            logger.info("agent: notification with the token of the session that already ended (fingerprint \(fingerprint(token))): ignored")
            return
        }
        if let problem = servicesProblem(notification.services) {
            logger.error("agent: ignoring the notification for services [\(notification.services.joined(separator: ", "))]: \(problem)")
            return
        }
        var session = configuration
        if configuration.endpointHost.isEmpty {
            do {
                session.endpointHost = try ConfigurationParser.endpointHost(forRegion: notification.region)
            } catch {
                logger.error("agent: ignoring a notification whose region cannot name an endpoint: \(error)")
                return
            }
        }
        session.accessToken = token
        session.accessTokenSource = "the MQTT notification on \(settings.notifyTopic) (services \(notification.services.joined(separator: ", ")), region \(notification.region))"
        start(session, token: token)
    }

    /// Why this device cannot serve the notification's services with its `-d` map (the same
    /// rule the destination session applies to the tunnel's service ids), or nil.
    func servicesProblem(_ services: [String]) -> String? {
        let mappings = configuration.destinationMappings
        if mappings.count == 1 && mappings[0].serviceId.isEmpty {
            return services.count <= 1 ? nil : SessionEndReason.serviceMismatch(missing: services, tunnel: services).description
        }
        var missing: [String] = []
        for s in services where !mappings.contains(where: { $0.serviceId.bytesEqual(s) }) { missing.append(s) }
        return missing.isEmpty ? nil : SessionEndReason.serviceMismatch(missing: missing, tunnel: services).description
    }

    /// Starts the tunnel session of a new token; a running session is stopped first (its local
    /// connections get the usual grace to finish writing).
    private func start(_ sessionConfiguration: Configuration, token: String) {
        pruneRetired()
        if let running = current {
            current = nil
            logger.info("agent: a new tunnel notification replaces the running session (token fingerprint \(fingerprint(running.token)))")
            retired.append(running.runtime)
            running.runtime.stopSession("for the new tunnel notification")
        }
        sessionsStarted += 1
        let number = sessionsStarted
        let sessionResolver = Resolver(mode: resolver.mode, builtinSettings: resolver.builtinSettings)
        let runtime = DestinationRuntime(agentSession: sessionConfiguration, logger: logger, loop: loop, resolver: sessionResolver,
                                         random: random, tls: tunnelTLS)
        runtime.onFinished = { [self] code in sessionFinished(number, code: code) }
        current = (number, token, runtime)
        endedToken = nil
        logger.info("agent: starting tunnel session \(number) with \(sessionConfiguration.endpointHost):\(sessionConfiguration.endpointPort)")
        runtime.start()
    }

    private func sessionFinished(_ number: Int, code: Int32) {
        guard let running = current, running.number == number else { return }
        current = nil
        endedToken = running.token
        retired.append(running.runtime)
        switch code {
        case ExitCode.rejected:
            logger.warning("agent: tunnel session \(number) ended: the service refused its access token; waiting for a new notification")
        case ExitCode.certificate:
            logger.warning("agent: tunnel session \(number) ended: the service's certificate was not accepted (see above); waiting for a new notification")
        case ExitCode.configuration:
            logger.warning("agent: tunnel session \(number) ended: this device cannot serve that tunnel (see above); waiting for a new notification")
        default:
            logger.info("agent: tunnel session \(number) ended; waiting for the next notification")
        }
    }

    /// Drops the sessions whose handles have all closed.
    private func pruneRetired() {
        retired.removeAll { $0.isIdle }
    }

    // MARK: Operations

    /// SIGHUP: reads the device certificate and key again (renewed on disk, say) and reconnects
    /// to the broker with them. A running tunnel session is not touched. If they cannot be
    /// loaded, the current ones stay.
    private func reload() {
        guard !stopping else { return }
        serviceManager.reloading()
        do {
            mqttTLS = try settings.brokerTLS(configuration, random: random)
        } catch {
            logger.error("SIGHUP: cannot load the device certificate and key again (\(error)): keeping the current ones")
            serviceManager.ready(status: brokerReady ? "listening for tunnel notifications on \(settings.notifyTopic)" : "not connected to the MQTT broker")
            return
        }
        logger.info("SIGHUP: device certificate and key loaded again: reconnecting to the MQTT broker")
        reconnectAttempt = 0
        reconnectTimer.stop()
        if let connection = mqtt {
            connection.delegate = nil
            mqtt = nil
            brokerReady = false
            connection.stop()
        }
        connectBroker()
        serviceManager.ready(status: "reloaded; connecting to the MQTT broker")
    }

    /// One line for SIGUSR1: the agent, then the running tunnel session's own statistics.
    func statistics() -> String {
        let broker = brokerReady ? "subscribed" : (mqtt == nil ? "not connected" : "connecting")
        var line = "statistics: agent up \((loop.now &- startedAt) / 1000) s; MQTT broker \(broker); \(notifications) notification(s), \(sessionsStarted) tunnel session(s)"
        if let running = current {
            line += "; session \(running.number): " + running.runtime.statisticsBody()
        } else {
            line += "; no tunnel session"
        }
        return line
    }

    private func stop(_ why: String) {
        guard !stopping else { return }
        stopping = true
        serviceManager.stopping()
        logger.info("agent: stopping \(why)")
        reconnectTimer.close()
        for w in signalWatchers { w.close() }
        signalWatchers.removeAll()
        if let running = current {
            current = nil
            retired.append(running.runtime)
            running.runtime.stopSession(why)
        }
        if let connection = mqtt {
            connection.delegate = nil
            mqtt = nil
            connection.stop()
        }
        resolver.cancelAll()
    }
}
