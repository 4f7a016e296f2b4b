import Foundation
import TunnelCore
import TunnelIO
import TunnelTLS

/// The `tunnel-service` program: options, certificates, state, the two endpoints on one event
/// loop, expiry, and a clean stop on SIGTERM/SIGINT.
public enum TunnelServiceMain {
    public enum ExitCode {
        public static let normal: Int32 = 0
        /// Could not start: certificates, state file, ports.
        public static let failure: Int32 = 1
        public static let usage: Int32 = 2
    }

    public static func run(arguments: [String]) -> Int32 {
        let options: ServiceOptions
        do {
            switch try ServiceOptionParser.parse(arguments) {
            case .help:
                FileHandle.standardOutput.write(Data(ServiceOptionParser.helpText.utf8))
                return ExitCode.normal
            case .run(let parsed):
                options = parsed
            }
        } catch {
            FileHandle.standardError.write(Data("tunnel-service: \(error)\nrun 'tunnel-service --help' for the options\n".utf8))
            return ExitCode.usage
        }
        let log = ServiceLog(verbosity: options.verbosity)
        do {
            let runtime = try ServiceRuntime(options: options, log: log)
            return runtime.run()
        } catch {
            log.error("\(error)")
            return ExitCode.failure
        }
    }
}

struct StartupError: Error, CustomStringConvertible {
    let description: String
}

/// Access tokens: 768 random bytes in base64, about the size of the service's (~1 KB) and with
/// no padding, so they travel unchanged in a header or a cookie.
enum AccessTokens {
    static let randomBytes = 768

    static func make(_ random: SecureRandom) -> String {
        HandshakeCrypto.base64Encode(random.bytes(randomBytes))
    }
}

final class ServiceRuntime {
    let options: ServiceOptions
    let log: ServiceLog
    let loop: EventLoop
    let random: SecureRandom
    let registry: TunnelRegistry
    let plane: DataPlane
    let control: ControlServer
    let certificates: Certificates.Files
    let stateFile: StateFile?
    private let expiryTimer: TunnelIO.Timer
    private var signals: [SignalWatcher] = []
    private var stopping = false
    private var safetyTimer: TunnelIO.Timer? = nil

    init(options: ServiceOptions, log: ServiceLog) throws {
        self.options = options
        self.log = log
        ignoreBrokenPipeSignal()
        if let certificate = options.certificateFile, let key = options.keyFile {
            certificates = Certificates.Files(certificate: certificate, key: key, ca: options.caFile ?? certificate)
        } else {
            certificates = try Certificates.ensure(directory: options.stateDirectory, log: log)
        }
        random = try SecureRandom(personalization: "tunnel-service")
        let tls = try TLSConfiguration.server(certificateFile: certificates.certificate, keyFile: certificates.key,
                                              random: random)
        let random = self.random
        registry = TunnelRegistry(region: options.region, minuteSeconds: Double(options.minuteMilliseconds) / 1000,
                                  maximumOpenTunnels: options.maximumOpenTunnels,
                                  makeToken: { AccessTokens.make(random) }, makeTunnelId: { random.uuid() })
        stateFile = options.stateFile.map(StateFile.init(path:))
        if let stateFile, let snapshot = try stateFile.load() {
            registry.restore(snapshot, now: ServiceRuntime.now())
            log.info("loaded \(snapshot.tunnels.count) tunnel(s) from \(stateFile.path)")
        }
        loop = try EventLoop()
        plane = DataPlane(loop: loop, registry: registry, tlsConfiguration: tls, options: options, log: log,
                          random: random, processId: UInt32(truncatingIfNeeded: ProcessInfo.processInfo.processIdentifier),
                          clock: ServiceRuntime.now)
        control = ControlServer(loop: loop, controlPlane: ControlPlane(registry: registry, requiredAccessKeyId: options.requiredAccessKeyId),
                                plane: plane, log: log, random: random, clock: ServiceRuntime.now)
        expiryTimer = TunnelIO.Timer(loop: loop)
        if let brokerHost = options.mqttBrokerHost {
            let mqttTLS = try TLSConfiguration.client(trustPaths: options.mqttCAFile.map { [$0] } ?? [], verify: true, random: random,
                                                      certificateFile: options.mqttCertificateFile, keyFile: options.mqttKeyFile)
            let notifier = TunnelNotifier(loop: loop, host: brokerHost, port: options.mqttBrokerPort, tls: mqttTLS,
                                          region: options.region, log: log, random: random)
            control.notifier = notifier
        }
    }

    static func now() -> Double { Date().timeIntervalSince1970 }

    func run() -> Int32 {
        guard let dataAddress = SocketAddress(ip: options.host, port: options.dataPort),
              let apiAddress = SocketAddress(ip: options.host, port: options.apiPort) else {
            log.error("--host must be an IP address, not '\(options.host)'")
            return TunnelServiceMain.ExitCode.usage
        }
        if !dataAddress.isLoopback {
            log.warning("--host \(options.host) is not a loopback address: the control plane has no authentication and the data plane accepts any token it issued, so anyone who can reach \(options.host) can open tunnels and read their tokens. Use it only on a network you control")
        }
        let dataBound: SocketAddress
        let apiBound: SocketAddress
        do {
            dataBound = try plane.start(address: dataAddress)
            apiBound = try control.start(address: apiAddress)
        } catch {
            log.error("\(error)")
            stop()
            loop.run()
            return TunnelServiceMain.ExitCode.failure
        }
        registry.onChange = { [self] in persist() }
        control.afterRequest = { [self] in scheduleExpiry() }
        persist()
        // Tunnels whose lifetime ran out while the emulator was not running end now.
        plane.apply(registry.expireDue(now: ServiceRuntime.now()))
        scheduleExpiry()
        do {
            for number in [SIGTERM, SIGINT] {
                signals.append(try SignalWatcher(loop: loop, signal: number) { [self] _ in stop() })
            }
        } catch {
            log.error("\(error)")
            stop()
            loop.run()
            return TunnelServiceMain.ExitCode.failure
        }
        let host = options.host.contains(":") ? "[\(options.host)]" : options.host
        announce("data-plane \(host):\(dataBound.port)")
        announce("control-plane http://\(host):\(apiBound.port)")
        announce("ca \(certificates.ca)")
        control.notifier?.start()
        announce("ready")
        log.info("data plane on \(dataBound) (framing \(options.framing), on reconnect \(options.onReconnect.rawValue)); control plane on \(apiBound)")
        loop.run()
        log.info("stopped")
        return TunnelServiceMain.ExitCode.normal
    }

    private func persist() {
        guard let stateFile else { return }
        do {
            try stateFile.save(registry.snapshot())
        } catch {
            log.error("\(error)")
        }
    }

    /// Arms the expiry timer for the next tunnel to reach its lifetime.
    private func scheduleExpiry() {
        guard !stopping else { return }
        guard let deadline = registry.nextDeadline() else {
            expiryTimer.stop()
            return
        }
        let seconds = max(0, deadline - ServiceRuntime.now())
        // One extra millisecond so the timer never fires just before the deadline it is for.
        let milliseconds = UInt64(min(seconds * 1000, 86_400_000).rounded(.up)) + 1
        expiryTimer.start(after: milliseconds) { [self] in
            plane.apply(registry.expireDue(now: ServiceRuntime.now()))
            scheduleExpiry()
        }
    }

    /// Stops accepting, closes every WebSocket with a close frame, and lets the loop end. A
    /// client that never answers its close frame is dropped after a few seconds.
    private func stop() {
        guard !stopping else { return }
        stopping = true
        log.info("stopping")
        control.shutdown()
        control.notifier?.stop()
        expiryTimer.close()
        // The signal watchers stay: a second SIGTERM during the stop must not fall back to the
        // default action and kill the process before the close frames are out. They do not keep
        // the loop alive (they are unreferenced).
        let safety = TunnelIO.Timer(loop: loop)
        safetyTimer = safety
        safety.start(after: 5_000) { [self] in
            log.warning("some connections did not close in time; dropping them")
            plane.abortAll()
            safetyTimer?.close()
            safetyTimer = nil
        }
        plane.shutdown { [self] in
            safetyTimer?.close()
            safetyTimer = nil
        }
    }
}
