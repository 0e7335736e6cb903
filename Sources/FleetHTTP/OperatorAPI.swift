import Dispatch
import FleetCore
import FleetQueue
public import Hummingbird
import NIOCore
import Principals
public import Prometheus

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// The aggregator's HTTP surface (docs/contract.md, "Operator surfaces"; `docs/openapi.yaml`):
/// the JSON API under `/v1`, `/metrics`, `/healthz` and the dashboard.
///
/// Callers are principals (`--principals FILE`): a name, a role (viewer, operator, admin) and
/// a bearer token of which only the SHA-256 is kept. Every change needs a principal whose role
/// allows it; reads need one too unless `publicReads`. `/healthz` is always open. A missing or
/// unknown token is answered 401 with `WWW-Authenticate: Bearer`, a known one without the
/// right 403 (RFC 6750); an address that keeps presenting unknown tokens waits (429). Every
/// change is recorded in the audit log under the principal's name. The dashboard also takes
/// the token from a session cookie set by opening `/?token=...` (a random id; SameSite=Strict,
/// HttpOnly, Secure under TLS; the token stays on the server), so its buttons work without
/// JavaScript and a page from another site cannot use them.
public struct OperatorAPI: Sendable {
    let service: any OperatorBackend
    let principals: PrincipalStore
    let publicReads: Bool
    let registry: PrometheusCollectorRegistry
    let sessions: DashboardSessions
    let connections: ConnectionGuard
    let failures: FailedAttempts
    let authFailures: Prometheus.Counter
    /// Served over TLS: the dashboard's cookie is `Secure`.
    let secure: Bool
    /// Each metric's `# HELP` text (swift-metrics carries none).
    let help: [String: String]
    /// The fleet page's chart and ranking, worked out at most once a minute.
    let fleetHistory = FleetHistoryCache()

    public init(
        service: any OperatorBackend, principals: PrincipalStore, publicReads: Bool, registry: PrometheusCollectorRegistry, help: [String: String] = [:],
        sessionLifetime: Duration = .seconds(12 * 3600), sessionIdle: Duration = .seconds(3600), headerTimeout: Duration = .seconds(10),
        maxConnections: Int? = nil, secure: Bool = false, failureLimit: Int = 10, failureWindow: Duration = .seconds(60)
    ) {
        self.sessions = DashboardSessions(lifetime: sessionLifetime, idle: sessionIdle)
        self.connections = ConnectionGuard(
            capacity: maxConnections ?? ConnectionGuard.defaultCapacity(), headTimeout: .milliseconds(headerTimeout.milliseconds))
        self.service = service
        self.principals = principals
        self.publicReads = publicReads
        self.registry = registry
        self.help = help.merging(["edgefleet_api_auth_failures_total": "API requests refused for a missing, unknown or malformed token (401) or a wait after too many (429)."]) { a, _ in a }
        self.secure = secure
        self.failures = FailedAttempts(limit: failureLimit, window: failureWindow)
        self.authFailures = registry.makeCounter(name: "edgefleet_api_auth_failures_total")
    }

    /// What a request needs: `read` (any principal, or none when reads are public), `operate`
    /// (operator or admin), `administer` (admin).
    enum Access { case read, operate, administer }

    /// Who is asking: the principal the token names (nil: an anonymous public read), from which
    /// address, and the name a client gave for whom it acts (`X-EdgeFleet-Operator`, or the
    /// body's `createdBy`/`by`), which is recorded only as "on behalf of".
    struct Caller: Sendable {
        var principal: Principal?
        var address: String
        var onBehalfOf: String?

        /// A name the client gave in a body, when no header gave one.
        mutating func behalf(_ name: String?) {
            guard onBehalfOf == nil, let name else { return }
            let clean = OperatorAPI.printable(name, limit: 64)
            if !clean.isEmpty { onBehalfOf = clean }
        }

        /// For histories: the principal's name, and for whom it acted when a client said so.
        var who: String {
            let name = principal?.name ?? "anonymous"
            guard let onBehalfOf, onBehalfOf != name else { return name }
            return "\(name) on behalf of \(onBehalfOf)"
        }
    }

    /// The dashboard's session cookie: a random id, never the token.
    static let cookieName = "edgefleet_session"

    /// Who asks, and whether they may: throws 429 (an address that kept failing), 401 (no token
    /// where one is needed, an unknown or malformed one), 403 (a principal without the right,
    /// or no principals configured at all). `cookie`: the dashboard's routes also accept the
    /// session cookie.
    @discardableResult
    func authorize(_ request: Request, _ context: FleetRequestContext, _ access: Access, cookie: Bool = false) throws(APIError) -> Caller {
        let caller = try identify(request, context, access, cookie: cookie)
        try permit(caller, access)
        return caller
    }

    /// Who asks (401, 429 as `authorize`), without looking at the role.
    func identify(_ request: Request, _ context: FleetRequestContext, _ access: Access, cookie: Bool = false) throws(APIError) -> Caller {
        let address = context.clientAddress
        let behalf = Self.operatorName(request)
        if let seconds = guessingWait(from: address) {
            throw APIError(
                status: .tooManyRequests, code: "too-many-failures",
                message: "too many requests with unknown tokens from \(address); try again in \(seconds) s", headers: [.retryAfter: "\(seconds)"])
        }
        var candidate: String?
        var fromCookie = false
        if let header = request.headers[.authorization] {
            guard header.lowercased().hasPrefix("bearer ") else {
                authFailures.increment()
                throw APIError(
                    status: .unauthorized, code: "unauthorized", message: "use 'Authorization: Bearer TOKEN'",
                    headers: Self.challenge(error: "invalid_request"))
            }
            candidate = String(header.dropFirst(7)).trimmed
        } else if cookie, let id = cookies(of: request)[Self.cookieName] {
            candidate = sessions.token(for: id) ?? ""  // an expired or unknown session is a wrong credential
            fromCookie = true
        }
        if !principals.isConfigured {
            // Nobody is known: a read is public or refused, a change refused, whatever token comes.
            if access == .read && publicReads { return Caller(principal: nil, address: address) }
            let what = access == .read ? "reads need a token and none is configured" : "changes are disabled"
            throw APIError(status: .forbidden, code: "forbidden", message: "\(what): the aggregator was started without --principals")
        }
        if let candidate {
            if let principal = principals.principal(forToken: candidate) {
                return Caller(principal: principal, address: address, onBehalfOf: behalf)
            }
            // An expired dashboard session still reads a public fleet (signed out).
            if fromCookie && access == .read && publicReads { return Caller(principal: nil, address: address) }
            if fromCookie { authFailures.increment() } else { unknownToken(from: address) }
            throw APIError(
                status: .unauthorized, code: "unauthorized",
                message: fromCookie ? "the dashboard session has ended; sign in again" : "the token is not valid",
                headers: Self.challenge(error: "invalid_token"))
        }
        if access == .read && publicReads { return Caller(principal: nil, address: address) }
        authFailures.increment()
        throw APIError(status: .unauthorized, code: "unauthorized", message: "a bearer token is required", headers: Self.challenge(error: nil))
    }

    /// Seconds an address that kept presenting unknown tokens must still wait (counted as a refusal), or nil.
    func guessingWait(from address: String) -> Int? {
        guard let wait = failures.wait(for: address) else { return nil }
        authFailures.increment()
        return max(1, Int(wait.components.seconds) + 1)
    }

    /// An unknown token from `address`: counted, and toward the address's wait.
    func unknownToken(from address: String) {
        failures.failed(address)
        authFailures.increment()
    }

    /// 403 unless the caller's role allows `access` (an anonymous caller only reads, where reads are public).
    func permit(_ caller: Caller, _ access: Access) throws(APIError) {
        guard let principal = caller.principal else {
            if access == .read && publicReads { return }
            throw APIError(status: .unauthorized, code: "unauthorized", message: "a bearer token is required", headers: Self.challenge(error: nil))
        }
        let needed: Role
        switch access {
        case .read: needed = .viewer
        case .operate: needed = .operator
        case .administer: needed = .admin
        }
        guard principal.role >= needed else {
            throw APIError(
                status: .forbidden, code: "forbidden",
                message: "\(principal.name) is \(Self.article(principal.role)) \(principal.role.rawValue); this needs the \(needed.rawValue) role",
                headers: Self.challenge(error: "insufficient_scope"))
        }
    }

    static func article(_ role: Role) -> String { role == .viewer ? "a" : "an" }

    /// RFC 6750's challenge, with the error code when there is one.
    static func challenge(error: String?) -> HTTPFields {
        [.wwwAuthenticate: #"Bearer realm="edgefleet""# + (error.map { #", error="\#($0)""# } ?? "")]
    }

    /// A change: authorized, done, and recorded in the audit log under the caller's name with
    /// its answer (a refusal of a known principal too). `body` returns the response and the
    /// outcome in a line, and may name the target (read from the request's body) and for whom
    /// the client acts (`by` in a body: only "on behalf of", never the principal).
    func change(
        _ request: Request, _ context: FleetRequestContext, _ access: Access, action: String, target: String?, cookie: Bool = false,
        _ body: (inout Caller, inout String?) async throws -> (Response, String?)
    ) async throws -> Response {
        var caller = try identify(request, context, access, cookie: cookie)
        var target = target
        let at = Date()
        func record(_ status: HTTPResponse.Status, _ detail: String?) {
            guard let principal = caller.principal else { return }
            let entry = AuditEntry(
                at: at, principal: principal.name, role: principal.role.rawValue, onBehalfOf: caller.onBehalfOf, address: caller.address,
                action: action, target: target, status: status.code, detail: detail.map { Self.printable($0, limit: 512) })
            do {
                try service.audit(entry)
            } catch {
                context.logger.error("cannot record a change in the audit log: \(error)", metadata: ["entry": "\(entry)"])
            }
        }
        do {
            try permit(caller, access)
        } catch {
            record(error.status, error.message)
            throw error
        }
        do {
            let (response, detail) = try await body(&caller, &target)
            record(response.status, detail)
            return response
        } catch let error as APIError {
            record(error.status, error.message)
            throw error
        }
    }

    /// The name a client gave for whom it acts (`X-EdgeFleet-Operator`; the CLI sends
    /// `user@host`), printable and at most 64 characters; nil without one.
    static func operatorName(_ request: Request) -> String? {
        guard let header = request.headers.first(where: { $0.name.canonicalName == "x-edgefleet-operator" })?.value else { return nil }
        let clean = printable(header, limit: 64)
        return clean.isEmpty ? nil : clean
    }

    /// `text` without control characters (C0, DEL, C1: a name ends up in histories that
    /// terminals print), at most `limit` characters, trimmed.
    static func printable(_ text: String, limit: Int) -> String {
        let kept = text.unicodeScalars.filter { !($0.value < 0x20 || (0x7F...0x9F).contains($0.value)) }
        return String(String.UnicodeScalarView(kept.prefix(limit))).trimmed
    }

    /// The router with every route.
    public func router() -> Router<FleetRequestContext> {
        let router = Router(context: FleetRequestContext.self)
        router.add(middleware: JSONErrorMiddleware())
        router.add(middleware: RestoringMiddleware(service: service))
        addAPI(to: router)
        addDashboard(to: router)
        return router
    }

    // MARK: - /v1

    func addAPI(to router: Router<FleetRequestContext>) {
        router.get("/healthz") { _, _ in
            // 503 while site records have failed to be written for longer than storeGrace (a full
            // disk, a lost database): a liveness probe or an operator sees it.
            // 503 `restoring` too while the fleet's state is read back after a start (not ready yet).
            let problem = service.storeProblem(now: nil)
            let restoring = service.restoring
            let role = service.role
            return JSONBody.response(
                HealthStatus(
                    status: restoring ? "restoring" : problem == nil ? "ok" : "unhealthy", version: EdgeFleetVersion.current,
                    broker: service.brokerConnected ? "connected" : "disconnected", sites: service.siteCount, store: problem ?? "ok",
                    replica: role.replicated ? role.replica : nil, role: role.replicated ? role.role : nil,
                    epoch: role.replicated ? role.epoch : nil),
                status: problem == nil && !restoring ? .ok : .serviceUnavailable)
        }

        router.get("/metrics") { request, context in
            try authorize(request, context, .read)
            let head = scrape()
            // `selector`: only the per-site lines of the sites it matches (one scrape job per region, say).
            let deadlines = service.siteDeadlines(selector: try Query(request, allowed: ["selector"]).selector())
            let rollouts = rolloutLines()
            // Per-site lines rendered here, not through the registry (one metric object per label
            // set made a scrape quadratic in the fleet: 270 s for 100,000 sites), and written in
            // slices: a client that went away fails the next write, which ends the work.
            return Response(
                status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                body: ResponseBody { writer in
                    try await writer.write(ByteBuffer(bytes: head))
                    try await writer.write(ByteBuffer(string: rollouts))
                    var start = 0
                    while start < deadlines.count {
                        try Task.checkCancellation()
                        let end = min(deadlines.count, start + 4_096)
                        try await writer.write(ByteBuffer(string: Self.deadlineLines(deadlines[start..<end], header: start == 0)))
                        start = end
                    }
                    try await writer.finish(nil)
                })
        }

        router.get("/v1/fleet") { request, context in
            try authorize(request, context, .read)
            _ = try Query(request, allowed: [])
            return JSONBody.response(service.summary())
        }

        router.get("/v1/sites") { request, context in
            try authorize(request, context, .read)
            let query = try Query(request, allowed: ["mode", "liveness", "limit", "cursor", "selector"])
            let limit = try query.limit()
            let views = service.views(mode: try query.mode(), liveness: try query.liveness(), selector: try query.selector())
            var page = views[...]
            if let cursor = query["cursor"] {
                guard SiteID.isValid(cursor) else { throw APIError.badRequest("cursor: not a cursor this API gave out") }
                page = page.drop { $0.site.rawValue <= cursor }
            }
            let sites = Array(page.prefix(limit))
            let next = page.count > limit ? sites.last?.site.rawValue : nil
            return JSONBody.response(SiteList(sites: sites, nextCursor: next, total: views.count))
        }

        router.get("/v1/sites/{site}") { request, context in
            try authorize(request, context, .read)
            _ = try Query(request, allowed: [])
            let site = try siteParameter(context)
            guard let detail = service.detail(of: site) else { throw APIError.notFound("no site \(site) has reported to this aggregator") }
            return JSONBody.response(detail)
        }

        router.get("/v1/sites/{site}/history") { request, context in
            try authorize(request, context, .read)
            let query = try Query(request, allowed: ["window"])
            let site = try siteParameter(context)
            let length = try query.window(default: .seconds(90 * 86_400))
            let history = try await offloaded { () throws(APIError) in
                do {
                    return try service.siteHistory(site, length: length)
                } catch let error as HistoryError {
                    throw APIError.badRequest("window: \(error)")
                } catch {
                    throw APIError(status: .serviceUnavailable, code: "unavailable", message: "the history cannot be read: \(error)")
                }
            }
            guard !history.spans.isEmpty || service.view(of: site) != nil else {
                throw APIError.notFound("no site \(site) has a history on this aggregator")
            }
            return JSONBody.response(history)
        }

        router.get("/v1/history") { request, context in
            try authorize(request, context, .read)
            let query = try Query(request, allowed: ["window", "top", "buckets"])
            let length = try query.window(default: .seconds(30 * 86_400))
            let top = try query.count("top", default: 20, range: 1...1000)
            let buckets = try query.count("buckets", default: 60, range: 1...1000)
            let history = try await offloaded { () throws(APIError) in
                do {
                    return try service.fleetHistory(length: length, top: top, buckets: buckets)
                } catch let error as HistoryError {
                    throw APIError.badRequest("window: \(error)")
                } catch {
                    throw APIError(status: .serviceUnavailable, code: "unavailable", message: "the history cannot be read: \(error)")
                }
            }
            return JSONBody.response(history)
        }

        router.get("/v1/events") { request, context in
            try authorize(request, context, .read)
            let query = try Query(request, allowed: ["site", "type", "since", "until", "cursor", "limit"])
            var events = EventQuery(limit: try query.limit() + 1)
            events.site = try query.site()
            if let text = query["type"] {
                for name in text.split(separator: ",") {
                    guard let type = FleetEventType(rawValue: String(name)) else {
                        throw APIError.badRequest("type: '\(String(name.prefix(64)))' is not an event type (\(FleetEventType.allCases.map(\.rawValue).joined(separator: ", ")))")
                    }
                    events.types.insert(type)
                }
            }
            let now = Date()
            events.since = try query.instant("since", now: now)
            events.until = try query.instant("until", now: now)
            if let text = query["cursor"] {
                guard let value = Int64(text), value >= 0 else { throw APIError.badRequest("cursor: not a cursor this API gave out") }
                events.after = value
            }
            let limit = events.limit - 1
            let asked = events
            let found = try await offloaded { () throws(APIError) in
                do {
                    return try service.storedEvents(asked)
                } catch {
                    throw APIError(status: .serviceUnavailable, code: "unavailable", message: "the events cannot be read: \(error)")
                }
            }
            let page = Array(found.prefix(limit))
            let next = found.count > limit ? page.last?.id.map(String.init) : nil
            return JSONBody.response(EventPage(events: page, nextCursor: next))
        }

        router.delete("/v1/sites/{site}") { request, context in
            try await change(request, context, .administer, action: "site.forget", target: context.parameters.get("site")) { caller, _ in
                let query = try Query(request, allowed: ["force"])
                let force: Bool
                switch query["force"] {
                case nil, "false": force = false
                case "true": force = true
                case let other?: throw APIError.badRequest("force: true or false, got '\(other)'")
                }
                let site = try siteParameter(context)
                let who = caller.who
                let forgotten = try await offloaded { () throws(APIError) in
                    do throws(QueueError) { return try service.forget(site: site.rawValue, force: force, by: who) } catch { throw APIError(error) }
                }
                return (JSONBody.response(forgotten), forgotten.cancelled.isEmpty ? "forgotten" : "forgotten; cancelled \(forgotten.cancelled.joined(separator: ", "))")
            }
        }

        router.get("/v1/sites/{site}/capabilities") { request, context in
            try authorize(request, context, .read)
            _ = try Query(request, allowed: [])
            let site = try siteParameter(context)
            guard let capabilities = service.capabilities(of: site) else {
                throw APIError.notFound("no site \(site) has reported to this aggregator")
            }
            return JSONBody.response(capabilities)
        }

        router.get("/v1/operations") { request, context in
            try authorize(request, context, .read)
            let query = try Query(request, allowed: ["site", "state", "kind", "limit", "cursor", "order", "selector"])
            var filter = OperationFilter(site: try query.site(), kind: try query.kind(), states: try query.states())
            let selector = try query.selector()
            if !selector.isEmpty { filter.sites = service.sites(matching: selector) }
            var cursor: Int64?
            if let text = query["cursor"] {
                guard let value = Int64(text), value >= 0 else { throw APIError.badRequest("cursor: not a cursor this API gave out") }
                cursor = value
            }
            let newest: Bool
            switch query["order"] {
            case nil, "oldest": newest = false
            case "newest": newest = true
            case let other?: throw APIError.badRequest("order: oldest or newest, got '\(other)'")
            }
            let limit = try query.limit()
            let page: OperationPage
            do {
                page =
                    newest
                    ? try service.operations(filter, cursor: cursor, limit: limit, newestFirst: true)
                    : try service.operations(filter, cursor: cursor, limit: limit, newestFirst: false)
            } catch {
                throw APIError(status: .serviceUnavailable, code: "unavailable", message: "the queue cannot be read: \(error)")
            }
            return JSONBody.response(OperationList(operations: page.operations, nextCursor: page.nextCursor.map(String.init)))
        }

        router.post("/v1/operations") { request, context in
            try await change(request, context, .operate, action: "operation.submit", target: nil) { caller, target in
                _ = try Query(request, allowed: [])
                let body = try await JSONBody.decode(SubmitOperationRequest.self, from: request)
                target = body.site
                caller.behalf(body.createdBy)
                let result = try submit(body, by: caller.who)
                let response = JSONBody.response(
                    SubmitOperationResponse(
                        operation: result.operation, existing: result.existing, reason: result.reason, deadline: result.deadline,
                        superseded: result.superseded),
                    status: result.existing ? .ok : .created)
                return (response, (result.existing ? "existing " : "queued ") + result.operation.id)
            }
        }

        router.post("/v1/operations/cancel") { request, context in
            try await change(request, context, .administer, action: "operations.cancel", target: nil) { caller, target in
                _ = try Query(request, allowed: [])
                let body = try await JSONBody.decode(BulkCancelRequest.self, from: request)
                target = body.site ?? body.kind ?? (body.all == true ? "all" : nil)
                caller.behalf(body.by)
                // One SQLite transaction per operation: on a thread of its own, not the cooperative pool.
                let who = caller.who
                let cancelled = try await offloaded { () throws(APIError) in try bulkCancel(body, by: who) }
                return (JSONBody.response(BulkCancelResponse(cancelled: cancelled.map(\.id))), "cancelled \(cancelled.count)")
            }
        }

        router.get("/v1/operations/{id}") { request, context in
            try authorize(request, context, .read)
            _ = try Query(request, allowed: [])
            let id = try context.parameters.require("id")
            let operation: DeferredOperation?
            do {
                operation = try service.operation(id: id)
            } catch {
                throw APIError(status: .serviceUnavailable, code: "unavailable", message: "the queue cannot be read: \(error)")
            }
            guard let operation else { throw APIError.notFound("no operation \(id)") }
            return JSONBody.response(operation)
        }

        router.get("/v1/rollouts") { request, context in
            try authorize(request, context, .read)
            let query = try Query(request, allowed: ["limit"])
            let limit = try query.limit()
            let list = try await offloaded { () throws(APIError) in
                do throws(QueueError) { return try service.rollouts(limit: limit) } catch { throw APIError(error) }
            }
            return JSONBody.response(RolloutList(rollouts: list))
        }

        router.post("/v1/rollouts") { request, context in
            try await change(request, context, .operate, action: "rollout.create", target: nil) { caller, target in
                _ = try Query(request, allowed: [])
                let body = try await JSONBody.decode(RolloutRequest.self, from: request)
                target = body.selector
                caller.behalf(body.createdBy)
                let who = caller.who
                // Selecting the sites and making the first wave: on a thread of its own.
                let (rollout, existing) = try await offloaded { () throws(APIError) in
                    do throws(QueueError) { return try service.createRollout(body, by: who) } catch { throw APIError(error) }
                }
                let response = JSONBody.response(RolloutCreated(rollout: rollout, existing: existing), status: existing ? .ok : .created)
                return (response, "\(existing ? "existing " : "")\(rollout.id): \(rollout.sites.count) sites in \(rollout.waves) waves")
            }
        }

        router.get("/v1/rollouts/{id}") { request, context in
            try authorize(request, context, .read)
            _ = try Query(request, allowed: [])
            let id = try context.parameters.require("id")
            let found = try await offloaded { () throws(APIError) in
                do throws(QueueError) { return try service.rollout(id: id) } catch { throw APIError(error) }
            }
            guard let found else { throw APIError.notFound("no rollout \(id)") }
            return JSONBody.response(found)
        }

        for action in ["pause", "resume", "cancel"] {
            router.post("/v1/rollouts/{id}/\(action)") { request, context in
                try await change(request, context, .operate, action: "rollout.\(action)", target: context.parameters.get("id")) { caller, _ in
                    _ = try Query(request, allowed: [])
                    let id = try context.parameters.require("id")
                    let who = caller.who
                    let rollout = try await offloaded { () throws(APIError) in
                        do throws(QueueError) { return try service.rollout(action, id: id, by: who) } catch { throw APIError(error) }
                    }
                    return (JSONBody.response(rollout), "now \(rollout.state.rawValue)")
                }
            }
        }

        router.get("/v1/audit") { request, context in
            // Never public: it names principals and their addresses.
            let caller = try identify(request, context, .read)
            guard caller.principal != nil else {
                throw APIError(status: .unauthorized, code: "unauthorized", message: "the audit log needs a token", headers: Self.challenge(error: nil))
            }
            let query = try Query(request, allowed: ["cursor", "limit", "principal"])
            var before: Int64?
            if let text = query["cursor"] {
                guard let value = Int64(text), value > 0 else { throw APIError.badRequest("cursor: not a cursor this API gave out") }
                before = value
            }
            let principal = query["principal"]
            if let principal, !Principal.isValidName(principal) { throw APIError.badRequest("principal: not a principal's name") }
            let limit = try query.limit()
            let entries: [AuditEntry]
            do {
                entries = try service.auditLog(before: before, limit: limit + 1, principal: principal)
            } catch {
                throw APIError(status: .serviceUnavailable, code: "unavailable", message: "the audit log cannot be read: \(error)")
            }
            let page = Array(entries.prefix(limit))
            let next = entries.count > limit ? page.last?.id.map(String.init) : nil
            return JSONBody.response(AuditPage(entries: page, nextCursor: next))
        }

        for action in OperatorAction.allCases {
            router.post("/v1/operations/{id}/\(action.rawValue)") { request, context in
                try await change(request, context, action.access, action: "operation.\(action.rawValue)", target: context.parameters.get("id")) { caller, _ in
                    _ = try Query(request, allowed: [])
                    let id = try context.parameters.require("id")
                    let operation = try perform(action, id: id, by: caller.who)
                    return (JSONBody.response(operation), "now \(operation.state.rawValue)")
                }
            }
        }
    }

    enum OperatorAction: String, CaseIterable, Sendable {
        case cancel, retry, release

        /// Releasing an operation past a site's deadline is an admin's; the others an operator's.
        var access: Access { self == .release ? .administer : .operate }
    }

    func perform(_ action: OperatorAction, id: String, by who: String) throws(APIError) -> DeferredOperation {
        do {
            switch action {
            case .cancel: return try service.cancel(id: id, by: who)
            case .retry: return try service.retry(id: id, by: who)
            case .release: return try service.release(id: id, by: who)
            }
        } catch {
            throw APIError(error)
        }
    }

    func submit(_ body: SubmitOperationRequest, by who: String) throws(APIError) -> SubmissionResult {
        var expiresAt = body.expiresAt
        if let text = body.expiresIn {
            if expiresAt != nil { throw .badRequest("give expiresAt or expiresIn, not both") }
            do {
                let duration = try DurationFormat.parse(text)
                guard duration > .zero else { throw APIError.badRequest("expiresIn: must be longer than zero") }
                expiresAt = Date().addingTimeInterval(duration.secondsValue)
            } catch let error as APIError {
                throw error
            } catch {
                throw .badRequest("expiresIn: \(error)")
            }
        }
        let request = SubmissionRequest(
            site: body.site, kind: body.kind, params: body.params ?? [:], createdBy: who, idempotencyKey: body.idempotencyKey,
            notBefore: body.notBefore, expiresAt: expiresAt, maxAttempts: body.maxAttempts)
        do {
            return try service.submit(request)
        } catch {
            throw APIError(error)
        }
    }

    func bulkCancel(_ body: BulkCancelRequest, by who: String) throws(APIError) -> [DeferredOperation] {
        var filter = OperationFilter()
        if let site = body.site {
            do { filter.site = try SiteID(site) } catch { throw .badRequest("site: \(error.description)") }
        }
        if let kind = body.kind {
            guard let value = OperationKind(rawValue: kind) else { throw .badRequest("kind: unknown '\(kind)'") }
            filter.kind = value
        }
        if let state = body.state {
            guard let value = OperationState(rawValue: state), value == .queued || value == .blocked else {
                throw .badRequest("state: only queued or blocked operations can be cancelled, got '\(state)'")
            }
            filter.states = [value]
        }
        if filter.site == nil && filter.kind == nil && body.all != true {
            throw .badRequest("name a site or a kind to cancel, or set \"all\": true to cancel every queued and blocked operation")
        }
        do {
            return try service.cancelAll(filter, by: who)
        } catch {
            throw APIError(error)
        }
    }

    func siteParameter(_ context: FleetRequestContext) throws(APIError) -> SiteID {
        guard let text = context.parameters.get("site") else { throw .badRequest("a site id is required") }
        do { return try SiteID(text) } catch { throw .badRequest("site: \(error.description)") }
    }

    // MARK: - /metrics

    /// The registry's metrics (the aggregator's swift-metrics counters, gauges and timers),
    /// then what is read from the fleet at scrape time: each site's deadline, and the
    /// thresholds an alert rule compares it with.
    func scrape() -> [UInt8] {
        var buffer: [UInt8] = []
        registry.emit(into: &buffer)
        buffer = Self.addingHelp(to: buffer, help: help)
        let snapshot = PrometheusCollectorRegistry()
        let thresholds = service.thresholds
        let threshold = MetricNameDescriptor(
            namespace: "edgefleet", metricName: "threshold", unitName: "seconds",
            helpText: "The aggregator's thresholds, so alert rules follow its configuration.")
        for (name, value) in [
            ("connected_within", thresholds.connectedWithin), ("budget", thresholds.budget), ("warn_before", thresholds.warnBefore),
            ("critical_before", thresholds.criticalBefore), ("stable_for", thresholds.stableFor),
        ] {
            snapshot.makeGauge(descriptor: threshold, labels: [("threshold", name)]).set(value.secondsValue)
        }
        snapshot.makeGauge(
            descriptor: MetricNameDescriptor(
                namespace: "edgefleet", metricName: "broker", unitName: "connected", helpText: "1 while the aggregator's broker connection is up.")
        ).set(service.brokerConnected ? 1.0 : 0.0)
        snapshot.makeGauge(
            descriptor: MetricNameDescriptor(namespace: "edgefleet", metricName: "build", unitName: "info", helpText: "The aggregator's version."),
            labels: [("version", EdgeFleetVersion.current)]
        ).set(1.0)
        snapshot.emit(into: &buffer)
        let (slow, evicted, open) = connections.counts
        buffer += Array(
            """
            # HELP edgefleet_http_connections_closed_total HTTP connections the server closed: no request head within the header timeout (slow-head), or the oldest such one to make room at the connection cap (evicted).
            # TYPE edgefleet_http_connections_closed_total counter
            edgefleet_http_connections_closed_total{reason="slow-head"} \(slow)
            edgefleet_http_connections_closed_total{reason="evicted"} \(evicted)
            # HELP edgefleet_http_connections HTTP connections open now.
            # TYPE edgefleet_http_connections gauge
            edgefleet_http_connections \(open)

            """.utf8)
        return buffer
    }

    /// `edgefleet_site_deadline_seconds` for a slice of sites, in the text format (site ids need
    /// no escaping: `a-z`, `0-9`, `-`), with its HELP and TYPE lines before the first slice.
    /// Rollouts at scrape time: how many in each state, and each unfinished one's sites by
    /// state (a few rollouts at a time: their ids are a bounded label).
    func rolloutLines() -> String {
        guard let rollouts = try? service.rollouts(limit: 1000) else { return "" }
        var byState: [RolloutState: Int] = [:]
        for r in rollouts { byState[r.state, default: 0] += 1 }
        var text = "# HELP edgefleet_rollouts Rollouts by state (the newest 1000).\n# TYPE edgefleet_rollouts gauge\n"
        for state in RolloutState.allCases { text += "edgefleet_rollouts{state=\"\(state.rawValue)\"} \(byState[state] ?? 0)\n" }
        text += "# HELP edgefleet_rollout_sites An unfinished rollout's sites by where their operation is.\n# TYPE edgefleet_rollout_sites gauge\n"
        for r in rollouts where !r.state.isFinal {
            let c = r.counts
            for (state, n) in [("pending", c.pending), ("queued", c.queued), ("dispatching", c.dispatching), ("succeeded", c.succeeded),
                               ("failed", c.failed), ("other", c.other), ("skipped", c.skipped)] {
                text += "edgefleet_rollout_sites{rollout=\"\(r.id)\",state=\"\(state)\"} \(n)\n"
            }
        }
        return text
    }

    static func deadlineLines(_ entries: ArraySlice<(site: SiteID, deadline: Date)>, header: Bool) -> String {
        var text = ""
        text.reserveCapacity(entries.count * 64 + 300)
        if header {
            text += "# HELP edgefleet_site_deadline_seconds Unix time of each site's deadline: the earlier of its last Azure contact plus the budget and its earliest certificate expiry.\n"
            text += "# TYPE edgefleet_site_deadline_seconds gauge\n"
        }
        for entry in entries {
            text += "edgefleet_site_deadline_seconds{site=\""
            text += entry.site.rawValue
            text += "\"} "
            text += String(entry.deadline.timeIntervalSince1970)
            text += "\n"
        }
        return text
    }
}

extension OperatorAPI {
    /// Adds a `# HELP` line before each `# TYPE` line that has none (the metrics made through
    /// swift-metrics carry no help text, and `promtool check metrics` wants it).
    static func addingHelp(to exposition: [UInt8], help texts: [String: String]) -> [UInt8] {
        var out = ""
        var helped = Set<String>()
        for line in String(decoding: exposition, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false) {
            if line.hasPrefix("# HELP ") { helped.insert(String(line.split(separator: " ")[2])) }
            if line.hasPrefix("# TYPE ") {
                let name = String(line.split(separator: " ")[2])
                if !helped.contains(name), let help = texts[name] {
                    out += "# HELP \(name) \(help)\n"
                    helped.insert(name)
                }
            }
            out += line + "\n"
        }
        if out.hasSuffix("\n\n") { out.removeLast() }
        return Array(out.utf8)
    }
}

/// Runs blocking work (a long SQLite transaction) on a dispatch thread, so the cooperative
/// threads that ingest and the dispatcher run on stay free.
func offloaded<T: Sendable>(_ body: @escaping @Sendable () throws(APIError) -> T) async throws(APIError) -> T {
    let result: Result<T, APIError> = await withCheckedContinuation { continuation in
        onOwnThread {
            continuation.resume(returning: Result { () throws(APIError) -> T in try body() })
        }
    }
    return try result.get()
}

/// While the aggregator reads its fleet's state back after a start (about 2 s for 80,000 sites),
/// every route but `/healthz` answers 503 `restoring` with `Retry-After: 1`. The HTTP service
/// starts alongside the restore, and answered from the empty state meanwhile: no sites, every
/// site 404, a dashboard showing the fleet gone.
struct RestoringMiddleware: RouterMiddleware {
    typealias Context = FleetRequestContext
    let service: any OperatorBackend

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard service.restoring, request.uri.path != "/healthz" else { return try await next(request, context) }
        var response = JSONBody.response(
            APIErrorBody(code: "restoring", message: "the aggregator is restoring the fleet's state from its database; try again in a moment"),
            status: .serviceUnavailable)
        response.headers[.retryAfter] = "1"
        return response
    }
}

/// Turns every error into the API's JSON error body: routes that do not exist (404), a
/// body too large (413), and anything unexpected (500, logged).
struct JSONErrorMiddleware: RouterMiddleware {
    typealias Context = FleetRequestContext

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let error as APIError {
            return try error.response(from: request, context: context)
        } catch let error as HTTPError {
            let code =
                switch error.status {
                case .notFound: "not-found"
                case .methodNotAllowed: "method-not-allowed"
                case .contentTooLarge: "bad-request"
                case .unauthorized: "unauthorized"
                default: error.status.code < 500 ? "bad-request" : "internal"
                }
            let message = error.status == .notFound ? "no route \(request.method.rawValue) \(request.uri.path)" : (error.body ?? error.status.reasonPhrase)
            return JSONBody.response(APIErrorBody(code: code, message: message), status: error.status)
        } catch {
            context.logger.error("request \(request.method.rawValue) \(request.uri.path) failed: \(error)")
            return JSONBody.response(APIErrorBody(code: "internal", message: "internal error"), status: .internalServerError)
        }
    }
}
