// Agent mode on the command line and in `--config` files: `--mqtt-endpoint`, `--thing-name`,
// `--cert`, `--key`, `--mqtt-client-id`, `--mqtt-keep-alive`, and what they exclude.
import Testing
import TunnelCore
@testable import LocalProxy

private let keyPath = "/etc/localproxy/device.key"
private let certPath = "/etc/localproxy/device.crt"
private let agentBase = ["--mqtt-endpoint", "abc123-ats.iot.eu-west-1.amazonaws.com", "--thing-name", "gw1",
                         "--cert", certPath, "--key", keyPath, "-d", "SSH=22,HTTP=80"]

private struct AgentWorld {
    var environment: [String: String] = [:]
    var files: [String: String] = [:]
    var modes: [String: UInt32] = [keyPath: 0o600, certPath: 0o644]
    var owners: [String: UInt32] = [:]
    static let user: UInt32 = 1000

    func parse(_ arguments: [String]) throws(ConfigurationError) -> Command {
        let environment = self.environment, files = self.files, modes = self.modes, owners = self.owners
        func status(_ path: String) -> FileStatus? {
            guard let mode = modes[path] else { return nil }
            return FileStatus(mode: mode, owner: owners[path] ?? AgentWorld.user)
        }
        func read(_ path: String) throws(ConfigurationError) -> String {
            guard let text = files[path] else { throw ConfigurationError("test: no such file \(path)") }
            return text
        }
        return try ConfigurationParser.parse(arguments, environment: { environment[$0] }, readFile: read,
                                             fileStatus: status, userId: AgentWorld.user)
    }

    func run(_ arguments: [String]) throws -> Configuration {
        guard case .run(let c) = try parse(arguments) else { throw ConfigurationError("expected a run") }
        return c
    }

    /// The error's message; a parse that succeeds fails the test.
    func failure(_ arguments: [String], sourceLocation: SourceLocation = #_sourceLocation) -> String {
        do {
            _ = try parse(arguments)
        } catch {
            return error.message
        }
        Issue.record("expected an error for \(arguments)", sourceLocation: sourceLocation)
        return ""
    }
}

@Suite struct AgentConfigurationTests {
    private let world = AgentWorld()

    @Test func agentModeNeedsNoTokenAndNoEndpoint() throws {
        let c = try world.run(agentBase)
        let agent = try #require(c.agent)
        #expect(c.mode == .destination)
        #expect(c.accessToken.isEmpty)
        #expect(c.endpointHost.isEmpty, "without -e/-r the notification's region names the endpoint")
        #expect(agent == AgentSettings(brokerHost: "abc123-ats.iot.eu-west-1.amazonaws.com", brokerPort: 8883, thingName: "gw1",
                                       certificateFile: certPath, keyFile: keyPath, clientId: "gw1", keepAliveSeconds: 60))
        #expect(agent.notifyTopic == "$aws/things/gw1/tunnels/notify")
        #expect(agent.alpn.isEmpty)
        #expect(c.destinationMappings.map(\.serviceId) == ["SSH", "HTTP"])
        #expect(c.warnings.isEmpty)
    }

    @Test func port443AsksForTheMQTTProtocolByALPN() throws {
        var arguments = agentBase
        arguments[1] = "abc123-ats.iot.eu-west-1.amazonaws.com:443"
        let agent = try #require(try world.run(arguments).agent)
        #expect(agent.brokerPort == 443)
        #expect(agent.alpn == ["x-amzn-mqtt-ca"])
    }

    @Test func endpointClientIdAndKeepAliveMayBeGiven() throws {
        let c = try world.run(agentBase + ["-e", "127.0.0.1:8443", "--mqtt-client-id", "gw1-agent", "--mqtt-keep-alive", "30"])
        #expect(c.endpointHost == "127.0.0.1")
        #expect(c.endpointPort == 8443)
        #expect(c.agent?.clientId == "gw1-agent")
        #expect(c.agent?.keepAliveSeconds == 30)
    }

    @Test func aConfigFileCarriesTheAgentSettings() throws {
        var w = world
        w.files["/etc/localproxy/localproxy.conf"] = """
            mqtt-endpoint = broker.example:8883
            thing-name = gw7
            cert = \(certPath)
            key = \(keyPath)
            destination-app = SSH=22
            """
        let c = try w.run(["--config", "/etc/localproxy/localproxy.conf"])
        #expect(c.agent?.thingName == "gw7")
        #expect(c.agent?.brokerHost == "broker.example")
    }

    @Test func theEnvironmentTokenIsIgnoredWithAWarning() throws {
        var w = world
        w.environment["AWSIOT_TUNNEL_ACCESS_TOKEN"] = "AQGAAXiEnvironmentToken0123456789"
        let c = try w.run(agentBase)
        #expect(c.accessToken.isEmpty)
        #expect(c.warnings.count == 1)
        #expect(c.warnings.first?.contains("ignored in agent mode") == true)
    }

    @Test func refusals() {
        #expect(world.failure(agentBase + ["-t", "AQGAAXiSecret"]).contains("takes each access token from the MQTT notification"))
        #expect(world.failure(agentBase + ["--access-token-file", "/x"]).contains("leave out -t/--access-token and --access-token-file"))
        #expect(world.failure(agentBase + ["-i", "123e4567-e89b-12d3-a456-426614174000"]).contains("makes a client token for each tunnel"))
        #expect(world.failure(Array(agentBase.dropLast(2)) + ["-s", "5555"]).contains("serves the device side"))
        #expect(world.failure(Array(agentBase.dropLast(2))).contains("destination mode needs -d"))
        #expect(world.failure(["--thing-name", "gw1", "-r", "us-east-1", "-d", "22"]).contains("--thing-name is for agent mode"))
        #expect(world.failure(["--mqtt-endpoint", "b", "-d", "22", "--cert", certPath, "--key", keyPath]).contains("needs --thing-name"))
        #expect(world.failure(["--mqtt-endpoint", "b", "-d", "22", "--thing-name", "gw1"]).contains("--cert FILE --key FILE"))
        #expect(world.failure(["--mqtt-endpoint", "b:0", "-d", "22", "--thing-name", "gw1", "--cert", certPath, "--key", keyPath])
            .contains("port from 1 to 65535"))
        #expect(world.failure(agentBase + ["--mqtt-keep-alive", "5"]).contains("--mqtt-keep-alive must be a number from 30 to 1200"))
        for bad in ["gw/1", "gw+", "#", "", String(repeating: "g", count: 129)] {
            var arguments = agentBase
            arguments[3] = bad
            #expect(world.failure(arguments).contains("--thing-name"), "thing name '\(bad)'")
        }
    }

    @Test func theKeyMustBePrivate() {
        var w = world
        w.modes[keyPath] = 0o644
        #expect(w.failure(agentBase).contains("chmod 600 \(keyPath)"))
        w.modes[keyPath] = 0o600
        w.owners[keyPath] = 4242
        #expect(w.failure(agentBase).contains("owned by uid 4242"))
        w.modes[keyPath] = nil
        #expect(w.failure(agentBase).contains("cannot read --key"))
        w = world
        w.modes[certPath] = nil
        #expect(w.failure(agentBase).contains("cannot read --cert"))
    }
}
