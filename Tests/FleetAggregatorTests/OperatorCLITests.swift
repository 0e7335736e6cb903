import FleetCore
import Foundation
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The built `edgefleet` binary against the aggregator as its own process.
@Suite("the edgefleet CLI", .timeLimit(.minutes(3)))
struct OperatorCLITests {
    @Test("status, sites --mode, site: tables an operator reads, and --output json a script parses")
    func fleetCommands() async throws {
        let f = try await OperatorFixture.start()
        defer { f.stop() }
        let sites = try await f.fourModes()
        defer { Task { for site in sites { await site.shutdown() } } }

        let status = try await f.cli(["status"])
        #expect(status.status == 0, "\(status.stderr)")
        #expect(status.stdout.contains("4 sites"))
        for mode in ["connected", "semi-connected", "disconnected", "unknown"] {
            #expect(status.stdout.split(separator: "\n").contains { $0.hasPrefix(mode + " ") && $0.hasSuffix(" 1") }, "\(mode) in\n\(status.stdout)")
        }
        #expect(!status.stdout.contains("\u{1B}["), "NO_COLOR and a pipe: no escape codes")
        let statusJSON = try JSONSerialization.jsonObject(with: Data(try await f.cli(["status", "--output", "json"]).stdout.utf8)) as? [String: Any]
        #expect((statusJSON?["modes"] as? [String: Any])?["semi-connected"] as? Int == 1)

        let semi = try await f.cli(["sites", "--mode", "semi-connected"])
        #expect(semi.status == 0)
        let rows = semi.stdout.split(separator: "\n").filter { $0.hasPrefix("SITE") || $0.hasPrefix("site-") }
        #expect(rows.first?.hasPrefix("SITE") == true && rows.count == 2 && rows[1].hasPrefix("site-semi"), "\(semi.stdout)")
        // Time left is human-readable: a 1 h budget with contact 20 minutes ago leaves 39-40 minutes.
        // (Counted from when the test started the sites: a loaded machine may take a minute or two.)
        #expect(rows[1].contains(/\s3[0-9]m\s/) || rows[1].contains(" 40m "), "\(rows[1])")

        // All sites, nearest deadline first; unknown (no deadline) last.
        let all = try await f.cli(["sites", "--output", "json"])
        let list = try #require(JSONSerialization.jsonObject(with: Data(all.stdout.utf8)) as? [[String: Any]])
        #expect(list.compactMap { $0["site"] as? String } == ["site-gone", "site-semi", "site-connected", "site-new"])
        #expect(try await f.cli(["sites", "--mode", "sideways"]).status == 2)

        let site = try await f.cli(["site", "site-gone"])
        #expect(site.status == 0)
        #expect(site.stdout.contains("site-gone  disconnected"))
        #expect(site.stdout.contains("what works here now"))
        let upgrade = try #require(site.stdout.split(separator: "\n").first { $0.hasPrefix("cluster.upgrade") })
        #expect(upgrade.contains("queue it"))
        #expect(site.stdout.contains("what works here now: past its deadline"))
        let entra = try #require(site.stdout.split(separator: "\n").first { $0.hasPrefix("access.entra") })
        #expect(entra.contains("not now") && entra.contains("workaround: retrieve the admin kubeconfig"))
        #expect(site.stdout.split(separator: "\n").first { $0.hasPrefix("ssh ") }?.contains("works") == true)
        #expect(site.stdout.contains("aks-site-gone"))
        // A site's own text never reaches the terminal as escape sequences.
        let rogue = try SimulatedSite("site-rogue", brokerURL: f.fleet.broker.url)
        try await rogue.connect()
        try await rogue.status(
            cluster: ClusterInfo(name: "aks\u{1B}[2J"),
            checks: [CheckResult(name: "clip\u{1B}]52;c;ZXZpbA==\u{07}", state: .warn, observedAt: Date(), durationMs: 1, output: "x\u{9B}31mred")])
        defer { Task { await rogue.shutdown() } }
        let rogueOutput = try await withTimeout(.seconds(10), "the rogue site's checks") { () -> String in
            while true {
                let result = try await f.cli(["site", "site-rogue"])
                if result.status == 0, result.stdout.contains("clip") { return result.stdout }
                try await Task.sleep(for: .milliseconds(100))
            }
        }
        #expect(!rogueOutput.unicodeScalars.contains { $0.value == 0x1B || $0.value == 0x07 || $0.value == 0x9B }, "\(rogueOutput.debugDescription)")
        #expect(rogueOutput.contains("clip?]52;c;ZXZpbA==?") && rogueOutput.contains("aks?[2J"))

        let siteJSON = try JSONSerialization.jsonObject(with: Data(try await f.cli(["site", "site-semi", "--output", "json"]).stdout.utf8)) as? [String: Any]
        #expect(((siteJSON?["detail"] as? [String: Any])?["view"] as? [String: Any])?["mode"] as? String == "semi-connected")
        #expect(((siteJSON?["capabilities"] as? [String: Any])?["kinds"] as? [Any])?.count == OperationKind.allCases.count)
    }

    @Test("on a terminal modes are coloured (not with NO_COLOR); a table is cut to the terminal's width, piped output never")
    func terminalOutput() async throws {
        let f = try await OperatorFixture.start()
        defer { f.stop() }
        let sites = try await f.fourModes()
        defer { Task { for site in sites { await site.shutdown() } } }
        let program = try builtProduct("edgefleet").path
        let environment = ["EDGEFLEET_SERVER": "http://127.0.0.1:\(f.port)", "EDGEFLEET_TOKEN": OperatorFixture.token, "TERM": "xterm"]
        // (swift test sets NO_COLOR for the tests when its own output is not a terminal.)
        let coloured = try await runOnTerminal(program, ["sites"], answer: "", environment: environment, unset: ["NO_COLOR"])
        #expect(
            coloured.output.contains("\u{1B}[33msemi-connected\u{1B}[0m") && coloured.output.contains("\u{1B}[1;31mdisconnected"),
            "\(coloured.output.debugDescription)")
        var plain = environment
        plain["NO_COLOR"] = "1"
        #expect(!(try await runOnTerminal(program, ["sites"], answer: "", environment: plain)).output.contains("\u{1B}["))

        // A 40-column terminal: every line of the table fits, the note column gives way with an ellipsis.
        plain["COLUMNS"] = "40"
        let narrow = try await runOnTerminal(program, ["site", "site-gone"], answer: "", environment: plain)
        let lines = narrow.output.split(whereSeparator: \.isNewline).filter { $0.hasPrefix("cluster.") || $0.hasPrefix("access.") || $0.hasPrefix("OPERATION") }
        #expect(!lines.isEmpty && lines.allSatisfy { $0.count <= 40 }, "\(lines)")
        #expect(lines.contains { $0.hasSuffix("…") })
        // Piped, nothing is cut, whatever COLUMNS says.
        let piped = try await f.cli(["site", "site-gone"], environment: ["COLUMNS": "40"])
        #expect(piped.stdout.split(separator: "\n").contains { $0.count > 40 }, "piped output is not cut")
    }

    @Test("ops submit, queue list/show/cancel/retry/release and bulk cancel, each reaching the aggregator")
    func queueCommands() async throws {
        let f = try await OperatorFixture.start()
        defer { f.stop() }
        let sites = try await f.fourModes()
        defer { Task { for site in sites { await site.shutdown() } } }

        let submitted = try await f.cli(["ops", "submit", "site-semi", "cluster.upgrade", "--param", "kubernetesVersion=1.30.4", "--output", "json"])
        #expect(submitted.status == 0, "\(submitted.stderr)")
        let response = try #require(JSONSerialization.jsonObject(with: Data(submitted.stdout.utf8)) as? [String: Any])
        let id = try #require((response["operation"] as? [String: Any])?["id"] as? String)
        #expect((response["operation"] as? [String: Any])?["createdBy"] as? String != "api", "the CLI names its operator")
        let table = try await f.cli(["ops", "submit", "site-semi", "extension.install", "--param", "name=flux", "--idempotency-key", "k1", "--expires-in", "7d"])
        #expect(table.status == 0 && table.stdout.contains("queued") && table.stdout.contains("semi-connected"))
        #expect(try await f.cli(["ops", "submit", "site-semi", "extension.install", "--param", "name=flux", "--idempotency-key", "k1"]).stdout.contains("already submitted"))

        let listed = try await f.cli(["queue", "--site", "site-semi", "--state", "queued"])
        #expect(listed.status == 0)
        #expect(listed.stdout.split(separator: "\n").count == 3 && listed.stdout.contains(id))
        let listJSON = try #require(JSONSerialization.jsonObject(with: Data(try await f.cli(["queue", "list", "--output", "json"]).stdout.utf8)) as? [[String: Any]])
        #expect(listJSON.count == 2)

        let shown = try await f.cli(["queue", "show", id])
        #expect(shown.status == 0 && shown.stdout.contains("kubernetesVersion=1.30.4") && shown.stdout.contains("history"))
        #expect(try await f.cli(["queue", "cancel", id]).stdout.contains("cancelled"))
        #expect(try await f.operation(id)["state"] as? String == "cancelled")

        // Release a blocked operation; retry a failed one.
        let blocked = try await f.submit("site-gone", "extension.install", ["name": "policy"])
        let released = try await f.cli(["queue", "release", blocked])
        #expect(released.status == 0 && released.stdout.contains("released"))
        #expect(try await f.operation(blocked)["state"] as? String == "queued")
        let failing = try await f.submit("site-connected", "extension.install", ["name": "exit=4"], extra: #", "maxAttempts": 1"#)
        try await f.waitForState(failing, "failed")
        #expect(try await f.cli(["queue", "retry", failing]).status == 0)
        try await f.waitForState(failing, "failed")
        #expect(f.az.calls().filter { $0.id == failing }.count == 2)

        // Bulk cancel: refused without --yes when not on a terminal (exit 2), done with it.
        var more: [String] = []
        for i in 0..<2 { more.append(try await f.submit("site-semi", "nodepool.scale", ["nodepool": "np\(i)", "count": "3"])) }
        let unconfirmed = try await f.cli(["queue", "cancel", "--site", "site-semi"])
        #expect(unconfirmed.status == 2 && unconfirmed.stderr.contains("--yes"))
        #expect(try await f.operation(more[0])["state"] as? String == "queued")
        let bulk = try await f.cli(["queue", "cancel", "--site", "site-semi", "--yes"])
        #expect(bulk.status == 0 && bulk.stdout.contains("cancelled 3 operation(s)"), "\(bulk.stdout)")
        for id in more { #expect(try await f.state(id) == "cancelled") }
    }

    @Test("queue cancel --site asks on a terminal: 'n' keeps everything, 'y' cancels")
    func confirmationOnATerminal() async throws {
        let f = try await OperatorFixture.start()
        defer { f.stop() }
        var ids: [String] = []
        for i in 0..<2 { ids.append(try await f.submit("far-away", "extension.install", ["name": "e\(i)"])) }
        for (answer, expected) in [("n", "queued"), ("y", "cancelled")] {
            let result = try await runOnTerminal(
                try builtProduct("edgefleet").path, ["queue", "cancel", "--site", "far-away"], answer: answer,
                environment: ["EDGEFLEET_SERVER": "http://127.0.0.1:\(f.port)", "EDGEFLEET_TOKEN": OperatorFixture.token, "NO_COLOR": "1"])
            #expect(result.output.contains("Cancel 2 queued or blocked operation(s) at far-away? [y/N]"), "\(result.output)")
            for id in ids { #expect(try await f.state(id) == expected, "after '\(answer)'") }
        }
    }

    @Test("exit codes: 1 unreachable, 2 usage, 3 not found, 4 refused (no token, wrong token, not queueable, conflict)")
    func exitCodes() async throws {
        let f = try await OperatorFixture.start()
        defer { f.stop() }
        let unreachable = try await f.cli(["status", "--server", "http://127.0.0.1:1"])
        #expect(unreachable.status == 1 && unreachable.stderr.contains("cannot reach the aggregator"))
        #expect(try await f.cli(["status", "--frobnicate"]).status == 2)
        #expect(try await f.cli(["status", "--server", "ftp://x"]).status == 2)
        #expect(try await f.cli(["ops", "submit", "site-a", "cluster.upgrade", "--param", "novalue"]).status == 2)
        #expect(try await f.cli(["site", "bad id"]).status == 2)
        #expect(try await f.cli(["queue", "cancel"]).status == 2)
        #expect(try await f.cli(["status", "--token-file", "/nonexistent/tokens"]).status == 2)

        let missing = try await f.cli(["queue", "show", "op-0000"])
        #expect(missing.status == 3 && missing.stderr.contains("no operation op-0000"))
        #expect(try await f.cli(["site", "nowhere"]).status == 3)

        let noToken = try await f.cli(["status"], token: nil)
        #expect(noToken.status == 4 && noToken.stderr.contains("EDGEFLEET_TOKEN"))
        let wrong = try await f.cli(["status"], token: "wrong-token-0123456789abcdef")
        #expect(wrong.status == 4 && wrong.stderr.contains("not valid"))
        // A token file works as well as the environment.
        #expect(try await f.cli(["status", "--token-file", f.tokenFile], token: nil).status == 0)
        let entra = try await f.cli(["ops", "submit", "site-a", "access.entra"])
        #expect(entra.status == 4 && entra.stderr.contains("workaround"))
        let id = try await f.submit("site-a", "extension.install", ["name": "x"])
        #expect(try await f.cli(["queue", "cancel", id]).status == 0)
        let conflict = try await f.cli(["queue", "cancel", id])
        #expect(conflict.status == 4 && conflict.stderr.contains("cancelled"))
    }

    @Test("watch prints one line per event, a mode change among them")
    func watch() async throws {
        let f = try await OperatorFixture.start()
        defer { f.stop() }
        let site = try SimulatedSite("watched", brokerURL: f.fleet.broker.url)
        try await site.connect()
        site.startBeating()
        defer { Task { await site.shutdown() } }
        _ = try await f.fleet.messages.view("watched", "connected") { $0.mode == .connected }

        let output = f.directory + "/watch.out"
        let watcher = try ChildProcess(
            try builtProduct("edgefleet").path, ["watch", "--broker", f.fleet.broker.url, "--site", "watched"], outputPath: output,
            errorPath: f.directory + "/watch.err")
        defer {
            watcher.signal(SIGTERM)
            watcher.wait()
        }
        try await withTimeout(.seconds(10), "watch to subscribe") {
            while (try? String(contentsOfFile: f.directory + "/watch.err", encoding: .utf8))?.contains("watching") != true {
                try await Task.sleep(for: .milliseconds(50))
            }
        }
        site.loseAzure()  // contact stops: semi-connected after connectedWithin (10 s)
        let line = try await withTimeout(.seconds(40), "a mode-change line") { () -> String in
            while true {
                let text = (try? String(contentsOfFile: output, encoding: .utf8)) ?? ""
                if let line = text.split(separator: "\n").first(where: { $0.contains("mode-changed") }) { return String(line) }
                try await Task.sleep(for: .milliseconds(100))
            }
        }
        #expect(line.contains("watched") && line.contains("connected → semi-connected"), "\(line)")
        #expect(line.first?.isNumber == true, "starts with the event's time: \(line)")
    }
}

/// Runs a program on a pseudo-terminal (through `script`), answering its question with
/// `answer`; returns what the terminal showed.
func runOnTerminal(_ program: String, _ arguments: [String], answer: String, environment: [String: String], unset: [String] = []) async throws
    -> (status: Int32, output: String)
{
    let command = ([program] + arguments).map { "'" + $0.replacingOccurrences(of: "'", with: "'\\''") + "'" }.joined(separator: " ")
    var env = ProcessInfo.processInfo.environment
    for (key, value) in environment { env[key] = value }
    for key in unset { env.removeValue(forKey: key) }
    let directory = try temporaryDirectory("edgefleet-tty")
    defer { try? FileManager.default.removeItem(atPath: directory) }
    try (answer + "\n").write(toFile: directory + "/answer", atomically: true, encoding: .utf8)
    // script gives the program a terminal on stdin and stdout; the answer waits in the
    // terminal's input until the program reads it.
    let shell = "cat \(directory)/answer | script -qec \"\(command.replacingOccurrences(of: "\"", with: "\\\""))\" /dev/null"
    let result = try await runAsync(URL(fileURLWithPath: "/bin/sh"), ["-c", shell], environment: env)
    return (result.status, result.stdout + result.stderr)
}
