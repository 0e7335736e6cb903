import FleetCore
import Foundation
import TestSupport
import Testing
import YAMLReader

/// `docs/openapi.yaml` against the running aggregator: every route it lists answers with a
/// status it documents, in the content type it documents, with a body its schema accepts.
@Suite("the OpenAPI document", .timeLimit(.minutes(3)))
struct OpenAPITests {
    /// docs/contract.md's routes ("Operator surfaces").
    static let contractRoutes: Set<String> = [
        "GET /v1/fleet", "GET /v1/sites", "GET /v1/sites/{site}", "DELETE /v1/sites/{site}", "GET /v1/sites/{site}/capabilities", "GET /v1/operations",
        "POST /v1/operations", "GET /v1/operations/{id}", "POST /v1/operations/{id}/cancel", "POST /v1/operations/{id}/retry",
        "POST /v1/operations/{id}/release", "POST /v1/operations/cancel", "GET /metrics", "GET /healthz", "GET /", "GET /v1/audit",
        "GET /v1/rollouts", "POST /v1/rollouts", "GET /v1/rollouts/{id}", "POST /v1/rollouts/{id}/pause", "POST /v1/rollouts/{id}/resume",
        "POST /v1/rollouts/{id}/cancel", "GET /v1/events", "GET /v1/history", "GET /v1/sites/{site}/history",
    ]

    static func document() throws -> YAMLNode {
        let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../docs/openapi.yaml").path
        return try #require(try YAMLNode.parse(String(contentsOfFile: path, encoding: .utf8)))
    }

    @Test("the document lists exactly docs/contract.md's routes", .ownThread)
    func coversTheContract() throws {
        let document = try Self.document()
        var routes = Set<String>()
        for path in document["paths"]?.mapping ?? [] {
            for method in path.value.mapping ?? [] { routes.insert("\(method.key.string!.uppercased()) \(path.key.string!)") }
        }
        #expect(routes == Self.contractRoutes)
    }

    @Test("every route answers as documented: the good request, no token, an unknown id, an unknown parameter")
    func everyRouteAnswersAsDocumented() async throws {
        let document = try Self.document()
        let validator = SchemaValidator(document: document)
        let f = try await OperatorFixture.start()
        defer { f.stop() }
        let sites = try await f.fourModes()
        defer { Task { for site in sites { await site.shutdown() } } }
        let queued = try await f.submit("site-semi", "extension.install", ["name": "queued"])
        let another = try await f.submit("site-semi", "extension.install", ["name": "shown"])
        let blocked = try await f.submit("site-gone", "extension.install", ["name": "blocked"])
        let failed = try await f.submit("site-connected", "extension.install", ["name": "exit=3"], extra: #", "maxAttempts": 1"#)
        try await f.waitForState(failed, "failed")

        let rolloutBody = #"{"kind":"extension.install","selector":"tier=test","params":{"name":"r"},"waitFor":"1h"}"#
        let bodies = [
            "POST /v1/operations": #"{"site":"site-semi","kind":"nodepool.scale","params":{"nodepool":"np1","count":"4"}}"#,
            "POST /v1/operations/cancel": #"{"kind":"cluster.delete"}"#,
            "POST /v1/rollouts": rolloutBody,
        ]
        let ids = ["cancel": queued, "retry": failed, "release": blocked]
        // Rollouts to show, pause, resume (paused first) and cancel.
        func rollout() async throws -> String {
            let created = try await f.post("/v1/rollouts", rolloutBody)
            return try #require((try created.json()["rollout"] as? [String: Any])?["id"] as? String, "\(created.text)")
        }
        let (shown, toResume, toCancel) = (try await rollout(), try await rollout(), try await rollout())
        #expect(try await f.post("/v1/rollouts/\(toResume)/pause").status == 200)
        let rolloutIDs = ["pause": shown, "resume": toResume, "cancel": toCancel]
        func id(_ template: String, _ action: String) -> String {
            template.hasPrefix("/v1/rollouts/") ? rolloutIDs[action] ?? shown : ids[action] ?? another
        }

        var checked = 0
        for path in document["paths"]?.mapping ?? [] {
            let template = path.key.string!
            for entry in path.value.mapping ?? [] {
                let method = entry.key.string!.uppercased()
                let operation = entry.value
                let route = "\(method) \(template)"
                let documented = Set((operation["responses"]?.mapping ?? []).compactMap { $0.key.string.flatMap(Int.init) })
                let action = template.split(separator: "/").last.map(String.init) ?? ""
                // Forgetting a site is tried on one no other route reads, with force (it has operations).
                let target = (method == "DELETE" ? template + "?force=true" : template)
                    .replacingOccurrences(of: "{site}", with: method == "DELETE" ? "site-new" : "site-semi")
                    .replacingOccurrences(of: "{id}", with: id(template, action))
                let body = bodies[route].map { Array($0.utf8) } ?? (method == "POST" ? [] : nil)

                // The good request.
                let good = try await HTTP.request(method, port: f.port, target, token: OperatorFixture.token, body: body)
                #expect((200..<300).contains(good.status) && documented.contains(good.status), "\(route): \(good.status) \(good.text.prefix(300))")
                try validator.check(good, against: operation, route: route)

                // No token, where the route needs one.
                let secured = operation["security"]?.sequence?.isEmpty != true
                if secured {
                    let anonymous = try await HTTP.request(method, port: f.port, target, body: body)
                    #expect(anonymous.status == 401 && documented.contains(401), "\(route) without a token: \(anonymous.status)")
                    try validator.check(anonymous, against: operation, route: route)
                } else {
                    #expect(try await HTTP.request(method, port: f.port, target).status == good.status, "\(route) is open")
                }

                // An unknown site or operation.
                if template.contains("{") {
                    let missing = template.replacingOccurrences(of: "{site}", with: "nowhere").replacingOccurrences(of: "{id}", with: "op-missing")
                    let response = try await HTTP.request(method, port: f.port, missing, token: OperatorFixture.token, body: body)
                    #expect(response.status == 404 && documented.contains(404), "\(route) for an unknown id: \(response.status)")
                    try validator.check(response, against: operation, route: route)
                }

                // An unknown query parameter, where the route documents 400.
                if documented.contains(400) {
                    let plain = template.replacingOccurrences(of: "{site}", with: "site-semi").replacingOccurrences(of: "{id}", with: id(template, action))
                    let response = try await HTTP.request(method, port: f.port, plain + "?bogus=1", token: OperatorFixture.token, body: body)
                    #expect(response.status == 400, "\(route)?bogus=1: \(response.status)")
                    try validator.check(response, against: operation, route: route)
                }
                checked += 1
            }
        }
        #expect(checked == Self.contractRoutes.count)
    }
}

/// Just enough of OpenAPI 3 schema checking for our document: `$ref`, `type`, `required`,
/// `properties`, `items`, `additionalProperties`, `enum`.
struct SchemaValidator {
    let document: YAMLNode

    func resolve(_ node: YAMLNode) -> YAMLNode {
        guard let reference = node["$ref"]?.string, reference.hasPrefix("#/") else { return node }
        var current: YAMLNode? = document
        for part in reference.dropFirst(2).split(separator: "/") { current = current?[String(part)] }
        return current.map(resolve) ?? node
    }

    func check(_ response: HTTPResponse, against operation: YAMLNode, route: String) throws {
        guard let documented = operation["responses"]?["\(response.status)"] else {
            Issue.record("\(route): status \(response.status) is not documented")
            return
        }
        let content = resolve(documented)["content"]?.mapping ?? []
        if content.isEmpty { return }  // a redirect: no body documented
        let type = response.headers["content-type"]?.split(separator: ";").first.map(String.init) ?? ""
        guard let media = content.first(where: { $0.key.string == type }) else {
            Issue.record("\(route) \(response.status): content type '\(type)' is not documented")
            return
        }
        guard type == "application/json", let schema = media.value["schema"] else { return }
        let value = try JSONSerialization.jsonObject(with: Data(response.body), options: [.fragmentsAllowed])
        for problem in validate(value, resolve(schema), path: "$") {
            Issue.record("\(route) \(response.status): \(problem)")
        }
    }

    func validate(_ value: Any, _ schema: YAMLNode, path: String) -> [String] {
        let schema = resolve(schema)
        var problems: [String] = []
        if let allowed = schema["enum"]?.sequence?.compactMap(\.string), let text = value as? String, !allowed.contains(text) {
            problems.append("\(path): '\(text)' is not one of \(allowed)")
        }
        switch schema["type"]?.string {
        case "object"?:
            guard let object = value as? [String: Any] else { return ["\(path): not an object"] }
            for key in schema["required"]?.sequence?.compactMap(\.string) ?? [] where object[key] == nil {
                problems.append("\(path): '\(key)' is required")
            }
            let properties = schema["properties"]?.mapping ?? []
            for (key, member) in object {
                if let property = properties.first(where: { $0.key.string == key }) {
                    problems += validate(member, property.value, path: "\(path).\(key)")
                } else if let additional = schema["additionalProperties"], additional.mapping != nil {
                    problems += validate(member, additional, path: "\(path).\(key)")
                } else if !properties.isEmpty {
                    problems.append("\(path): '\(key)' is not documented")
                }
            }
        case "array"?:
            guard let array = value as? [Any] else { return ["\(path): not an array"] }
            if let items = schema["items"] {
                for (i, item) in array.enumerated() { problems += validate(item, items, path: "\(path)[\(i)]") }
            }
        case "string"?:
            if !(value is String) { problems.append("\(path): not a string") }
        case "integer"?, "number"?:
            if value is String || value is [Any] || value is [String: Any] { problems.append("\(path): not a number") }
        case "boolean"?:
            if value is String || value is [Any] || value is [String: Any] { problems.append("\(path): not a boolean") }
        default:
            break
        }
        return problems
    }
}
