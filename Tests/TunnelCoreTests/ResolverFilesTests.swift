// /etc/hosts, /etc/resolv.conf and numeric addresses, parsed from bytes as the built-in
// resolver reads them.
import Testing
@testable import TunnelCore

private func hosts(_ text: String) -> HostsFile { HostsFile(parsing: Array(text.utf8)) }
private func resolv(_ text: String) -> ResolverConfiguration { ResolverConfiguration(parsing: Array(text.utf8)) }
private func ips(_ list: [IPAddress]) -> [String] { list.map { $0.description } }

@Suite struct DNSResolverFilesTests {
    // MARK: Addresses

    @Test(arguments: [
        ("0.0.0.0", "0.0.0.0"), ("127.0.0.1", "127.0.0.1"), ("255.255.255.255", "255.255.255.255"),
        ("::", "::"), ("::1", "::1"), ("1::", "1::"), ("2001:DB8::1", "2001:db8::1"),
        ("2001:0db8:0000:0000:0000:0000:0000:0001", "2001:db8::1"),
        ("2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"),    // the first of two equal runs
        ("2001:db8:0:1:1:1:1:1", "2001:db8:0:1:1:1:1:1"), // one zero group is not shortened
        ("1:2:3:4:5:6:7::", "1:2:3:4:5:6:7:0"), ("::2:3:4:5:6:7:8", "0:2:3:4:5:6:7:8"),
        ("::ffff:192.0.2.1", "::ffff:192.0.2.1"), ("64:ff9b::192.0.2.33", "64:ff9b::c000:221"),
        ("fe80::1:2:3:4", "fe80::1:2:3:4"),
    ])
    func addressesParseAndPrint(_ text: String, _ canonical: String) throws {
        let address = try #require(IPAddress(text))
        #expect(address.description == canonical)
        #expect(IPAddress(canonical) == address, "the printed form parses back")
    }

    @Test(arguments: [
        "", "1", "1.2.3", "1.2.3.4.5", "256.1.1.1", "01.2.3.4", "1.2.3.04", "1..2.3", ".1.2.3", "1.2.3.4.",
        "1.2.3.-4", " 1.2.3.4", "1.2.3.4 ", "localhost",
        ":", ":::", "1:2", "1::2::3", ":1::", "1:2:3:4:5:6:7:8:9", "1:2:3:4:5:6:7", "12345::", "g::",
        "1:2:3:4:5:6:7:8::", "::1:2:3:4:5:6:7:8", "fe80::1%eth0", "::1.2.3", "::1.2.3.4:5", "1.2.3.4::",
        "::ffff:1.2.3.256", "[::1]",
    ])
    func badAddresses(_ text: String) {
        #expect(IPAddress(text) == nil, "\(text) parsed")
    }

    @Test func addressBytes() {
        #expect(IPAddress("10.1.2.3")?.bytes == [10, 1, 2, 3])
        #expect(IPAddress("10.1.2.3")?.family == .v4)
        #expect(IPAddress("::1")?.bytes == [UInt8](repeating: 0, count: 15) + [1])
        #expect(IPAddress("::1")?.family == .v6)
        #expect(IPAddress(bytes: [1, 2, 3]) == nil)
    }

    // MARK: /etc/hosts

    @Test func hostsFileOfADebianMachine() {
        let file = hosts("""
            127.0.0.1\tlocalhost
            127.0.1.1\tgateway.example.internal gateway

            # The following lines are desirable for IPv6 capable hosts
            ::1     localhost ip6-localhost ip6-loopback
            ff02::1 ip6-allnodes
            ff02::2 ip6-allrouters
            """)
        #expect(file.ignoredLines == [])
        #expect(ips(file.addresses(for: "localhost")) == ["127.0.0.1", "::1"])
        #expect(ips(file.addresses(for: "LocalHost.")) == ["127.0.0.1", "::1"])
        #expect(ips(file.addresses(for: "gateway")) == ["127.0.1.1"])
        #expect(ips(file.addresses(for: "Gateway.Example.Internal")) == ["127.0.1.1"])
        #expect(ips(file.addresses(for: "ip6-loopback")) == ["::1"])
        #expect(file.addresses(for: "example.internal").isEmpty)
        #expect(file.addresses(for: "").isEmpty)
    }

    @Test func hostsFileIPv4FirstInFileOrderWithoutRepeats() {
        let file = hosts("""
            2001:db8::2 svc.test
            192.0.2.2 svc.test   # trailing comment
            192.0.2.1 other.test svc.test
            192.0.2.2 svc.test
            2001:db8::1 svc.test\r
            """)
        #expect(ips(file.addresses(for: "svc.test")) == ["192.0.2.2", "192.0.2.1", "2001:db8::2", "2001:db8::1"])
    }

    @Test func hostsFileMalformedLines() {
        let long = "10.0.0.1 " + String(repeating: "a", count: resolverFileMaximumLineLength)
        let file = hosts("""
            not-an-address name.test
            10.0.0.300 name.test
            10.0.0.1
            fe80::1%eth0 name.test
            \(long)
            # 10.0.0.9 commented.test
               \t
            10.0.0.2\t\tname.test.  alias#comment
            #
            10.0.0.3 \(String(repeating: "b", count: 254)) ok.test
            """)
        #expect(file.ignoredLines == [1, 2, 3, 4, 5])
        #expect(ips(file.addresses(for: "name.test")) == ["10.0.0.2"])
        #expect(ips(file.addresses(for: "alias")) == ["10.0.0.2"])
        #expect(file.addresses(for: "commented.test").isEmpty)
        #expect(ips(file.addresses(for: "ok.test")) == ["10.0.0.3"], "an over-long name is dropped, not the line")
        #expect(hosts("").entries.isEmpty)
        #expect(hosts("\n\n").ignoredLines.isEmpty)
    }

    // MARK: /etc/resolv.conf

    @Test func resolvConfDefaults() {
        let none = ResolverConfiguration()
        #expect(ips(none.nameservers) == ["127.0.0.1"])
        #expect(none.timeoutSeconds == 5 && none.attempts == 2)
        #expect(resolv("") == none)
        #expect(resolv("search example.com\n# nameserver 10.0.0.1\n").nameservers == none.nameservers)
    }

    @Test func resolvConfOfATypicalSystem() {
        let c = resolv("""
            # Generated by NetworkManager
            search lan example.com
            nameserver 192.168.1.1
            nameserver\t2001:db8::53
            options edns0 timeout:2 attempts:3 rotate
            """)
        #expect(ips(c.nameservers) == ["192.168.1.1", "2001:db8::53"])
        #expect(c.timeoutSeconds == 2)
        #expect(c.attempts == 3)
        #expect(c.ignoredLines == [])
    }

    @Test func atMostThreeNameservers() {
        let c = resolv("nameserver 10.0.0.1\nnameserver 10.0.0.2\nnameserver 10.0.0.3\nnameserver 10.0.0.4\n")
        #expect(ips(c.nameservers) == ["10.0.0.1", "10.0.0.2", "10.0.0.3"])
    }

    @Test func optionLimitsAndLastValueWins() {
        #expect(resolv("options timeout:0 attempts:0").timeoutSeconds == 1)
        #expect(resolv("options timeout:0 attempts:0").attempts == 1)
        #expect(resolv("options timeout:99 attempts:99").timeoutSeconds == 30)
        #expect(resolv("options timeout:99 attempts:99").attempts == 5)
        #expect(resolv("options timeout:99999999999999999999").timeoutSeconds == 30)
        let c = resolv("options timeout:3\noptions timeout:4 attempts:1\n")
        #expect(c.timeoutSeconds == 4 && c.attempts == 1)
    }

    @Test func resolvConfMalformedLines() {
        let c = resolv("""
            nameserver
            nameserver example.com
            nameserver fe80::1%eth0
            nameserver 10.0.0.1 ; a comment after the address
            ; nameserver 10.0.0.9
            options timeout: attempts:x2
            options timeout:7x
            nameservers 10.0.0.8
            Nameserver 10.0.0.7
            nameserver 10.0.0.2\r
            """)
        #expect(ips(c.nameservers) == ["10.0.0.1", "10.0.0.2"])
        #expect(c.ignoredLines == [1, 2, 3, 6, 7])
        #expect(c.timeoutSeconds == 5 && c.attempts == 2, "bad values leave the defaults")
    }
}
