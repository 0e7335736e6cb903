import Foundation
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The README's main command, `make demo` (scripts/demo.sh), with the binaries this build
/// made: it brings up a broker, an aggregator and 50 simulated sites in every mode with
/// operations queued, says where to look, and leaves nothing running when it stops.
@Suite("the one-command demo", .timeLimit(.minutes(3)))
struct DemoTests {
    @Test("the demo shows 50 sites in all four modes with operations queued, and stops everything on SIGINT")
    func demo() async throws {
        let directory = try temporaryDirectory("edgefleet-demo-test")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let output = directory + "/out"
        var environment = ProcessInfo.processInfo.environment
        environment["DEMO_SKIP_BUILD"] = "1"
        environment["BIN"] = try builtProduct("edgefleet").deletingLastPathComponent().path
        environment["DEMO_DURATION"] = "120"
        let demo = try ChildProcess("/bin/bash", [repositoryRoot.path + "/scripts/demo.sh"], outputPath: output, errorPath: directory + "/err", environment: environment)
        defer {
            // A failed test still stops the demo the way a user would.
            if demo.isRunning {
                demo.signal(SIGINT)
                if demo.wait(timeout: .seconds(20)) == nil {
                    demo.signal(SIGKILL)
                    demo.wait()
                }
            }
        }
        // It says where to look once the fleet has reported.
        let dashboard = try await withTimeout(.seconds(90), "the demo's dashboard line") { () -> String in
            while true {
                let text = (try? String(contentsOfFile: output, encoding: .utf8)) ?? ""
                if let range = text.range(of: #"http://127\.0\.0\.1:[0-9]+/\?token=[0-9A-Za-z_]+"#, options: .regularExpression) { return String(text[range]) }
                if !demo.isRunning { throw TestSupportError("the demo ended: \(text) \((try? String(contentsOfFile: directory + "/err", encoding: .utf8)) ?? "")") }
                try await Task.sleep(for: .milliseconds(200))
            }
        }
        let text = try String(contentsOfFile: output, encoding: .utf8)
        #expect(text.contains("edgefleet status") && text.contains("edgefleet queue") && text.contains("mosquitto_sub"))
        let port = try #require(Int(dashboard.split(separator: ":")[2].split(separator: "/")[0]))
        let token = String(dashboard.split(separator: "=").last!)

        // Every mode is there, and the queue holds the operations it submitted.
        let sites = try await withTimeout(.seconds(30), "all four modes") { () -> Int in
            while true {
                let summary = try await HTTP.get(port: port, "/v1/fleet").json()
                let modes = summary["modes"] as? [String: Int] ?? [:]
                if ["connected", "semi-connected", "disconnected", "unknown"].allSatisfy({ (modes[$0] ?? 0) > 0 }) { return summary["sites"] as? Int ?? 0 }
                try await Task.sleep(for: .milliseconds(200))
            }
        }
        #expect(sites == 50)
        let operations = try await HTTP.get(port: port, "/v1/operations", token: token).json()["operations"] as? [[String: Any]] ?? []
        #expect(operations.count == 5)
        #expect(operations.contains { $0["state"] as? String == "blocked" })
        #expect(try await HTTP.get(port: port, "/", token: token).status == 200)

        // Ctrl-C: everything it started stops, and the ports are free again.
        demo.signal(SIGINT)
        let status = demo.wait(timeout: .seconds(30))
        #expect(status != nil, "the demo did not stop on SIGINT")
        #expect(!canConnect(port: port), "the aggregator is still running")
        let brokerPort = try #require(text.range(of: #"-p [0-9]+"#, options: .regularExpression).map { Int(text[$0].dropFirst(3))! })
        #expect(!canConnect(port: brokerPort), "the broker is still running")
        let leftovers = try await runAsync(URL(fileURLWithPath: "/bin/sh"), ["-c", "pgrep -f '[e]dgefleet simulate --broker mqtt://127.0.0.1:\(brokerPort)' || true"])
        #expect(leftovers.stdout.isEmpty, "the simulated fleet is still running: \(leftovers.stdout)")
    }
}
