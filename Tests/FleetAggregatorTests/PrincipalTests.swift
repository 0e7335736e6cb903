import FleetCore
import Foundation
import Principals
import TestSupport
import Testing

/// Operators known by name: the principals file, roles (401 and 403 as RFC 6750 says), the
/// audit log, slowing down an address that guesses, and `edgefleet token add`.
@Suite("principals, roles and the audit log", .timeLimit(.minutes(3)))
struct PrincipalTests {
    static let viewer = "ef_viewer-token-0000000000000000000000000000"
    static let operatorToken = "ef_operator-token-11111111111111111111111111"
    static let admin = "ef_admin-token-222222222222222222222222222222"

    static let file = """
        principals:
          - name: vera
            role: viewer
            tokenSHA256: \(PrincipalsFile.hash(token: viewer))
          - name: otto
            role: operator
            tokenSHA256: \(PrincipalsFile.hash(token: operatorToken))
          - name: ada
            role: admin
            tokenSHA256: \(PrincipalsFile.hash(token: admin))
        """

    @Test("the file: only digests, names and roles checked, the flat token list read as admins, lookups by token", .ownThread)
    func file() throws {
        let parsed = try PrincipalsFile.parse(Self.file, path: "p.yaml")
        #expect(parsed.principals.map(\.name) == ["vera", "otto", "ada"])
        #expect(parsed.principal(forToken: Self.operatorToken)?.name == "otto")
        #expect(parsed.principal(forToken: Self.operatorToken + "x") == nil)
        #expect(parsed.principal(forToken: String(Self.operatorToken.dropLast())) == nil)
        #expect(try PrincipalsFile.parse(parsed.render(), path: "p.yaml") == parsed)
        let legacy = try PrincipalsFile.parse("# tokens\nlegacy-token-0123456789\n\n", path: "t")
        #expect(legacy.legacy && legacy.principals.count == 1 && legacy.principals[0].name == "admin" && legacy.principals[0].role == .admin)
        #expect(legacy.principal(forToken: "legacy-token-0123456789")?.role == .admin)
        func refusal(_ text: String) -> String? {
            do {
                _ = try PrincipalsFile.parse(text, path: "bad.yaml")
                return nil
            } catch {
                return error.description
            }
        }
        let digest = PrincipalsFile.hash(token: "x")
        #expect(refusal("principals:\n  - name: a\n    role: viewer\n    tokenSHA256: \(digest)\n  - name: a\n    role: admin\n    tokenSHA256: \(PrincipalsFile.hash(token: "y"))\n")?.contains("used twice") == true)
        #expect(refusal("principals:\n  - name: a/b\n    role: viewer\n    tokenSHA256: \(digest)\n")?.contains("name") == true)
        #expect(refusal("principals:\n  - name: a\n    role: root\n    tokenSHA256: \(digest)\n") != nil)
        #expect(refusal("principals:\n  - name: a\n    role: viewer\n    tokenSHA256: \(digest.uppercased())\n")?.contains("tokenSHA256") == true)
        #expect(refusal("principals:\n  - name: a\n    role: viewer\n    tokenSHA256: \(digest)\n  - name: b\n    role: admin\n    tokenSHA256: \(digest)\n")?.contains("same token") == true)
        #expect(refusal("short\n")?.contains("16") == true)
        #expect(throws: PrincipalsError.self) { try legacy.adding(name: "x", role: .viewer) }
    }

    @Test("each role is allowed exactly its actions: 401 with a Bearer challenge for no or an unknown token, 403 insufficient_scope for a known one without the right; every change in the audit log under the principal's name")
    func roles() async throws {
        let f = try await OperatorFixture.start(principals: Self.file)
        defer { f.stop() }
        let sites = try await f.fourModes()
        defer { Task { for site in sites { await site.shutdown() } } }
        func post(_ target: String, _ json: String? = nil, _ token: String?, headers: [String: String] = [:]) async throws -> HTTPResponse {
            try await HTTP.post(port: f.port, target, token: token, json: json, headers: headers)
        }
        let submit = #"{"site": "site-semi", "kind": "cluster.upgrade", "params": {"kubernetesVersion": "1.30.4"}}"#

        // Nobody, and an unknown token: 401 with the challenge.
        let none = try await f.get("/v1/fleet", token: nil)
        #expect(none.status == 401 && none.headers["www-authenticate"] == #"Bearer realm="edgefleet""#)
        let unknown = try await f.get("/v1/fleet", token: "ef_unknown-token-00000000000000000000")
        #expect(unknown.status == 401 && unknown.headers["www-authenticate"]?.contains(#"error="invalid_token""#) == true)

        // A viewer reads everything and changes nothing.
        for target in ["/v1/fleet", "/v1/sites", "/v1/operations", "/metrics", "/v1/audit"] {
            #expect(try await f.get(target, token: Self.viewer).status == 200, "viewer GET \(target)")
        }
        let refused = try await post("/v1/operations", submit, Self.viewer)
        #expect(refused.status == 403 && refused.errorCode == "forbidden")
        #expect(refused.headers["www-authenticate"]?.contains(#"error="insufficient_scope""#) == true)
        #expect(refused.text.contains("vera") && refused.text.contains("operator"))
        // Rollouts are an operator's: a viewer is refused; an operator gets past the role (this selector matches no site).
        let rollout = #"{"kind": "extension.install", "selector": "tier=none", "params": {"name": "x"}}"#
        #expect(try await post("/v1/rollouts", rollout, Self.viewer).status == 403)
        let tried = try await post("/v1/rollouts", rollout, Self.operatorToken)
        #expect(tried.status == 400 && tried.text.contains("no site matches"), "\(tried.text)")
        #expect(try await post("/v1/rollouts/ro-none/pause", nil, Self.viewer).status == 403)

        // An operator submits (as itself, on behalf of the name the client gives), cancels and retries; not more.
        let submitted = try await post("/v1/operations", submit, Self.operatorToken, headers: ["X-EdgeFleet-Operator": "olga@laptop"])
        #expect(submitted.status == 201)
        let operation = try #require(try submitted.json()["operation"] as? [String: Any])
        let id = try #require(operation["id"] as? String)
        #expect(operation["createdBy"] as? String == "otto on behalf of olga@laptop")
        #expect(try await post("/v1/operations/\(id)/cancel", nil, Self.viewer).status == 403)
        let cancelled = try await post("/v1/operations/\(id)/cancel", nil, Self.operatorToken)
        #expect(cancelled.status == 200)
        #expect(((try cancelled.json()["history"] as? [[String: Any]])?.last?["note"] as? String) == "cancelled by otto")
        #expect(try await post("/v1/operations/\(id)/retry", nil, Self.operatorToken).status == 409)  // allowed, but not failed
        let gone = try await post("/v1/operations", #"{"site": "site-gone", "kind": "extension.install", "params": {"name": "m"}}"#, Self.operatorToken)
        let blocked = try #require(try (gone.json()["operation"] as? [String: Any])?["id"] as? String)  // blocked: past its deadline
        #expect(try await post("/v1/operations/\(blocked)/release", nil, Self.operatorToken).status == 403)
        #expect(try await post("/v1/operations/cancel", #"{"site": "site-gone"}"#, Self.operatorToken).status == 403)
        #expect(try await HTTP.request("DELETE", port: f.port, "/v1/sites/site-new", token: Self.operatorToken).status == 403)

        // An admin does all of it.
        let released = try await post("/v1/operations/\(blocked)/release", nil, Self.admin)
        #expect(released.status == 200)
        #expect(((try released.json()["history"] as? [[String: Any]])?.last?["note"] as? String)?.hasPrefix("released by ada") == true)
        #expect(try await post("/v1/operations/cancel", #"{"site": "site-gone"}"#, Self.admin).status == 200)
        #expect(try await HTTP.request("DELETE", port: f.port, "/v1/sites/site-new?force=true", token: Self.admin).status == 200)

        // The audit log: every change and every refusal of a known principal, newest first, with
        // the principal, its role, the address and the answer; never public, paged by cursor.
        let audit = try await f.get("/v1/audit?limit=100", token: Self.viewer)
        #expect(audit.status == 200)
        let entries = try #require(try audit.json()["entries"] as? [[String: Any]])
        func entry(_ action: String, _ principal: String, _ status: Int) -> [String: Any]? {
            entries.first { $0["action"] as? String == action && $0["principal"] as? String == principal && $0["status"] as? Int == status }
        }
        let made = try #require(entries.first { $0["action"] as? String == "operation.submit" && $0["target"] as? String == "site-semi" && $0["status"] as? Int == 201 })
        #expect(made["onBehalfOf"] as? String == "olga@laptop" && made["address"] as? String == "127.0.0.1" && made["role"] as? String == "operator")
        #expect(made["principal"] as? String == "otto" && (made["detail"] as? String)?.contains(id) == true)
        #expect(entry("operation.submit", "vera", 403) != nil)
        #expect(entry("operation.cancel", "otto", 200)?["target"] as? String == id)
        #expect(entry("operation.release", "otto", 403) != nil && entry("operation.release", "ada", 200) != nil)
        #expect(entry("operations.cancel", "otto", 403) != nil && entry("operations.cancel", "ada", 200) != nil)
        #expect(entry("site.forget", "otto", 403) != nil && entry("site.forget", "ada", 200)?["target"] as? String == "site-new")
        let ids = entries.compactMap { $0["id"] as? Int }
        #expect(ids == ids.sorted(by: >), "not newest first: \(ids)")
        #expect(!entries.contains { $0["principal"] as? String == "anonymous" })
        let first = try await f.get("/v1/audit?limit=2&principal=ada", token: Self.viewer)
        let page = try #require(try first.json()["entries"] as? [[String: Any]])
        #expect(page.count == 2 && page.allSatisfy { $0["principal"] as? String == "ada" })
        let cursor = try #require(try first.json()["nextCursor"] as? String)
        let second = try #require(try await f.get("/v1/audit?limit=2&principal=ada&cursor=\(cursor)", token: Self.viewer).json()["entries"] as? [[String: Any]])
        #expect(second.count == 1 && (second[0]["id"] as? Int ?? .max) < (page.last?["id"] as? Int ?? 0))

        // The CLI shows the same log.
        let cli = try await f.cli(["audit", "--principal", "otto"], token: Self.viewer)
        // (Word by word: a random operation id may hold the letters "ada".)
        let words = Set(cli.stdout.split(whereSeparator: { $0 == " " || $0 == "\n" || $0 == "\t" }).map(String.init))
        #expect(cli.status == 0 && cli.stdout.contains("operation.submit") && cli.stdout.contains("olga@laptop") && !words.contains("ada"), "\(cli.stdout)")
    }

    @Test("the audit log survives a restart, and is never public")
    func auditSurvivesRestart() async throws {
        let f = try await OperatorFixture.start(publicReads: true, principals: Self.file)
        let submitted = try await HTTP.post(
            port: f.port, "/v1/operations", token: Self.operatorToken, json: #"{"site": "site-x", "kind": "extension.install", "params": {"name": "m"}}"#)
        #expect(submitted.status == 201)
        #expect(try await f.get("/v1/fleet", token: nil).status == 200)  // public reads
        #expect(try await f.get("/v1/audit", token: nil).status == 401)  // but not the audit log
        let again = try await f.fleet.restartAggregator(flags: f.flags, environment: f.environment)
        defer {
            again.aggregator.terminate()
            f.stop()
        }
        let port = try await OperatorFixture.listeningPort(again.aggregator)
        let audit = try await HTTP.get(port: port, "/v1/audit", token: Self.viewer)
        let entries = try #require(try audit.json()["entries"] as? [[String: Any]])
        #expect(entries.contains { $0["principal"] as? String == "otto" && $0["action"] as? String == "operation.submit" })
    }

    @Test("an address that keeps presenting unknown tokens waits (429 with Retry-After), even with a good token; others do not")
    func guessing() async throws {
        let f = try await OperatorFixture.start(principals: Self.file, extra: ["--auth-failures-per-minute", "3"])
        defer { f.stop() }
        for n in 0..<3 { #expect(try await f.get("/v1/fleet", token: "ef_guess-\(n)-0000000000000000000000000").status == 401) }
        let waiting = try await f.get("/v1/fleet", token: Self.viewer)
        #expect(waiting.status == 429)
        #expect(Int(waiting.headers["retry-after"] ?? "") ?? 0 >= 1)
        // The dashboard's sign-in counts too, and waits as well.
        #expect(try await HTTP.get(port: f.port, "/?token=\(Self.viewer)").status == 429)
        // Another address (the same machine's other loopback address) is heard.
        let other = try await HTTP.request("GET", port: f.port, "/v1/fleet", token: Self.viewer, source: "127.0.0.2")
        #expect(other.status == 200)
        let metrics = try await HTTP.request("GET", port: f.port, "/metrics", token: Self.viewer, source: "127.0.0.2")
        #expect(metrics.text.contains("edgefleet_api_auth_failures_total 5") || metrics.text.contains("edgefleet_api_auth_failures_total 6"), "\(metrics.text.split(separator: "\n").filter { $0.contains("auth_failures") })")
    }

    @Test("edgefleet token add: the token printed once, only its digest in a file only its owner reads; the running aggregator accepts it without a restart")
    func tokenAdd() async throws {
        let f = try await OperatorFixture.start(principals: Self.file)
        defer { f.stop() }
        let path = f.directory + "/principals.yaml"
        let added = try await f.cli(["token", "add", "nina", "operator", "--principals", path], token: nil)
        #expect(added.status == 0, "\(added.stderr)")
        let token = added.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(token.hasPrefix("ef_") && token.count == 67)
        let text = try String(contentsOfFile: path, encoding: .utf8)
        #expect(!text.contains(token) && text.contains(PrincipalsFile.hash(token: token)) && text.contains("vera"))
        let mode = try #require(try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int)
        #expect(mode & 0o077 == 0, "mode \(String(mode, radix: 8))")
        try await withTimeout(.seconds(10), "the new principal to be accepted") {
            while try await f.get("/v1/fleet", token: token).status != 200 { try await Task.sleep(for: .milliseconds(100)) }
        }
        // Names are unique; a bad name or role is a usage error; nothing is written then.
        #expect(try await f.cli(["token", "add", "nina", "viewer", "--principals", path], token: nil).status == 1)
        #expect(try await f.cli(["token", "add", "a/b", "viewer", "--principals", path], token: nil).status == 2)
        #expect(try await f.cli(["token", "add", "zed", "root", "--principals", path], token: nil).status == 2)
        #expect(try PrincipalsFile.read(path: path).principals.map(\.name) == ["vera", "otto", "ada", "nina"])
        // Revoking: the principal removed from the file stops working.
        var file = try PrincipalsFile.read(path: path)
        file.principals.removeAll { $0.name == "nina" }
        try file.write(to: path)
        try await withTimeout(.seconds(10), "the removed principal to be refused") {
            while try await f.get("/v1/fleet", token: token).status != 401 { try await Task.sleep(for: .milliseconds(100)) }
        }
    }
}
