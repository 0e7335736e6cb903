import FleetAgent
import HostPort
import MQTT
import Testing

@Suite("one host:port parser")
struct HostPortTests {
    @Test("HOST:PORT, [IPv6]:PORT and a default port; port 0 only for a listening socket")
    func parsing() throws {
        #expect(try HostPort.parse("127.0.0.1:8080", role: .listen) == HostPort(host: "127.0.0.1", port: 8080))
        #expect(try HostPort.parse("[::1]:0", role: .listen) == HostPort(host: "::1", port: 0))
        #expect(try HostPort.parse("broker.local", role: .connect, defaultPort: 1883) == HostPort(host: "broker.local", port: 1883))
        #expect(HostPort(host: "::1", port: 8080).description == "[::1]:8080")
        for bad in ["127.0.0.1:0", "host:", ":80", "host:65536", "host:-1", "host:８０", "[::1", "[::1]x", "::1:80", "a b:80", "host"] {
            #expect(throws: HostPort.ParseError.self, "\(bad)") { try HostPort.parse(bad, role: .connect) }
        }
        #expect(throws: HostPort.ParseError.self) { try HostPort.parse("host:70000", role: .listen) }
    }

    @Test("the broker URL, the probe's endpoints and the listen address agree (they all use it)")
    func callersAgree() throws {
        // Port 0 is no destination: a broker URL and an Azure endpoint refuse it.
        #expect(throws: MQTTError.self) { try BrokerURL(parsing: "mqtt://127.0.0.1:0") }
        #expect(throws: (any Error).self) { try AzureProbeConfiguration.Endpoint(parsing: "management.azure.com:0") }
        #expect(try AzureProbeConfiguration.Endpoint(parsing: "[2001:db8::1]:443") == .init(host: "2001:db8::1", port: 443))
        #expect(try BrokerURL(parsing: "mqtts://[2001:db8::1]") == BrokerURL(host: "2001:db8::1", port: 8883, usesTLS: true))
        #expect(throws: MQTTError.self) { try BrokerURL(parsing: "mqtt://::1:1883") }
    }
}
