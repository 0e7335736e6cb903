import FleetAgent
import FleetCore
import Foundation
import TestSupport
import Testing

@Suite("local checks")
struct LocalChecksTests {
    func check(_ name: String, _ script: String, timeout: Duration = .seconds(10), capability: String? = nil) -> CheckConfiguration {
        CheckConfiguration(name: name, command: ["/bin/sh", "-c", script], interval: .seconds(60), timeout: timeout, capability: capability)
    }

    @Test("results keep the configured order, states follow exit codes, the first line is kept")
    func results() async {
        let results = await LocalChecks.run(
            [
                check("api", "echo ok"), check("nodes", "echo '2/3 Ready'; echo more; exit 1"), check("ssh", "echo 'no route'; exit 2"),
                check("odd", "exit 7"), check("hung", "echo started; sleep 30", timeout: .milliseconds(300)),
                CheckConfiguration(name: "missing", command: ["/nonexistent/check"], interval: .seconds(60), timeout: .seconds(5)),
            ], concurrency: 3)
        #expect(results.map(\.name) == ["api", "nodes", "ssh", "odd", "hung", "missing"])
        #expect(results.map(\.state) == [.pass, .warn, .fail, .unknown, .unknown, .unknown])
        #expect(results[0].output == "ok")
        #expect(results[1].output == "2/3 Ready")
        #expect(results[4].output.hasPrefix("timed out after 300ms") && results[4].output.contains("started"))
        #expect(results[5].output.contains("cannot run"))
    }

    @Test("no more checks run at once than the limit")
    func concurrencyLimit() async throws {
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let log = directory + "/log"
        // Each check notes its start and end, and waits (up to 2 s) until two checks have
        // started, so that two overlap however slowly processes start on a loaded machine;
        // with a limit of 1 the first would wait alone and the peak would be 1.
        let barrier = "for i in $(seq 1 40); do [ $(grep -c start \(log)) -ge 2 ] && break; sleep 0.05; done"
        let checks = (0..<6).map { check("c\($0)", "echo start >> \(log); \(barrier); echo end >> \(log)") }
        let results = await LocalChecks.run(checks, concurrency: 2)
        #expect(results.allSatisfy { $0.state == .pass })
        var running = 0
        var peak = 0
        for line in try String(contentsOfFile: log, encoding: .utf8).split(separator: "\n") {
            running += line == "start" ? 1 : -1
            peak = max(peak, running)
        }
        #expect(peak == 2, "peak concurrency \(peak)")
    }

    @Test("capabilities come from the checks that set them; certificate problems become a failed check")
    func capabilitiesAndCertificates() async {
        let checks = [
            check("cluster-autoscaler", "exit 0", capability: "clusterAutoscaler"), check("metallb", "exit 1", capability: "metallb"),
            check("plain", "exit 0"),
        ]
        let results = await LocalChecks.run(checks, concurrency: 2)
        #expect(LocalChecks.capabilities(checks, results: results) == ["clusterAutoscaler": true, "metallb": false])
        let now = Date()
        let bad = LocalChecks.certificateCheck(CertificateReading(earliestNotAfter: nil, source: nil, problems: ["/x.pem: cannot read the file"]), observedAt: now)
        #expect(bad.state == .fail && bad.output.contains("/x.pem"))
        let good = LocalChecks.certificateCheck(CertificateReading(earliestNotAfter: now, source: "/ok.pem", problems: []), observedAt: now)
        #expect(good.state == .pass && good.output.contains("/ok.pem"))
    }
}
