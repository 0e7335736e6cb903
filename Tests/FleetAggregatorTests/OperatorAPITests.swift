import FleetCore
import Foundation
import TestSupport
import Testing

/// The HTTP API through real HTTP against the aggregator as its own process.
@Suite("the HTTP API", .timeLimit(.minutes(3)))
struct OperatorAPITests {
    @Test("authentication: /healthz is open; reads and changes need a token; a wrong one is refused; a second token works")
    func authentication() async throws {
        let f = try await OperatorFixture.start()
        defer { f.stop() }
        let health = try await f.get("/healthz", token: nil)
        #expect(health.status == 200)
        #expect(try health.json()["status"] as? String == "ok" && health.json()["broker"] as? String == "connected")

        for (method, target) in [("GET", "/v1/fleet"), ("GET", "/v1/sites"), ("GET", "/v1/operations"), ("GET", "/metrics"), ("POST", "/v1/operations")] {
            let none = try await HTTP.request(method, port: f.port, target, body: method == "POST" ? Array("{}".utf8) : nil)
            #expect(none.status == 401, "\(method) \(target) without a token")
            #expect(none.errorCode == "unauthorized")
            #expect(none.headers["www-authenticate"]?.hasPrefix("Bearer") == true)
            let wrong = try await HTTP.request(method, port: f.port, target, token: "not-the-token-at-all-0000", body: method == "POST" ? Array("{}".utf8) : nil)
            #expect(wrong.status == 401, "\(method) \(target) with a wrong token")
            #expect(wrong.errorCode == "unauthorized")
            #expect(wrong.headers["www-authenticate"]?.contains(#"error="invalid_token""#) == true)
        }
        // A token that is a prefix or an extension of a real one is not one.
        #expect(try await f.get("/v1/fleet", token: String(OperatorFixture.token.dropLast())).status == 401)
        #expect(try await f.get("/v1/fleet", token: OperatorFixture.token + "x").status == 401)
        #expect(try await HTTP.get(port: f.port, "/v1/fleet", headers: ["Authorization": "Basic dXNlcjpwYXNz"]).status == 401)
        #expect(try await f.get("/v1/fleet").status == 200)
        #expect(try await f.get("/v1/fleet", token: "second-token-abcdefghijklmnop").status == 200)
        // The dashboard's cookie is not a credential for the API (another site's page could make a browser send it).
        #expect(try await HTTP.get(port: f.port, "/v1/fleet", headers: ["Cookie": "edgefleet_token=\(OperatorFixture.token)"]).status == 401)
        #expect(try await HTTP.post(port: f.port, "/v1/operations/op-x/cancel", headers: ["Cookie": "edgefleet_token=\(OperatorFixture.token)"]).status == 401)
        // A token followed by NUL bytes is not the token: answered 400 or the connection closed (the
        // server may close it while the client still writes, which a loaded machine shows as an empty answer).
        let nul = try? await f.get("/v1/fleet", token: OperatorFixture.token + String(repeating: "\u{0}", count: 256))
        #expect(nul.map { $0.status != 200 } ?? true)

        // Tokens are read again when the file changes: a revoked token stops working.
        try "\(OperatorFixture.token)\n".write(toFile: f.tokenFile, atomically: true, encoding: .utf8)
        try await withTimeout(.seconds(10), "the revoked token to be refused") {
            while try await f.get("/v1/fleet", token: "second-token-abcdefghijklmnop").status != 401 { try await Task.sleep(for: .milliseconds(100)) }
        }
        #expect(try await f.get("/v1/fleet").status == 200)
    }

    @Test("public reads: GET without a token works, a change still needs one; without a token file every change is refused")
    func publicReadsAndNoTokens() async throws {
        let open = try await OperatorFixture.start(publicReads: true)
        defer { open.stop() }
        #expect(try await open.get("/v1/fleet", token: nil).status == 200)
        #expect(try await open.get("/metrics", token: nil).status == 200)
        #expect(try await open.post("/v1/operations", #"{"site":"a","kind":"cluster.upgrade"}"#, token: nil).status == 401)

        let closed = try await OperatorFixture.start(publicReads: true, withTokens: false)
        defer { closed.stop() }
        let refused = try await closed.post("/v1/operations", #"{"site":"a","kind":"cluster.upgrade"}"#, token: OperatorFixture.token)
        #expect(refused.status == 403)
        #expect(refused.text.contains("--principals"))
        #expect(closed.fleet.aggregator.output.contains("no --principals"))

        // No token file and no public reads: nothing can be read, and the answer says why.
        let sealed = try await OperatorFixture.start(withTokens: false)
        defer { sealed.stop() }
        let read = try await sealed.get("/v1/fleet")
        #expect(read.status == 403 && read.text.contains("--principals"))
    }

    @Test("sites, one site, capabilities: each mode answered as the catalog says, with the workaround where the site has it")
    func sitesAndCapabilities() async throws {
        let f = try await OperatorFixture.start()
        defer { f.stop() }
        let sites = try await f.fourModes()
        defer { Task { for site in sites { await site.shutdown() } } }

        let all = try await f.get("/v1/sites").json()
        let views = try #require(all["sites"] as? [[String: Any]])
        #expect(views.compactMap { $0["site"] as? String } == ["site-connected", "site-gone", "site-new", "site-semi"])
        #expect(all["total"] as? Int == 4 && all["nextCursor"] == nil)
        let semi = try await f.get("/v1/sites?mode=semi-connected").json()["sites"] as? [[String: Any]]
        #expect(semi?.compactMap { $0["site"] as? String } == ["site-semi"])
        // A liveness filter lists only sites with that liveness, and its total says how many.
        // (Which liveness a beating site has at a given instant depends on how loaded the
        // machine is, and may change between two requests: the test checks the filter, not the timing.)
        var byLiveness = 0
        for liveness in ["online", "stale", "offline"] {
            let body = try await f.get("/v1/sites?liveness=\(liveness)").json()
            let listed = body["sites"] as? [[String: Any]] ?? []
            #expect(listed.allSatisfy { $0["liveness"] as? String == liveness })
            #expect(body["total"] as? Int == listed.count)
            byLiveness += listed.count
        }
        #expect(byLiveness >= 1)

        let detail = try await f.get("/v1/sites/site-gone").json()
        let view = try #require(detail["view"] as? [String: Any])
        #expect(view["mode"] as? String == "disconnected" && view["deadlineReason"] as? String == "budget")
        #expect((detail["cluster"] as? [String: Any])?["name"] as? String == "aks-site-gone")
        #expect((detail["checks"] as? [[String: Any]])?.count == 2)

        func kinds(_ site: String) async throws -> [String: [String: Any]] {
            let body = try await f.get("/v1/sites/\(site)/capabilities").json()
            let list = try #require(body["kinds"] as? [[String: Any]])
            return Dictionary(uniqueKeysWithValues: list.map { ($0["kind"] as! String, $0) })
        }
        let connected = try await kinds("site-connected")
        #expect(connected.values.allSatisfy { $0["available"] as? Bool == true })
        let gone = try await kinds("site-gone")
        #expect(gone["cluster.upgrade"]?["available"] as? Bool == false && gone["cluster.upgrade"]?["queueable"] as? Bool == true)
        #expect((gone["cluster.upgrade"]?["reason"] as? String)?.contains("passed its deadline") == true)
        #expect(gone["ssh"]?["available"] as? Bool == true && gone["kubeconfig.admin"]?["available"] as? Bool == true)
        #expect((gone["access.entra"]?["workaround"] as? String)?.contains("kubeconfig") == true)
        // The autoscaler workaround shows only where the site reports the autoscaler enabled.
        #expect((try await kinds("site-semi")["nodepool.scale"]?["workaround"] as? String)?.contains("autoscaler") == true)
        #expect(gone["nodepool.scale"]?["workaround"] == nil)

        #expect(try await f.get("/v1/sites/nowhere").status == 404)
        #expect(try await f.get("/v1/sites/nowhere/capabilities").errorCode == "not-found")
        #expect(try await f.get("/v1/sites/Bad%20Id").status == 400)
        #expect(try await f.get("/v1/fleet").json()["sites"] as? Int == 4)
    }

    @Test("pagination: operations and sites across pages, each exactly once, in order; a bad cursor or limit is a 400")
    func pagination() async throws {
        let f = try await OperatorFixture.start()
        defer { f.stop() }
        // Sites that never reported: the operations wait, nothing runs.
        var ids: [String] = []
        for i in 0..<25 { ids.append(try await f.submit("quiet-\(i % 3)", "extension.install", ["name": "ext-\(i)"])) }
        var seen: [String] = []
        var cursor: String?
        var pages = 0
        repeat {
            let body = try await f.get("/v1/operations?limit=10" + (cursor.map { "&cursor=\($0)" } ?? "")).json()
            let operations = try #require(body["operations"] as? [[String: Any]])
            #expect(operations.count <= 10)
            seen += operations.compactMap { $0["id"] as? String }
            cursor = body["nextCursor"] as? String
            pages += 1
        } while cursor != nil
        #expect(pages == 3 && seen == ids)
        // Newest first, also across pages.
        var newest: [String] = []
        cursor = nil
        repeat {
            let body = try await f.get("/v1/operations?order=newest&limit=10" + (cursor.map { "&cursor=\($0)" } ?? "")).json()
            newest += (body["operations"] as? [[String: Any]] ?? []).compactMap { $0["id"] as? String }
            cursor = body["nextCursor"] as? String
        } while cursor != nil
        #expect(newest == ids.reversed())
        #expect(try await f.get("/v1/operations?order=sideways").status == 400)

        let filtered = try await f.get("/v1/operations?site=quiet-1&state=queued&kind=extension.install&limit=1000").json()["operations"] as? [[String: Any]]
        #expect(filtered?.compactMap { $0["id"] as? String } == ids.enumerated().filter { $0.offset % 3 == 1 }.map(\.element))
        let succeeded = try await f.get("/v1/operations?state=succeeded").json()["operations"] as? [Any]
        #expect(succeeded?.isEmpty == true, "nothing has run: the sites never reported")

        let sites = try await f.fourModes()
        defer { Task { for site in sites { await site.shutdown() } } }
        var siteIDs: [String] = []
        cursor = nil
        repeat {
            let body = try await f.get("/v1/sites?limit=3" + (cursor.map { "&cursor=\($0)" } ?? "")).json()
            siteIDs += (body["sites"] as? [[String: Any]] ?? []).compactMap { $0["site"] as? String }
            cursor = body["nextCursor"] as? String
        } while cursor != nil
        #expect(siteIDs == ["site-connected", "site-gone", "site-new", "site-semi"])

        for bad in ["/v1/operations?cursor=abc", "/v1/operations?limit=0", "/v1/operations?limit=5000", "/v1/operations?state=done",
            "/v1/operations?kind=coffee.make", "/v1/operations?site=a/b", "/v1/operations?stat=queued", "/v1/sites?mode=offline",
            "/v1/sites?cursor=..%2F"]
        {
            let response = try await f.get(bad)
            #expect(response.status == 400, "\(bad): \(response.status) \(response.text)")
            #expect(response.errorCode == "bad-request")
        }
    }

    @Test("submit, show, cancel, retry, release, bulk cancel: each status code as documented")
    func lifecycle() async throws {
        let f = try await OperatorFixture.start()
        defer { f.stop() }
        let sites = try await f.fourModes()
        defer { Task { for site in sites { await site.shutdown() } } }

        // 201 then 200 for the same idempotency key, with the same operation.
        let body = #"{"site":"site-semi","kind":"cluster.upgrade","params":{"kubernetesVersion":"1.30.4"},"idempotencyKey":"upgrade-semi-1"}"#
        let first = try await f.post("/v1/operations", body)
        #expect(first.status == 201)
        let firstID = try #require((try first.json()["operation"] as? [String: Any])?["id"] as? String)
        #expect((try first.json()["reason"] as? String)?.contains("semi-connected") == true)
        let again = try await f.post("/v1/operations", body)
        #expect(try again.status == 200 && (again.json()["existing"] as? Bool) == true)
        #expect((try again.json()["operation"] as? [String: Any])?["id"] as? String == firstID)
        let shown = try await f.operation(firstID)
        #expect(shown["state"] as? String == "queued" && shown["createdBy"] as? String == "admin")
        #expect((shown["history"] as? [[String: Any]])?.first?["to"] as? String == "queued")

        // 422: not queueable, with the workaround; 400: bad input; 404: unknown operation.
        let entra = try await f.post("/v1/operations", #"{"site":"site-semi","kind":"access.entra"}"#)
        #expect(entra.status == 422 && entra.errorCode == "not-queueable")
        #expect(((try entra.json()["error"] as? [String: Any])?["workaround"] as? String)?.contains("kubeconfig") == true)
        #expect(try await f.post("/v1/operations", #"{"site":"site-semi","kind":"ssh"}"#).status == 422)
        for bad in [
            #"{"site":"site-semi","kind":"cluster.upgrade"}"#,  // the executor needs kubernetesVersion
            #"{"site":"site semi","kind":"cluster.upgrade","params":{"kubernetesVersion":"1"}}"#,
            #"{"site":"site-semi","kind":"coffee.make"}"#, #"{"site":"site-semi"}"#, #"{"site":"site-semi","#, "",
            #"{"site":"site-semi","kind":"extension.install","params":{"name":"x"},"expiresIn":"soon"}"#,
            #"{"site":"site-semi","kind":"extension.install","params":{"name":"x"},"expiresAt":"2001-01-01T00:00:00.000Z"}"#,
        ] {
            let response = try await f.post("/v1/operations", bad.isEmpty ? nil : bad)
            #expect(response.status == 400, "\(bad): \(response.status) \(response.text)")
        }
        // 422 naming the parameter: a value that could never be a safe argument. Before the rule,
        // "x\u0000y" reached az as "x" and the operation succeeded; "--subscription=..." was an option.
        let before = try await f.get("/v1/operations?limit=500").json()["operations"] as? [[String: Any]]
        for (value, why) in [
            (#"x\u0000y"#, "U+0000"), (#""#, "empty"), (String(repeating: "a", count: 1025), "1025 bytes"),
            (#"--subscription=evil"#, "begins with '-'"), (#"-x"#, "begins with '-'"), (#"a\u001b[2Jb"#, "U+001B"),
            (#"a\u0085b"#, "U+0085"), (#"line\nbreak"#, "U+000A"),
        ] {
            let response = try await f.post("/v1/operations", #"{"site":"site-semi","kind":"extension.install","params":{"name":""# + value + #""}}"#)
            #expect(response.status == 422 && response.errorCode == "invalid-parameter", "\(value.prefix(30)): \(response.status) \(response.text)")
            let message = ((try? response.json()["error"] as? [String: Any])?["message"] as? String) ?? ""
            #expect(message.contains("params.name") && message.contains(why), "\(message)")
        }
        let badName = try await f.post("/v1/operations", #"{"site":"site-semi","kind":"extension.install","params":{"name":"ok","a b":"x"}}"#)
        #expect(badName.status == 422 && badName.errorCode == "invalid-parameter")
        let after = try await f.get("/v1/operations?limit=500").json()["operations"] as? [[String: Any]]
        #expect(before?.count == after?.count, "a refused submission was stored")
        // Values that merely look odd are fine: one argument each, never through a shell.
        #expect(try await f.post("/v1/operations", #"{"site":"site-new","kind":"extension.install","params":{"name":"a b;$(id) 'c' x-y --"}}"#).status == 201)
        #expect(try await f.get("/v1/operations/op-none").status == 404)
        #expect(try await f.post("/v1/operations/op-none/cancel").status == 404)
        #expect(try await f.get("/v1/nothing/here").errorCode == "not-found")

        // Who asked, from the body when no header says: control characters never reach the history.
        let named = try await f.post(
            "/v1/operations", #"{"site":"site-new","kind":"extension.install","params":{"name":"n"},"createdBy":"eve\u001b[2J\u009b\u0007"}"#)
        #expect(((try named.json()["operation"] as? [String: Any])?["createdBy"] as? String) == "admin on behalf of eve[2J")

        // Cancel: 200, then 409 (already cancelled); retry of a non-failed one: 409.
        let cancelled = try await HTTP.post(
            port: f.port, "/v1/operations/\(firstID)/cancel", token: OperatorFixture.token, headers: ["X-EdgeFleet-Operator": "alice@ops"])
        #expect(try cancelled.status == 200 && (cancelled.json()["state"] as? String) == "cancelled")
        #expect(((try cancelled.json()["history"] as? [[String: Any]])?.last?["note"] as? String)?.contains("alice@ops") == true)
        #expect(try await f.post("/v1/operations/\(firstID)/cancel").status == 409)
        #expect(try await f.post("/v1/operations/\(firstID)/retry").errorCode == "conflict")

        // Release: an operation for the site past its deadline is blocked until released.
        let blockedID = try await f.submit("site-gone", "extension.install", ["name": "monitoring"])
        #expect(try await f.operation(blockedID)["state"] as? String == "blocked")
        #expect(try await f.post("/v1/operations/\(blockedID)/retry").status == 409)
        let released = try await f.post("/v1/operations/\(blockedID)/release")
        #expect(try released.status == 200 && (released.json()["state"] as? String) == "queued")
        #expect(try await f.post("/v1/operations/\(blockedID)/release").status == 409)

        // Retry: a failed operation (the stand-in az exits 3, one attempt) is queued again and runs.
        let failingID = try await f.submit("site-connected", "extension.install", ["name": "exit=3"], extra: #", "maxAttempts": 1"#)
        try await f.waitForState(failingID, "failed")
        let retried = try await f.post("/v1/operations/\(failingID)/retry")
        #expect(try retried.status == 200 && (retried.json()["attempts"] as? Int) == 0)
        try await f.waitForState(failingID, "failed")
        #expect(f.az.calls().filter { $0.id == failingID }.count == 2)

        // Bulk cancel: an empty filter is refused; by site cancels queued and blocked ones there only.
        var semiIDs: [String] = []
        for i in 0..<3 { semiIDs.append(try await f.submit("site-semi", "extension.install", ["name": "bulk-\(i)"])) }
        let otherID = try await f.submit("site-new", "extension.install", ["name": "keep"])
        #expect(try await f.post("/v1/operations/cancel", "{}").status == 400)
        #expect(try await f.post("/v1/operations/cancel", #"{"site":"site-semi","state":"failed"}"#).status == 400)
        let bulk = try await f.post("/v1/operations/cancel", #"{"site":"site-semi"}"#)
        #expect(bulk.status == 200)
        #expect(Set(try bulk.json()["cancelled"] as? [String] ?? []) == Set(semiIDs))
        #expect(try await f.operation(otherID)["state"] as? String == "queued")
        // Every change reached the fleet's events.
        _ = try await f.fleet.messages.event("site-semi", "the bulk cancellation's events") { [last = semiIDs[2]] in $0.type == .operationCancelled && $0.operationID == last }
    }

    @Test("/metrics: Prometheus text with the fleet's and the queue's metrics, named by convention, accepted by promtool")
    func metrics() async throws {
        let f = try await OperatorFixture.start()
        defer { f.stop() }
        let sites = try await f.fourModes()
        defer { Task { for site in sites { await site.shutdown() } } }
        _ = try await f.submit("site-semi", "extension.install", ["name": "metrics"])
        let text = try await withTimeout(.seconds(15), "the gauges to count the fleet") { () -> String in
            while true {
                let text = try await f.get("/metrics").text
                if text.contains(#"edgefleet_sites{mode="disconnected"} 1"#) && text.contains(#"edgefleet_operations{state="queued"} 1"#) { return text }
                try await Task.sleep(for: .milliseconds(200))
            }
        }
        for expected in [
            #"edgefleet_sites{mode="connected"} 1"#, #"edgefleet_sites{mode="semi-connected"} 1"#, #"edgefleet_sites{mode="unknown"} 1"#,
            #"edgefleet_sites_liveness{liveness="online"} "#, #"edgefleet_messages_rejected_total{reason="#,
            #"edgefleet_messages_ingested_total{channel="heartbeat"}"#, #"edgefleet_dispatch_latency_seconds_bucket{le="#,
            #"edgefleet_threshold_seconds{threshold="critical_before"} 300"#, #"edgefleet_threshold_seconds{threshold="budget"} 3600"#,
            "edgefleet_broker_connected 1", #"edgefleet_site_deadline_seconds{site="site-semi"} "#, "# TYPE edgefleet_site_deadline_seconds gauge",
        ] {
            #expect(text.contains(expected), "missing \(expected)")
        }
        // The deadline is the Unix time of last contact + budget (20 minutes ago + 1 h).
        let line = try #require(text.split(separator: "\n").first { $0.hasPrefix(#"edgefleet_site_deadline_seconds{site="site-semi"}"#) })
        let deadline = try #require(Double(line.split(separator: " ").last ?? ""))
        #expect(abs(deadline - Date().addingTimeInterval(40 * 60).timeIntervalSince1970) < 120)
        #expect(!text.contains(#"edgefleet_site_deadline_seconds{site="site-new"}"#), "a site with no contact has no deadline")

        let promtool = try #require(findExecutable("promtool"), "promtool is missing: .ci/run installs Debian's prometheus package")
        let file = f.directory + "/metrics.txt"
        try text.write(toFile: file, atomically: true, encoding: .utf8)
        let check = try await runAsync(URL(fileURLWithPath: "/bin/sh"), ["-c", "\(promtool) check metrics < \(file)"])
        #expect(check.status == 0, "promtool check metrics: \(check.stdout) \(check.stderr)")

        // Every metric the shipped alerting rules use is one the aggregator exports.
        let rules = try String(contentsOfFile: Self.repository + "/deploy/prometheus/edgefleet-rules.yaml", encoding: .utf8)
        let used = Set(rules.matches(of: /edgefleet_[a-z_]+/).map { String($0.output) })
        #expect(!used.isEmpty)
        for name in used { #expect(text.contains("# TYPE \(name) "), "the rules use \(name), which /metrics does not export") }
    }

    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../..").standardized.path

    @Test("the shipped alerting rules pass promtool check rules and their unit tests (a site within criticalBefore fires)")
    func alertingRules() async throws {
        let promtool = try #require(findExecutable("promtool"), "promtool is missing: .ci/run installs Debian's prometheus package")
        let directory = Self.repository + "/deploy/prometheus"
        let check = try await runAsync(URL(fileURLWithPath: promtool), ["check", "rules", directory + "/edgefleet-rules.yaml"])
        #expect(check.status == 0 && check.stdout.contains("SUCCESS: 5 rules found"), "\(check.stdout) \(check.stderr)")
        let unit = try await runAsync(URL(fileURLWithPath: promtool), ["test", "rules", directory + "/edgefleet-rules.test.yaml"])
        #expect(unit.status == 0 && unit.stdout.contains("SUCCESS"), "\(unit.stdout) \(unit.stderr)")
    }
}

/// The path of an executable on PATH, if there is one.
func findExecutable(_ name: String) -> String? {
    for directory in (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":") {
        let path = "\(directory)/\(name)"
        if FileManager.default.isExecutableFile(atPath: path) { return path }
    }
    return nil
}
