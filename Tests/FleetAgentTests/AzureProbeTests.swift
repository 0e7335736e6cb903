import FleetAgent
import Foundation
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

extension StandInEndpoint {
    var endpoint: AzureProbeConfiguration.Endpoint { .init(host: "localhost", port: port) }
}

/// A listener that accepts TCP connections (in the kernel's backlog) and never says a word.
final class SilentListener {
    let fd: Int32
    let port: Int
    init() throws {
        (fd, port) = try listenOnLoopback(backlog: 16)
    }
    deinit { close(fd) }
}

@Suite("the Azure reachability probe", .timeLimit(.minutes(2)))
struct AzureProbeTests {
    @Test("a stand-in endpoint turned off and on flips reachable")
    func standInOffAndOn() async throws {
        let pki = try await TestPKI.make()
        defer { pki.remove() }
        let azure = try StandInEndpoint(pki: pki)
        let probe = AzureProbeConfiguration.endpoints([azure.endpoint], timeout: .seconds(5))

        let up = await AzureProbe.run(probe, caFile: pki.caCertificate)
        #expect(up.reachable, "\(up.detail)")
        #expect(up.probe == "endpoints")

        azure.stop()
        let down = await AzureProbe.run(probe, caFile: pki.caCertificate)
        #expect(!down.reachable)
        #expect(down.detail.contains("cannot connect"), "\(down.detail)")

        try azure.start()
        let back = await AzureProbe.run(probe, caFile: pki.caCertificate)
        #expect(back.reachable, "\(back.detail)")
    }

    @Test("a certificate the agent does not trust is not Azure (an intercepting proxy, a captive portal)")
    func untrusted() async throws {
        let pki = try await TestPKI.make()
        defer { pki.remove() }
        let azure = try StandInEndpoint(pki: pki)
        let result = await AzureProbe.run(.endpoints([azure.endpoint], timeout: .seconds(5)), caFile: nil)
        #expect(!result.reachable)
        #expect(result.detail.contains("certificate"), "\(result.detail)")
    }

    @Test("a listener that never answers the handshake is unreachable, within the timeout")
    func silent() async throws {
        let listener = try SilentListener()
        let refusing = try freeLoopbackPort()  // nothing listens: refused at once
        // Measured next to a probe that fails at once, started at the same moment: under the whole
        // suite the test's own resumption can wait seconds for a thread, which says nothing about
        // the probe. Not the OS's connect timeout (minutes) but the probe's own.
        let started = ContinuousClock.now
        async let silent = { () async -> (ProbeResult, Duration) in
            let result = await AzureProbe.run(.endpoints([.init(host: "127.0.0.1", port: listener.port)], timeout: .milliseconds(700)))
            return (result, ContinuousClock.now - started)
        }()
        async let control = { () async -> (ProbeResult, Duration) in
            let result = await AzureProbe.run(.endpoints([.init(host: "127.0.0.1", port: refusing)], timeout: .milliseconds(700)))
            return (result, ContinuousClock.now - started)
        }()
        let ((result, took), (refused, controlTook)) = await (silent, control)
        #expect(!result.reachable && !refused.reachable)
        #expect(result.detail.contains("timed out"), "\(result.detail)")
        #expect(took < controlTook + .seconds(10), "silent \(took), refused \(controlTook)")
    }

    @Test("every endpoint must answer: one down makes the site unreachable, and is named")
    func allRequired() async throws {
        let pki = try await TestPKI.make()
        defer { pki.remove() }
        let azure = try StandInEndpoint(pki: pki)
        let closed = try freeLoopbackPort()
        let result = await AzureProbe.run(
            .endpoints([azure.endpoint, .init(host: "localhost", port: closed)], timeout: .seconds(5)), caFile: pki.caCertificate)
        #expect(!result.reachable)
        #expect(result.detail.contains(":\(closed)"), "\(result.detail)")
        // One at a time: the first failure decides, and the rest are not tried (one timeout at most).
        let first = await AzureProbe.run(
            .endpoints([.init(host: "localhost", port: closed), azure.endpoint], timeout: .seconds(5)), caFile: pki.caCertificate)
        #expect(!first.reachable && first.detail.contains(":\(closed)") && first.detail.contains("1 more not tried"), "\(first.detail)")
        let both = await AzureProbe.run(.endpoints([azure.endpoint, azure.endpoint], timeout: .seconds(5)), caFile: pki.caCertificate)
        #expect(both.reachable && both.detail == "2 endpoint(s) answered", "\(both.detail)")
        let unresolvable = await AzureProbe.run(.endpoints([.init(host: "no-such-host.invalid", port: 443)], timeout: .seconds(5)))
        #expect(!unresolvable.reachable)
        #expect(unresolvable.detail.contains("resolve"), "\(unresolvable.detail)")
    }

    @Test("the command probe: exit 0 is reachable, anything else is not, with the reason")
    func commandProbe() async {
        let ok = await AzureProbe.run(.command(["/bin/sh", "-c", "echo connected"], timeout: .seconds(5)))
        #expect(ok.reachable && ok.probe == "command")
        let offline = await AzureProbe.run(.command(["/bin/sh", "-c", "echo Offline; exit 3"], timeout: .seconds(5)))
        #expect(!offline.reachable)
        #expect(offline.detail == "exit 3: Offline")
        let hung = await AzureProbe.run(.command(["sleep", "30"], timeout: .milliseconds(300)))
        #expect(!hung.reachable && hung.detail.contains("timed out"))
        let missing = await AzureProbe.run(.command(["/nonexistent/az"], timeout: .seconds(5)))
        #expect(!missing.reachable && missing.detail.contains("cannot run"))
    }
}
