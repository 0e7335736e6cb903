import FleetCore
import FleetQueue
import Hummingbird

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// The dashboard: server-rendered HTML with no external assets (it runs on premises
/// without internet), refreshing itself every 10 s. The fleet at `/`, a site at
/// `/sites/{site}`, the queue at `/queue`. Opened as `/?token=...` it sets an HttpOnly,
/// SameSite=Strict cookie and shows cancel/retry/release buttons, which post plain forms.
extension OperatorAPI {
    func addDashboard(to router: Router<FleetRequestContext>) {
        router.get("/") { request, context in
            await htmlErrors {
                let query = try Query(request)
                if let token = query["token"] {
                    return login(token: token, context)
                }
                let signedIn = try dashboardAccess(request, context)
                return html(try fleetPage(query: query, signedIn: signedIn))
            }
        }
        router.get("/sites/{site}") { request, context in
            await htmlErrors {
                let signedIn = try dashboardAccess(request, context)
                let site = try siteParameter(context)
                let query = try Query(request, allowed: ["window"])
                guard let page = try sitePage(site, window: query["window"], signedIn: signedIn) else {
                    throw APIError.notFound("no site \(site) has reported to this aggregator")
                }
                return html(page)
            }
        }
        router.get("/queue") { request, context in
            await htmlErrors {
                let signedIn = try dashboardAccess(request, context)
                return html(try queuePage(query: try Query(request), signedIn: signedIn))
            }
        }
        router.get("/rollouts") { request, context in
            await htmlErrors {
                let signedIn = try dashboardAccess(request, context)
                _ = try Query(request, allowed: [])
                return html(try rolloutsPage(signedIn: signedIn))
            }
        }
        router.get("/rollouts/{id}") { request, context in
            await htmlErrors {
                let signedIn = try dashboardAccess(request, context)
                _ = try Query(request, allowed: [])
                let id = try context.parameters.require("id")
                guard let page = try rolloutPage(id, signedIn: signedIn) else { throw APIError.notFound("no rollout \(id)") }
                return html(page)
            }
        }
        router.post("/ui/operations/{id}/{action}") { request, context in
            var request = request
            let form = (try? await request.collectBody(upTo: 4096)).map { String(buffer: $0) } ?? ""
            return await htmlErrors {
                try sameOrigin(request)
                guard let action = OperatorAction(rawValue: try context.parameters.require("action")) else {
                    throw APIError.notFound("no action \(context.parameters.get("action") ?? "")")
                }
                return try await change(
                    request, context, action.access, action: "operation.\(action.rawValue)", target: context.parameters.get("id"), cookie: true
                ) { caller, _ in
                    let id = try context.parameters.require("id")
                    var back = "/queue"
                    for pair in form.split(separator: "&") where pair.hasPrefix("back=") {
                        back = Self.safeReturnPath(Query.decode(pair.dropFirst(5)))
                    }
                    let operation = try perform(action, id: id, by: caller.who + " (dashboard)")
                    return (Response(status: .seeOther, headers: [.location: back]), "now \(operation.state.rawValue) (dashboard)")
                }
            }
        }
        router.post("/ui/logout") { request, _ in
            await htmlErrors {
                // Only from the dashboard's own pages: another page must not sign an operator out.
                try sameOrigin(request)
                if let id = cookies(of: request)[Self.cookieName] { sessions.close(id) }
                return Response(
                    status: .seeOther, headers: [.location: "/", .setCookie: "\(Self.cookieName)=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict\(secure ? "; Secure" : "")"])
            }
        }
    }

    /// A page needs a token unless reads are public; answers whether buttons are shown (to a
    /// principal who may act: an operator or an admin).
    func dashboardAccess(_ request: Request, _ context: FleetRequestContext) throws(APIError) -> Bool {
        do {
            let caller = try authorize(request, context, .read, cookie: true)
            return (caller.principal?.role ?? .viewer) >= .operator
        } catch let error where error.status == .unauthorized || error.status == .forbidden {
            throw APIError(
                status: error.status, code: error.code,
                message: "\(error.message). Open the dashboard as /?token=YOUR_TOKEN (a token of a principal in the aggregator's --principals file).",
                headers: error.headers)
        }
    }

    /// Where a button may send the browser back to: the queue (with its filters) or a site's
    /// page, nothing else (no other host, however the path is spelled).
    static func safeReturnPath(_ path: String) -> String {
        if path.hasPrefix("/sites/"), SiteID.isValid(String(path.dropFirst(7))) { return path }
        let allowed = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._=&,")
        if path == "/queue" { return path }
        if path.hasPrefix("/queue?"), path.dropFirst(7).allSatisfy({ allowed.contains($0) }) { return path }
        return "/queue"
    }

    /// A form post must come from the dashboard's own pages: a browser says where a post comes
    /// from (`Origin`, `Sec-Fetch-Site`), and a page of another origin (another port on the
    /// same host included, which SameSite does not stop) is refused.
    func sameOrigin(_ request: Request) throws(APIError) {
        let refused = APIError(status: .forbidden, code: "forbidden", message: "this form was not posted from the dashboard")
        if let site = request.headers.first(where: { $0.name.canonicalName == "sec-fetch-site" })?.value,
            site != "same-origin" && site != "none"
        {
            throw refused
        }
        if let origin = request.headers.first(where: { $0.name.canonicalName == "origin" })?.value {
            let host = request.headers.first(where: { $0.name.canonicalName == "host" })?.value ?? request.head.authority ?? ""
            guard let schemeEnd = origin.range(of: "://"), origin[schemeEnd.upperBound...] == host[...] else { throw refused }
        }
    }

    /// A page's errors as an HTML page with the same status (a person reads these).
    func htmlErrors(_ build: () async throws -> Response) async -> Response {
        do {
            return try await build()
        } catch let error as APIError {
            var response = html(page(title: "Error", refresh: false, body: "<p class=error>\(escape(error.message))</p>"), status: error.status)
            for field in error.headers { response.headers.append(field) }
            return response
        } catch {
            return html(page(title: "Error", refresh: false, body: "<p class=error>\(escape("\(error)"))</p>"), status: .internalServerError)
        }
    }

    func login(token: String, _ context: FleetRequestContext) -> Response {
        let address = context.clientAddress
        if let seconds = guessingWait(from: address) {
            var response = html(
                page(title: "Not signed in", refresh: false, body: "<p class=error>Too many unknown tokens from this address; try again in \(seconds) s.</p>"),
                status: .tooManyRequests)
            response.headers[.retryAfter] = "\(seconds)"
            return response
        }
        guard principals.principal(forToken: token) != nil else {
            unknownToken(from: address)
            var response = html(page(title: "Not signed in", refresh: false, body: "<p class=error>That token is not valid.</p>"), status: .unauthorized)
            for field in Self.challenge(error: "invalid_token") { response.headers.append(field) }
            return response
        }
        let id = sessions.open(token: token)
        let seconds = sessions.lifetime.components.seconds
        return Response(
            status: .seeOther,
            headers: [
                .location: "/", .setCookie: "\(Self.cookieName)=\(id); Path=/; Max-Age=\(seconds); HttpOnly; SameSite=Strict\(secure ? "; Secure" : "")",
            ])
    }

    func html(_ text: String, status: HTTPResponse.Status = .ok) -> Response {
        Response(
            status: status,
            headers: [
                .contentType: "text/html; charset=utf-8", .cacheControl: "no-store",
                .contentSecurityPolicy: "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
            ],
            body: ResponseBody(byteBuffer: ByteBuffer(string: text)))
    }

    // MARK: - Pages

    func fleetPage(query: Query, signedIn: Bool) throws(APIError) -> String {
        let now = Date()
        let summary = service.summary()
        let budget = service.thresholds.budget.secondsValue
        let mode = ConnectivityMode(rawValue: query["mode"] ?? "")
        // Sites by label: `selector` filters (Kubernetes' equality-based syntax), `group` names the
        // label whose values make one table each.
        let selector = try query.selector()
        let group = query["group"].flatMap { $0.isEmpty ? nil : $0 }
        if let group, let problem = SiteLabels.problem(key: group) { throw APIError.badRequest("group: \(problem)") }
        var views = service.views(mode: mode, liveness: nil, selector: selector)
        let sort = ["site", "mode", "deadline"].contains(query["sort"] ?? "") ? query["sort"]! : "deadline"
        let descending = query["order"] == "desc"
        views.sort { a, b in
            let ordered: Bool
            switch sort {
            case "site": ordered = a.site < b.site
            case "mode": ordered = a.mode.rawValue != b.mode.rawValue ? a.mode.rawValue < b.mode.rawValue : a.site < b.site
            default:
                // Nearest deadline first; sites without one (unknown) last.
                switch (a.deadline, b.deadline) {
                case let (x?, y?): ordered = x != y ? x < y : a.site < b.site
                case (nil, nil): ordered = a.site < b.site
                case (_?, nil): ordered = true
                case (nil, _?): ordered = false
                }
            }
            return ordered
        }
        if descending { views.reverse() }
        let shown = views.prefix(1000)

        var body = "<section class=cards>"
        body += card("sites", "\(summary.sites)", "fleet \(summary.fleetMode.rawValue)")
        for (m, n) in [
            (ConnectivityMode.connected, summary.modes.connected), (.semiConnected, summary.modes.semiConnected),
            (.disconnected, summary.modes.disconnected), (.unknown, summary.modes.unknown),
        ] {
            body += "<a class='card mode-\(m.rawValue)' href='/?mode=\(m.rawValue)'><b>\(n)</b><span>\(m.rawValue)</span></a>"
        }
        body += card("agents online", "\(summary.liveness.online)", "\(summary.liveness.stale) stale · \(summary.liveness.offline) offline")
        let queued = summary.queue.open
        body += card(
            "queue", "\(queued)",
            "\(summary.queue.queued) queued · \(summary.queue.blocked) blocked · \(summary.queue.failed) failed")
        body += "</section>"
        body += fleetHistorySection()

        // What the links keep of the current filter.
        var keep = mode.map { "&mode=\($0.rawValue)" } ?? ""
        if !selector.isEmpty { keep += "&selector=\(Query.encode(selector.description))" }
        if let group { keep += "&group=\(Query.encode(group))" }
        func header(_ key: String, _ label: String) -> String {
            let order = sort == key && !descending ? "desc" : "asc"
            let arrow = sort == key ? (descending ? " ▾" : " ▴") : ""
            return "<th><a href='/?sort=\(key)&order=\(order)\(escape(keep))'>\(escape(label))\(arrow)</a></th>"
        }
        body += "<form class=filter method=get action='/'>"
        if let mode { body += "<input type=hidden name=mode value='\(mode.rawValue)'>" }
        body += "<label>Selector <input name=selector size=32 placeholder='region=north,tier!=lab' value='\(escape(selector.description))'></label> "
        body += "<label>Group by label <input name=group size=12 placeholder='region' value='\(escape(group ?? ""))'></label> "
        body += "<button>Show</button></form>"
        let filtered = mode != nil || !selector.isEmpty
        body += "<h2>Sites\(mode.map { " · \(escape($0.rawValue))" } ?? "")\(selector.isEmpty ? "" : " · <code>\(escape(selector.description))</code>")"
        body += "\(filtered ? " <a class=small href='/'>all</a>" : "")</h2>"
        let tableHead = "<table id=sites><thead><tr>\(header("site", "Site"))\(header("mode", "Mode"))<th>Liveness</th>"
            + "\(header("deadline", "Deadline"))<th>Time left</th><th>Queue</th><th>Checks</th><th>Labels</th></tr></thead><tbody>"
        // One table, or one per value of the grouping label (sites without it last).
        var groups: [(title: String?, views: [SiteView])] = [(nil, Array(shown))]
        if let group {
            var byValue: [String: [SiteView]] = [:]
            for view in shown { byValue[view.labels?[group] ?? "", default: []].append(view) }
            groups = byValue.keys.sorted { a, b in a.isEmpty != b.isEmpty ? !a.isEmpty : a < b }.map { value in
                (value.isEmpty ? "no \(group)" : "\(group)=\(value)", byValue[value]!)
            }
        }
        for (title, members) in groups {
        if let title {
            var modes: [ConnectivityMode: Int] = [:]
            for view in members { modes[view.mode, default: 0] += 1 }
            let counts = ConnectivityMode.allCases.compactMap { m in modes[m].map { "\($0) \(m.rawValue)" } }.joined(separator: " · ")
            body += "<h3 class=group>\(escape(title)) <span class=small>\(members.count) sites: \(escape(counts))</span></h3>"
        }
        body += tableHead
        for view in members {
            body += "<tr data-site='\(escape(view.site.rawValue))' data-mode='\(view.mode.rawValue)'>"
            body += "<td><a href='/sites/\(escape(view.site.rawValue))'>\(escape(view.site.rawValue))</a></td>"
            body += "<td>\(modeBadge(view.mode, projected: view.projected))</td>"
            body += "<td class='live-\(view.liveness.rawValue)'>\(view.liveness.rawValue)</td>"
            body += "<td>\(view.deadline.map { escape(timestamp($0)) } ?? "—")\(view.deadlineReason.map { " <span class=small>(\($0.rawValue))</span>" } ?? "")</td>"
            body += "<td>\(timeLeft(view, budget: budget, now: now))</td>"
            let depth = view.queue.queued + view.queue.blocked + view.queue.dispatching
            body += "<td><a href='/queue?site=\(escape(view.site.rawValue))'>\(depth)</a>"
            if view.queue.blocked > 0 { body += " <span class='tag blocked'>\(view.queue.blocked) blocked</span>" }
            if view.queue.failed > 0 { body += " <span class='tag failed'>\(view.queue.failed) failed</span>" }
            body += "</td><td>\(checks(view.checks))</td>"
            let labels = (view.labels ?? [:]).sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
            body += "<td class=small>\(labels.map(escape).joined(separator: "<br>"))</td></tr>"
        }
        body += "</tbody></table>"
        }
        if views.count > shown.count {
            body += "<p class=small>Showing \(shown.count) of \(views.count) sites; filter by mode to see the others.</p>"
        }
        if views.isEmpty { body += "<p class=small>No site has reported yet.</p>" }
        return page(title: "Fleet", signedIn: signedIn, body: body)
    }

    func sitePage(_ site: SiteID, window: String?, signedIn: Bool) throws(APIError) -> String? {
        let length = try Query.window(window, default: .seconds(30 * 86_400))
        guard let detail = service.detail(of: site), let capabilities = service.capabilities(of: site) else {
            // A site that no longer reports (forgotten, or from before this database's sites) keeps its history.
            guard let history = try? service.siteHistory(site, length: length), !history.spans.isEmpty else { return nil }
            let body = "<h2>\(escape(site.rawValue)) <span class=small>does not report to this aggregator now</span></h2>"
                + siteHistorySection(site, length: length, asked: window ?? "30d")
            return page(title: site.rawValue, signedIn: signedIn, body: body)
        }
        let view = detail.view
        let now = Date()
        var body = "<h2>\(escape(site.rawValue)) \(modeBadge(view.mode, projected: view.projected))</h2><table class=facts>"
        func fact(_ name: String, _ value: String?) {
            body += "<tr><th>\(escape(name))</th><td>\(value ?? "—")</td></tr>"
        }
        fact("Time left", timeLeft(view, budget: service.thresholds.budget.secondsValue, now: now))
        if let labels = view.labels, !labels.isEmpty {
            fact("Labels", labels.sorted { $0.key < $1.key }.map { "<a href='/?selector=\(escape(Query.encode("\($0.key)=\($0.value)")))'><code>\(escape($0.key))=\(escape($0.value))</code></a>" }.joined(separator: " "))
        }
        fact("Deadline", view.deadline.map { escape(timestamp($0)) + (view.deadlineReason.map { " (\($0.rawValue))" } ?? "") })
        fact("Mode since", view.modeSince.map { escape(timestamp($0)) })
        fact("Last Azure contact", view.lastAzureContactAt.map { escape(timestamp($0)) })
        fact("Agent", "<span class='live-\(view.liveness.rawValue)'>\(view.liveness.rawValue)</span>"
            + (detail.agent.map { " · \(escape($0.version)) on \(escape($0.host))" } ?? ""))
        fact("Last heartbeat", view.lastHeartbeatAt.map { escape(timestamp($0)) })
        fact("Certificates expire", detail.certificateExpiry.map { escape(timestamp($0)) + (detail.certificateSource.map { " (\(escape($0)))" } ?? "") })
        if let cluster = detail.cluster {
            fact("Cluster", [cluster.name, cluster.resourceGroup.map { "resource group \($0)" }, cluster.kubernetesVersion.map { "Kubernetes \($0)" }]
                .compactMap { $0.map(escape) }.joined(separator: " · "))
        }
        body += "</table>"
        body += siteHistorySection(site, length: length, asked: window ?? "30d")

        body += "<h3>What works here now</h3><table id=capabilities><thead><tr><th>Operation</th><th>Now</th><th>Why</th><th>Workaround</th></tr></thead><tbody>"
        for kind in capabilities.kinds {
            body += "<tr><td><code>\(kind.kind.rawValue)</code></td>"
            body += kind.available ? "<td class=yes>works</td>" : "<td class=no>\(kind.queueable ? "queue it" : "not now")</td>"
            body += "<td>\(escape(kind.reason))</td><td>\(kind.workaround.map(escape) ?? "")</td></tr>"
        }
        body += "</tbody></table>"

        body += "<h3>Checks</h3>"
        if detail.checks.isEmpty {
            body += "<p class=small>No checks reported.</p>"
        } else {
            body += "<table><thead><tr><th>Check</th><th>State</th><th>Observed</th><th>Output</th></tr></thead><tbody>"
            for check in detail.checks {
                body += "<tr><td>\(escape(check.name))</td><td class='check-\(check.state.rawValue)'>\(check.state.rawValue)</td>"
                body += "<td>\(escape(timestamp(check.observedAt)))</td><td><code>\(escape(String(check.output.prefix(300))))</code></td></tr>"
            }
            body += "</tbody></table>"
        }

        body += "<h3>Operations <a class=small href='/queue?site=\(escape(site.rawValue))'>in the queue view</a></h3>"
        let operations = (try? service.operations(OperationFilter(site: site), cursor: nil, limit: 50, newestFirst: true).operations) ?? []
        body += operationsTable(operations, signedIn: signedIn, back: "/sites/\(site.rawValue)")
        return page(title: site.rawValue, signedIn: signedIn, body: body)
    }

    func queuePage(query: Query, signedIn: Bool) throws(APIError) -> String {
        var filter = OperationFilter(site: try query.site(), kind: try query.kind(), states: try query.states())
        let selector = try query.selector()
        if !selector.isEmpty { filter.sites = service.sites(matching: selector) }
        let cursor = query["cursor"].flatMap { Int64($0) }
        let page: OperationPage
        do {
            page = try service.operations(filter, cursor: cursor, limit: 100, newestFirst: false)
        } catch {
            throw APIError(status: .serviceUnavailable, code: "unavailable", message: "the queue cannot be read: \(error)")
        }
        var body = "<h2>Queue</h2><form class=filters method=get action='/queue'>"
        body += "<label>Site <input name=site value='\(escape(query["site"] ?? ""))' size=16></label> "
        body += "<label>State <select name=state><option value=''>any</option>"
        for state in OperationState.allCases {
            body += "<option\(query["state"] == state.rawValue ? " selected" : "")>\(state.rawValue)</option>"
        }
        body += "</select></label> <label>Kind <select name=kind><option value=''>any</option>"
        for entry in OperationCatalog.entries where entry.queueability == .queueable {
            body += "<option\(query["kind"] == entry.kind.rawValue ? " selected" : "")>\(entry.kind.rawValue)</option>"
        }
        body += "</select></label> <button>Filter</button></form>"
        var back = "/queue"
        if let q = query.values.filter({ $0.key != "cursor" && !$0.value.isEmpty }).sorted(by: { $0.key < $1.key }).map({ "\($0.key)=\($0.value)" })
            .joined(separator: "&") as String?, !q.isEmpty
        {
            back += "?" + q
        }
        body += operationsTable(page.operations, signedIn: signedIn, back: back)
        if let next = page.nextCursor {
            body += "<p><a href='\(escape(back + (back.contains("?") ? "&" : "?") + "cursor=\(next)"))'>Next page →</a></p>"
        }
        return self.page(title: "Queue", signedIn: signedIn, body: body)
    }

    // MARK: - Rollouts

    func rolloutsPage(signedIn: Bool) throws(APIError) -> String {
        let rollouts: [Rollout]
        do { rollouts = try service.rollouts(limit: 200) } catch { throw APIError(error) }
        var body = "<h2>Rollouts</h2>"
        if rollouts.isEmpty {
            body += "<p class=small>No rollout yet: <code>edgefleet rollout create KIND --selector region=north --canary 2 --batch 10%</code>.</p>"
            return page(title: "Rollouts", signedIn: signedIn, body: body)
        }
        body += "<table id=rollouts><thead><tr><th>Rollout</th><th>Kind</th><th>Selector</th><th>State</th><th>Wave</th><th>Progress</th>"
        body += "<th>Created</th></tr></thead><tbody>"
        for r in rollouts {
            body += "<tr data-rollout='\(escape(r.id))' data-state='\(r.state.rawValue)'><td><a href='/rollouts/\(escape(r.id))'>\(escape(r.id))</a></td>"
            body += "<td><code>\(escape(r.kind.rawValue))</code></td><td><code>\(escape(r.selector))</code></td>"
            body += "<td class='rollout-\(r.state.rawValue)'>\(r.state.rawValue)</td><td>\(r.wave + 1) of \(r.waves)</td>"
            body += "<td>\(rolloutProgress(r.counts))</td><td>\(escape(timestamp(r.createdAt))) by \(escape(r.createdBy))</td></tr>"
        }
        body += "</tbody></table>"
        return page(title: "Rollouts", signedIn: signedIn, body: body)
    }

    func rolloutProgress(_ c: RolloutCounts) -> String {
        var parts = ["\(c.succeeded) succeeded"]
        if c.failed > 0 { parts.append("<span class='tag failed'>\(c.failed) failed</span>") }
        if c.queued + c.dispatching > 0 { parts.append("\(c.queued + c.dispatching) running or waiting") }
        if c.pending > 0 { parts.append("\(c.pending) in later waves") }
        if c.other > 0 { parts.append("\(c.other) cancelled or expired") }
        if c.skipped > 0 { parts.append("\(c.skipped) left out") }
        return parts.joined(separator: " · ")
    }

    func rolloutPage(_ id: String, signedIn: Bool) throws(APIError) -> String? {
        let found: Rollout?
        do { found = try service.rollout(id: id) } catch { throw APIError(error) }
        guard let r = found else { return nil }
        var body = "<h2>Rollout \(escape(r.id)) <span class='rollout-\(r.state.rawValue)'>\(r.state.rawValue)</span></h2><table class=facts>"
        func fact(_ name: String, _ value: String) { body += "<tr><th>\(escape(name))</th><td>\(value)</td></tr>" }
        fact("Operation", "<code>\(escape(r.kind.rawValue))</code> " + r.params.sorted { $0.key < $1.key }.map { "<code>\(escape($0.key))=\(escape($0.value))</code>" }.joined(separator: " "))
        fact("Sites", "<a href='/?selector=\(escape(Query.encode(r.selector)))'><code>\(escape(r.selector))</code></a>: \(r.sites.count) in \(r.waves) waves")
        fact("Wave", "\(r.wave + 1) of \(r.waves)\(r.canary > 0 ? " (the first: a canary of \(r.canary))" : "")")
        fact("Progress", rolloutProgress(r.counts))
        if let reason = r.reason { fact("Why", escape(reason)) }
        fact("Settings", "batch \(escape(r.batch.description)), pauses past \(escape(r.maxFailures.description)) failures, waits at most \(escape(DurationFormat.format(.seconds(r.waitS)))) on a site without its link")
        fact("Created", "\(escape(timestamp(r.createdAt))) by \(escape(r.createdBy))")
        body += "</table>"
        if !r.skipped.isEmpty {
            body += "<h3>Left out</h3><ul>" + r.skipped.map { "<li><a href='/sites/\(escape($0.site.rawValue))'>\(escape($0.site.rawValue))</a>: \(escape($0.reason))</li>" }.joined() + "</ul>"
        }
        for wave in 0..<r.waves {
            let members = r.sites.filter { $0.wave == wave }
            let title = wave == 0 && r.canary > 0 ? "Wave 1 (canary)" : "Wave \(wave + 1)"
            body += "<h3>\(title)\(wave > r.wave ? " <span class=small>not started</span>" : "")</h3>"
            body += "<table class=wave><thead><tr><th>Site</th><th>Operation</th><th>State</th></tr></thead><tbody>"
            for site in members {
                let state = site.skipped.map { "left out: \(escape($0))" } ?? site.state.map { "<span class='state-\($0.rawValue)'>\($0.rawValue)</span>" } ?? "pending"
                let operation = site.operationID.map { "<a href='/queue?site=\(escape(site.site.rawValue))'>\(escape($0))</a>" } ?? "—"
                body += "<tr data-site='\(escape(site.site.rawValue))'><td><a href='/sites/\(escape(site.site.rawValue))'>\(escape(site.site.rawValue))</a></td><td>\(operation)</td><td>\(state)</td></tr>"
            }
            body += "</tbody></table>"
        }
        return page(title: "Rollout \(r.id)", signedIn: signedIn, body: body)
    }

    func operationsTable(_ operations: [DeferredOperation], signedIn: Bool, back: String) -> String {
        if operations.isEmpty { return "<p class=small>No operations.</p>" }
        var body = "<table id=operations><thead><tr><th>Operation</th><th>Site</th><th>Kind</th><th>State</th><th>Attempts</th>"
        body += "<th>Created</th><th>Last error</th>\(signedIn ? "<th></th>" : "")</tr></thead><tbody>"
        for operation in operations {
            body += "<tr data-operation='\(escape(operation.id))' data-state='\(operation.state.rawValue)'>"
            body += "<td><details><summary><code>\(escape(operation.id))</code></summary><ul class=history>"
            for entry in operation.history {
                body += "<li>\(escape(timestamp(entry.at))) \(entry.from.map { "\($0.rawValue) → " } ?? "")<b>\(entry.to.rawValue)</b>: \(escape(entry.note))</li>"
            }
            if !operation.params.isEmpty {
                body += "<li>params: <code>\(escape(operation.params.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")))</code></li>"
            }
            body += "</ul></details></td>"
            body += "<td><a href='/sites/\(escape(operation.site.rawValue))'>\(escape(operation.site.rawValue))</a></td>"
            body += "<td><code>\(operation.kind.rawValue)</code></td><td><span class='tag \(operation.state.rawValue)'>\(operation.state.rawValue)</span></td>"
            body += "<td>\(operation.attempts)/\(operation.maxAttempts)</td><td>\(escape(timestamp(operation.createdAt)))<br><span class=small>by \(escape(operation.createdBy))</span></td>"
            body += "<td class=small>\(escape(String((operation.lastError ?? "").prefix(120))))</td>"
            if signedIn {
                body += "<td class=actions>"
                var actions: [OperatorAction] = []
                if operation.state == .queued || operation.state == .blocked { actions.append(.cancel) }
                if operation.state == .failed { actions.append(.retry) }
                if operation.state == .blocked { actions.append(.release) }
                for action in actions {
                    body += "<form method=post action='/ui/operations/\(escape(operation.id))/\(action.rawValue)'>"
                    body += "<input type=hidden name=back value='\(escape(back))'><button class='\(action.rawValue)'>\(action.rawValue)</button></form>"
                }
                body += "</td>"
            }
            body += "</tr>"
        }
        return body + "</tbody></table>"
    }

    // MARK: - History

    /// A site's timeline over the window and what it adds up to.
    func siteHistorySection(_ site: SiteID, length: Duration, asked: String) -> String {
        var body = "<h3>History <span class=small>"
        body += ["1d", "7d", "30d", "90d", "365d"].map { w in
            w == asked ? "<b>\(w)</b>" : "<a href='/sites/\(escape(site.rawValue))?window=\(w)'>\(w)</a>"
        }.joined(separator: " · ")
        body += "</span></h3>"
        let history: SiteHistory
        do {
            history = try service.siteHistory(site, length: length)
        } catch {
            return body + "<p class=error>\(escape("\(error)"))</p>"
        }
        body += Charts.definitions + Charts.legend(unrecorded: history.unrecordedS > 0) + Charts.timeline(history)
        var parts = ConnectivityMode.allCases.compactMap { mode -> String? in
            let seconds = history.modes[mode.rawValue] ?? 0
            return seconds > 0 ? "\(mode.rawValue) \(DurationFormat.human(seconds: seconds))" : nil
        }
        parts.append("\(history.outages) outage\(history.outages == 1 ? "" : "s")" + (history.outagesPastDeadline > 0 ? " (\(history.outagesPastDeadline) past the deadline)" : ""))
        if let longest = history.longestWithoutAzure {
            parts.append("longest without Azure \(DurationFormat.human(seconds: longest.seconds))" + (longest.to == nil ? " (still going)" : ""))
        }
        if let peak = history.maxBudgetUsed {
            parts.append("most budget used \(Int((peak.share * 100).rounded()))% at \(timestamp(peak.at))")
        }
        return body + "<p id=history-facts>\(escape(parts.joined(separator: " · ")))</p>"
    }

    /// The fleet over the last 30 days: sites per mode, and the sites that used most of their budget.
    func fleetHistorySection() -> String {
        var body = "<h3>The last 30 days</h3>"
        let history: FleetHistory
        do {
            history = try fleetHistory.value { try service.fleetHistory(length: .seconds(30 * 86_400), top: 10, buckets: 60) }
        } catch {
            return body + "<p class=error>\(escape("\(error)"))</p>"
        }
        body += Charts.definitions + Charts.legend() + Charts.fleetChart(history)
        let share = ConnectivityMode.allCases.map { "\($0.rawValue) \(String(format: "%.1f", (history.modeShare[$0.rawValue] ?? 0) * 100))%" }
        body += "<p class=small id=mode-share>Share of site-hours: \(share.joined(separator: " · "))</p>"
        body += "<h3>Most of their budget used</h3>"
        if history.ranking.isEmpty { return body + "<p class=small>No site was without Azure in these 30 days.</p>" }
        body += "<table id=budget-ranking><thead><tr><th>Site</th><th>Budget used</th><th></th><th>Without Azure</th><th>At</th></tr></thead><tbody>"
        for peak in history.ranking {
            let name = peak.site?.rawValue ?? "-"
            let percent = Int((peak.share * 100).rounded())
            let level = peak.share >= 1 ? "expired" : peak.share >= 0.75 ? "critical" : "warning"
            body += "<tr><td><a href='/sites/\(escape(name))?window=30d'>\(escape(name))</a></td><td>\(percent)%</td>"
            body += "<td><div class=bar><i class='alert-\(level)' style='width:\(min(100, percent))%'></i></div></td>"
            body += "<td>\(escape(DurationFormat.human(seconds: peak.usedS)))</td><td>\(escape(timestamp(peak.at)))</td></tr>"
        }
        return body + "</tbody></table>"
    }

    // MARK: - Pieces

    func page(title: String, signedIn: Bool = false, refresh: Bool = true, body: String) -> String {
        """
        <!doctype html><html lang=en><head><meta charset=utf-8><title>\(escape(title)) · EdgeFleet</title>
        <meta name=viewport content='width=device-width, initial-scale=1'>\(refresh ? "<meta http-equiv=refresh content=10>" : "")
        <style>\(Self.style)</style></head><body>
        <header><h1><a href='/'>EdgeFleet</a></h1><nav><a href='/'>Fleet</a><a href='/queue'>Queue</a><a href='/rollouts'>Rollouts</a></nav>
        <span class=small>\(replicaLine)\(escape(timestamp(Date()))) · \(signedIn ? "signed in <form method=post action='/ui/logout' class=inline><button>sign out</button></form>" : "read only")</span></header>
        <main>\(body)</main></body></html>
        """
    }

    /// Replicas on PostgreSQL: which replica serves this page and its role (nothing for a sole aggregator).
    var replicaLine: String {
        let role = service.role
        guard role.replicated else { return "" }
        return "replica \(escape(role.replica)) <span class='role role-\(escape(role.role))'>\(escape(role.role))</span> epoch \(role.epoch) · "
    }

    func card(_ label: String, _ value: String, _ detail: String) -> String {
        "<div class=card><b>\(escape(value))</b><span>\(escape(label))</span><span class=small>\(escape(detail))</span></div>"
    }

    func modeBadge(_ mode: ConnectivityMode, projected: Bool) -> String {
        "<span class='mode mode-\(mode.rawValue)'>\(mode.rawValue)</span>\(projected ? " <span class=small title='the agent is silent: projected from its last report'>projected</span>" : "")"
    }

    func timeLeft(_ view: SiteView, budget: Double, now: Date) -> String {
        guard let remaining = view.remainingS ?? view.deadline.map({ $0.timeIntervalSince(now) }) else { return "—" }
        if view.mode == .disconnected || remaining <= 0 {
            return "<div class=bar><i class=alert-expired style='width:100%'></i></div><span class=small>passed \(escape(DurationFormat.human(seconds: -remaining))) ago</span>"
        }
        let fraction = max(0, min(1, remaining / max(budget, 1)))
        let label = view.mode == .connected ? "connected" : DurationFormat.human(seconds: remaining)
        return "<div class=bar><i class='alert-\(view.alert.rawValue)' style='width:\(Int((fraction * 100).rounded()))%'></i></div><span class=small>\(escape(label))</span>"
    }

    func checks(_ counts: CheckCounts) -> String {
        var parts: [String] = []
        if counts.fail > 0 { parts.append("<span class=check-fail>\(counts.fail) fail</span>") }
        if counts.warn > 0 { parts.append("<span class=check-warn>\(counts.warn) warn</span>") }
        if counts.pass > 0 { parts.append("<span class=check-pass>\(counts.pass) pass</span>") }
        if counts.unknown > 0 { parts.append("<span class=small>\(counts.unknown) unknown</span>") }
        return parts.isEmpty ? "—" : parts.joined(separator: " ")
    }

    func timestamp(_ date: Date) -> String { RFC3339.format(date) }

    static let style = """
        body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d2330;background:#f5f6f8}
        header{display:flex;gap:1.5em;align-items:center;background:#1d2330;color:#fff;padding:.5em 1.5em}
        header h1{font-size:1.2em;margin:0}header a{color:#fff;text-decoration:none}nav a{margin-right:1em}
        main{padding:1em 1.5em}h2{margin:.8em 0 .4em}a{color:#1f5fbf}
        .cards{display:flex;flex-wrap:wrap;gap:.8em}.card{background:#fff;border-radius:6px;padding:.6em 1em;min-width:8em;
        display:flex;flex-direction:column;text-decoration:none;color:inherit;border-left:5px solid #aab}.card b{font-size:1.8em}
        table{border-collapse:collapse;background:#fff;width:100%;margin-bottom:1em}th,td{text-align:left;padding:.35em .6em;border-bottom:1px solid #e3e5ea;vertical-align:top}
        th a{color:inherit}.facts{width:auto}.small{font-size:.85em;color:#667}
        .mode{border-radius:3px;padding:.1em .45em;font-weight:600;color:#fff}
        .mode-connected{background:#1e8e3e;border-left-color:#1e8e3e}.mode-semi-connected{background:#d98c00;border-left-color:#d98c00}
        .mode-disconnected{background:#c5221f;border-left-color:#c5221f}.mode-unknown{background:#80868b;border-left-color:#80868b}
        .card.mode-connected,.card.mode-semi-connected,.card.mode-disconnected,.card.mode-unknown{background:#fff;color:inherit}
        .bar{background:#e3e5ea;width:10em;height:.6em;border-radius:3px;overflow:hidden}.bar i{display:block;height:100%;background:#1e8e3e}
        .bar i.alert-warning{background:#d98c00}.bar i.alert-critical,.bar i.alert-expired{background:#c5221f}
        .live-online{color:#1e8e3e}.live-stale{color:#d98c00}.live-offline{color:#c5221f}
        .check-pass{color:#1e8e3e}.check-warn{color:#d98c00}.check-fail{color:#c5221f;font-weight:600}
        .yes{color:#1e8e3e;font-weight:600}.no{color:#c5221f;font-weight:600}
        .tag{border-radius:3px;padding:0 .4em;background:#e3e5ea}.tag.blocked,.tag.failed{background:#fbe0df;color:#a50e0e}
        .tag.succeeded{background:#dcf3e2}.tag.dispatching{background:#fff0c2}
        .actions form,.inline{display:inline}button{cursor:pointer}.history{margin:.3em 0;padding-left:1.2em}
        .filters{margin-bottom:.8em}.error{color:#c5221f}
        .chart{width:100%;height:auto;background:#fff;margin-bottom:.6em}.chart text{font:12px system-ui,sans-serif;fill:#1d2330}
        .chart text.muted{fill:#556}.legend .swatch{margin-right:1.2em;white-space:nowrap}.legend svg{vertical-align:middle}
        """
}

/// HTML text escaping for element content and single- or double-quoted attributes.
func escape(_ text: String) -> String {
    var out = ""
    out.reserveCapacity(text.utf8.count)
    for c in text.unicodeScalars {
        switch c {
        case "&": out += "&amp;"
        case "<": out += "&lt;"
        case ">": out += "&gt;"
        case "\"": out += "&quot;"
        case "'": out += "&#39;"
        default: out.unicodeScalars.append(c)
        }
    }
    return out
}
