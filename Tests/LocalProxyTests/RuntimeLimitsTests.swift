// Limits the runtime keeps whatever the peer or the local applications do (docs/RELIABILITY.md):
// the number of local connections alive at once, counting those that are still closing.
import Testing
import TunnelCore
import TunnelIO
import TunnelTLS
@testable import LocalProxy

@Suite("Runtime limits", .serialized)
struct RuntimeLimitsTests {
    private func runtime(_ loop: EventLoop) throws -> DestinationRuntime {
        var configuration = Configuration()
        configuration.destinationMappings = [ServiceMapping(serviceId: "", endpoint: .tcp(host: "127.0.0.1", port: 22))]
        let random = try SecureRandom()
        let tls = try TLSConfiguration.client(trustPaths: [], verify: false, random: random)
        return DestinationRuntime(configuration: configuration, logger: Logger(verbosity: 0), loop: loop, resolver: Resolver(),
                                  random: random, tls: tls)
    }

    // Links leave the session's per-stream count as soon as they start closing, but keep their
    // socket and buffers until closed: the runtime bounds all of them together.
    @Test func linksAreBoundedIncludingThoseStillClosing() throws {
        let loop = try EventLoop()
        let r = try runtime(loop)
        var made: [LocalLink] = []
        for i in 0..<TunnelRuntime.maximumLinks {
            made.append(try #require(r.makeLink(LocalConnectionID(UInt32(i + 1)))))
        }
        #expect(r.makeLink(LocalConnectionID(100_000)) == nil)
        // A link that has closed frees its place.
        made[0].closeAfterFlush()
        #expect(r.links.count == TunnelRuntime.maximumLinks - 1)
        #expect(r.makeLink(LocalConnectionID(100_001)) != nil)
        r.finish(ExitCode.normal)
        loop.run()
        #expect(r.links.isEmpty)
        #expect(loop.close())
    }
}
