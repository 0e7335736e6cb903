import Foundation
import TestSupport
import Testing

@Suite("the three executables answer --help and --version and refuse bad flags", .ownThread)
struct ExecutableTests {
    static let names = ["edgefleet-agent", "edgefleet-aggregator", "edgefleet"]

    @Test("--version prints the EdgeFleet version", arguments: names)
    func version(_ name: String) throws {
        let result = try run(try builtProduct(name), ["--version"])
        #expect(result.status == 0)
        #expect(result.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "0.1.0")
    }

    @Test("--help prints usage and exits 0", arguments: names)
    func help(_ name: String) throws {
        let result = try run(try builtProduct(name), ["--help"])
        #expect(result.status == 0)
        #expect(result.stdout.contains("USAGE: \(name)"))
        #expect(result.stdout.contains("--version"))
    }

    @Test("an unknown flag exits 2 with a message naming it", arguments: names)
    func badFlag(_ name: String) throws {
        let result = try run(try builtProduct(name), ["--no-such-flag"])
        #expect(result.status == 2)
        #expect(result.stderr.contains("--no-such-flag"))
    }

    @Test("edgefleet without a command lists its commands and the exit codes")
    func cliOverview() throws {
        let result = try run(try builtProduct("edgefleet"), [])
        #expect(result.status == 0)
        for command in ["status", "sites", "site", "ops", "queue", "watch"] {
            #expect(result.stdout.contains("\n  \(command) "), "\(command) is not listed")
        }
        #expect(result.stdout.contains("4 refused"))
    }

    @Test("the aggregator refuses a bad HTTP address, an unreadable or weak token file, a bad --public-reads")
    func aggregatorHTTPSettings() throws {
        let aggregator = try builtProduct("edgefleet-aggregator")
        let directory = try temporaryDirectory("edgefleet-http-settings")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try "short\n".write(toFile: directory + "/weak", atomically: true, encoding: .utf8)
        try "principals:\n  - name: alice\n    role: operator\n    tokenSHA256: not-a-digest\n".write(
            toFile: directory + "/bad-digest.yaml", atomically: true, encoding: .utf8)
        try "principals:\n  - name: alice\n    role: root\n    tokenSHA256: \(String(repeating: "a", count: 64))\n".write(
            toFile: directory + "/bad-role.yaml", atomically: true, encoding: .utf8)
        for (flags, key) in [
            (["--http", "8080"], "http"), (["--http", "host:99999"], "http"), (["--token-file", directory + "/none"], "tokenFile"),
            (["--token-file", directory + "/weak"], "tokenFile"), (["--public-reads", "maybe"], "publicReads"),
            (["--principals", directory + "/bad-digest.yaml"], "tokenSHA256"), (["--principals", directory + "/bad-role.yaml"], "principals"),
            (["--principals", directory + "/bad-role.yaml", "--token-file", directory + "/weak"], "not both"),
            (["--auth-failures-per-minute", "0"], "authFailuresPerMinute"),
        ] {
            let result = try run(aggregator, ["--check-config"] + flags, environment: [:])
            #expect(result.status == 2, "\(flags)")
            #expect(result.stderr.contains(key), "\(flags): \(result.stderr)")
        }
        let good = try run(aggregator, ["--check-config", "--http", "[::1]:0", "--public-reads", "yes"], environment: [:])
        #expect(good.status == 0 && good.stdout.contains("reads open") && good.stdout.contains("changes refused"))
    }

    @Test("the aggregator checks a postgres:// --db at --check-config: no password in the URL (and none echoed), a readable password file, none for SQLite")
    func aggregatorDatabaseSettings() throws {
        let aggregator = try builtProduct("edgefleet-aggregator")
        let directory = try temporaryDirectory("edgefleet-db-settings")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try "s3cret-value\n".write(toFile: directory + "/pw", atomically: true, encoding: .utf8)
        for (flags, key, message) in [
            (["--db", "postgres://fleet:s3cret-value@127.0.0.1/edgefleet"], "db", "--db-password-file"),
            (["--db", "postgres://fleet@127.0.0.1"], "db", "names no database"),
            (["--db", "postgres://fleet@127.0.0.1/edgefleet?sslmode=maybe"], "db", "sslmode"),
            (["--db", "postgres://fleet@127.0.0.1/edgefleet", "--db-password-file", directory + "/none"], "dbPasswordFile", "cannot read"),
            (["--db", directory + "/fleet.sqlite", "--db-password-file", directory + "/pw"], "dbPasswordFile", "only a postgres:// database"),
        ] {
            let result = try run(aggregator, ["--check-config"] + flags, environment: [:])
            #expect(result.status == 2, "\(flags)")
            #expect(result.stderr.contains(key) && result.stderr.contains(message), "\(flags): \(result.stderr)")
            #expect(!result.stderr.contains("s3cret-value") && !result.stdout.contains("s3cret-value"), "a password was echoed")
        }
        let good = try run(
            aggregator, ["--check-config", "--db", "postgres://fleet@127.0.0.1:5433/edgefleet", "--db-password-file", directory + "/pw"], environment: [:])
        #expect(good.status == 0 && good.stdout.contains("postgres://fleet@127.0.0.1:5433/edgefleet") && !good.stdout.contains("s3cret-value"))
    }

    @Test("the agent validates its configuration: a bad setting exits 2 naming the key; --check-config prints it")
    func agentConfiguration() throws {
        let agent = try builtProduct("edgefleet-agent")
        let missing = try run(agent, [], environment: [:])
        #expect(missing.status == 2)
        #expect(missing.stderr.contains("'site'"))
        let bad = try run(agent, ["--site", "s1", "--heartbeat-interval", "soon"], environment: [:])
        #expect(bad.status == 2)
        #expect(bad.stderr.contains("heartbeatInterval") && bad.stderr.contains("--heartbeat-interval"))
        let fromEnvironment = try run(agent, ["--check-config", "--probe-interval", "2m"], environment: ["EDGEFLEET_SITE": "store-7", "EDGEFLEET_PROBE_INTERVAL": "5m"])
        #expect(fromEnvironment.status == 0)
        #expect(fromEnvironment.stdout.contains("site: store-7"))
        #expect(fromEnvironment.stdout.contains("probeInterval: 2m"))
    }

    @Test("the aggregator validates its configuration: a bad threshold exits 2 naming the key; the example loads")
    func aggregatorConfiguration() throws {
        let aggregator = try builtProduct("edgefleet-aggregator")
        let bad = try run(aggregator, ["--check-config", "--budget", "forever"], environment: [:])
        #expect(bad.status == 2)
        #expect(bad.stderr.contains("budget") && bad.stderr.contains("--budget"))
        let inverted = try run(aggregator, ["--check-config", "--warn-before", "1d", "--critical-before", "3d"], environment: [:])
        #expect(inverted.status == 2, "critical before warning must be refused: \(inverted.stdout)")
        let fromEnvironment = try run(
            aggregator, ["--check-config", "--budget", "10m", "--warn-before", "3m", "--critical-before", "1m"],
            environment: ["EDGEFLEET_BUDGET": "5m", "EDGEFLEET_DB": "/tmp/x.sqlite", "EDGEFLEET_CONNECTED_WITHIN": "30s"])
        #expect(fromEnvironment.status == 0, "\(fromEnvironment.stderr)")
        #expect(fromEnvironment.stdout.contains("budget 10m") && fromEnvironment.stdout.contains("database: /tmp/x.sqlite"))
        #expect(fromEnvironment.stdout.contains("connected within 30s"))

        // The commented example in deploy/ loads, given its secret files.
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("edgefleet-example-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        var example = try String(contentsOf: root.appendingPathComponent("deploy/aggregator.example.yaml"), encoding: .utf8)
        let pki = try TestPKI()
        defer { pki.remove() }
        for name in ["password", "ca.crt", "principals.yaml", "https.crt", "https.key"] {
            var contents = name == "principals.yaml" ? "principals: []\n" : "secret-long-enough-for-a-token\n"
            if name == "https.crt" { contents = try String(contentsOfFile: pki.serverCertificate, encoding: .utf8) }
            if name == "https.key" { contents = try String(contentsOfFile: pki.serverKey, encoding: .utf8) }
            _ = FileManager.default.createFile(atPath: "\(directory)/\(name)", contents: Data(contents.utf8))
            example = example.replacingOccurrences(of: "/etc/edgefleet/aggregator/\(name)", with: "\(directory)/\(name)")
        }
        try example.write(toFile: "\(directory)/aggregator.yaml", atomically: true, encoding: .utf8)
        let loaded = try run(aggregator, ["--check-config", "--config", "\(directory)/aggregator.yaml"], environment: [:])
        #expect(loaded.status == 0, "\(loaded.stderr)")
        #expect(loaded.stdout.contains("budget 30d") && loaded.stdout.contains("as edgefleet-aggregator (password set)"))
        #expect(loaded.stdout.contains("principals from \(directory)/principals.yaml, reads need a token"), "\(loaded.stdout)")
        // Every queueable kind has its az command.
        for kind in ["cluster.create", "cluster.update", "cluster.upgrade", "cluster.delete", "nodepool.add", "nodepool.scale",
                     "metallb.configure", "monitoring.configure", "gitops.configure", "extension.install", "extension.update", "extension.delete"] {
            #expect(loaded.stdout.contains("executor \(kind): az "), "no executor for \(kind)")
        }
        // --executors FILE, as docs/contract.md names it, with a kind's own maxAttempts.
        try """
            cluster.upgrade:
              argv: [az, aksarc, upgrade, --name, "{cluster.name}", --kubernetes-version, "{params.kubernetesVersion}", --yes]
              timeout: 30m
              maxAttempts: 5
            """.write(toFile: "\(directory)/executors.yaml", atomically: true, encoding: .utf8)
        let fromFile = try run(aggregator, ["--check-config", "--executors", "\(directory)/executors.yaml"], environment: [:])
        #expect(fromFile.status == 0, "\(fromFile.stderr)")
        #expect(fromFile.stdout.contains("executor cluster.upgrade: az aksarc upgrade"))
        let missing = try run(aggregator, ["--check-config", "--executors", "\(directory)/none.yaml"], environment: [:])
        #expect(missing.status == 2 && missing.stderr.contains("executors") && missing.stderr.contains("none.yaml"))
        // An executor for a kind that is never queued, or with a placeholder nothing fills, is refused.
        try (example + "  ssh:\n    argv: [ssh, x]\n").write(toFile: "\(directory)/ssh.yaml", atomically: true, encoding: .utf8)
        let ssh = try run(aggregator, ["--check-config", "--config", "\(directory)/ssh.yaml"], environment: [:])
        #expect(ssh.status == 2 && ssh.stderr.contains("executors.ssh"))
        let badPlaceholder = example.replacingOccurrences(of: "\"{params.tags}\"", with: "\"{tags}\"")
        try badPlaceholder.write(toFile: "\(directory)/placeholder.yaml", atomically: true, encoding: .utf8)
        let placeholder = try run(aggregator, ["--check-config", "--config", "\(directory)/placeholder.yaml"], environment: [:])
        #expect(placeholder.status == 2 && placeholder.stderr.contains("{tags}") && placeholder.stderr.contains("executors.cluster.update"))
        // A typo in a key is refused, naming it.
        try (example + "conectedWithin: 5m\n").write(toFile: "\(directory)/typo.yaml", atomically: true, encoding: .utf8)
        let typo = try run(aggregator, ["--check-config", "--config", "\(directory)/typo.yaml"], environment: [:])
        #expect(typo.status == 2 && typo.stderr.contains("conectedWithin"))
    }
}
