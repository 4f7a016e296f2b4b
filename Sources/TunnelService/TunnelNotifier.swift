import Foundation
import LocalProxy
import TunnelCore
import TunnelIO
import TunnelTLS

/// Publishes destination tokens to an MQTT broker as the service does to AWS IoT:
/// `{"clientAccessToken", "clientMode": "destination", "region", "services"}` on
/// `$aws/things/THING/tunnels/notify`, QoS 1 (docs/EMULATOR.md).
///
/// It keeps one connection to the broker (the device's own MQTT client, LocalProxy's
/// `MQTTConnection`, with this emulator's certificate when given) and reconnects after a failure.
/// Each notification is kept until the broker acknowledges it: those not acknowledged when a
/// connection ends are published again on the next one, and those made while no connection is
/// up wait for it (at most `queueLimit`; beyond that the oldest is dropped, with an error).
final class TunnelNotifier: MQTTConnectionDelegate {
    static let queueLimit = 256

    private let loop: EventLoop
    private let host: String
    private let port: UInt16
    private let tls: TLSConfiguration
    private let region: String
    private let log: ServiceLog
    private let logger: Logger
    private let random: SecureRandom
    /// The broker's name is resolved with the build's default (getaddrinfo on the host).
    private let resolver = Resolver()
    private var connection: MQTTConnection? = nil
    private var ready = false
    private var stopped = false
    private var attempt = 0
    private let retryTimer: TunnelIO.Timer
    /// Notifications not acknowledged yet, in order; `packetId` is set once published on the
    /// current connection.
    private var queue: [(thing: String, payload: [UInt8], packetId: UInt16?)] = []
    private var sequence = 0

    init(loop: EventLoop, host: String, port: UInt16, tls: TLSConfiguration, region: String, log: ServiceLog, random: SecureRandom) {
        self.loop = loop
        self.host = host
        self.port = port
        self.tls = tls
        self.region = region
        self.log = log
        self.random = random
        // The MQTT client logs through the proxy's logger, at the emulator's verbosity.
        logger = Logger(verbosity: log.verbosity)
        retryTimer = TunnelIO.Timer(loop: loop)
    }

    func start() { connect() }

    /// The notification's JSON, keys as the service writes them.
    static func payload(accessToken: String, region: String, services: [String]) -> [UInt8] {
        let value = JSONValue.object(["clientAccessToken": .string(accessToken), "clientMode": .string("destination"),
                                      "region": .string(region), "services": .array(services.map { .string($0) })])
        return Array(value.serialized.utf8)
    }

    static func topic(thing: String) -> String { "$aws/things/\(thing)/tunnels/notify" }

    func publish(thing: String, accessToken: String, services: [String]) {
        if queue.count >= TunnelNotifier.queueLimit {
            let dropped = queue.removeFirst()
            log.error("mqtt: \(queue.count + 1) notifications wait for the broker \(host):\(port); dropping the oldest, for thing \(dropped.thing)")
        }
        queue.append((thing, TunnelNotifier.payload(accessToken: accessToken, region: region, services: services), nil))
        if ready { send() } else { log.info("mqtt: notification for thing \(thing) queued until the broker \(host):\(port) is connected") }
    }

    private func connect() {
        guard !stopped else { return }
        sequence += 1
        // A client id of its own per process, so two emulators do not take each other's session.
        var options = MQTTClientOptions(clientId: "tunnel-service-\(getpid())-\(sequence)", subscriptions: [])
        options.keepAliveSeconds = 60
        let c = MQTTConnection(loop: loop, resolver: resolver, host: host, port: port, tls: tls, options: options, logger: logger)
        c.delegate = self
        connection = c
        c.start()
    }

    /// Publishes every queued notification not yet published on this connection.
    private func send() {
        guard let connection, ready else { return }
        for i in queue.indices where queue[i].packetId == nil {
            guard let id = connection.publish(topic: TunnelNotifier.topic(thing: queue[i].thing), payload: queue[i].payload, qos: 1) else {
                return
            }
            queue[i].packetId = id
            log.info("mqtt: published the destination token for thing \(queue[i].thing) on \(TunnelNotifier.topic(thing: queue[i].thing)) (packet \(id))")
        }
    }

    func mqttReady() {
        ready = true
        attempt = 0
        log.info("mqtt: connected to the broker \(host):\(port)")
        send()
    }

    func mqttMessage(_ message: MQTTPublish) {}

    func mqttPublished(packetId: UInt16) {
        guard let index = queue.firstIndex(where: { $0.packetId == packetId }) else { return }
        log.info("mqtt: the broker acknowledged the notification for thing \(queue[index].thing) (packet \(packetId))")
        queue.remove(at: index)
    }

    func mqttClosed(_ reason: MQTTCloseReason) {
        connection = nil
        ready = false
        for i in queue.indices { queue[i].packetId = nil }
        guard !stopped else { return }
        let delay = min(30_000, 250 << min(attempt, 7))
        attempt += 1
        log.warning("mqtt: connection to the broker \(host):\(port) ended (\(reason)); \(queue.count) notification(s) waiting; retrying in \(delay) ms")
        retryTimer.start(after: UInt64(delay)) { [self] in connect() }
    }

    func stop() {
        stopped = true
        retryTimer.close()
        if let connection {
            connection.delegate = nil
            self.connection = nil
            connection.stop()
        }
    }
}
