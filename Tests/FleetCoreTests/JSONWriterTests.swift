import FleetCore
import Foundation
import Testing

/// The payloads that write their own JSON (`JSONWritable`) must write what their `Encodable`
/// conformance writes through Foundation's encoder with the contract's options, with every
/// optional set and with none.
@Suite("hand-written JSON writers")
struct JSONWriterTests {
    let site = try! SiteID("store-0042")
    let now = RFC3339.parse("2026-11-26T15:00:00.123Z")!

    func foundation<T: Encodable>(_ value: T) throws -> String { String(decoding: try FleetJSON.encoder().encode(value), as: UTF8.self) }

    /// The stored properties of `value` that are nil (the complete example must have none).
    func unset(_ value: Any) -> [String] {
        Mirror(reflecting: value).children.compactMap { child in
            let mirror = Mirror(reflecting: child.value)
            return mirror.displayStyle == .optional && mirror.children.isEmpty ? child.label ?? "?" : nil
        }
    }

    func same<T: JSONWritable>(_ value: T, complete: Bool, sourceLocation: SourceLocation = #_sourceLocation) throws {
        if complete {
            #expect(unset(value).isEmpty, "the complete example of \(T.self) leaves \(unset(value)) unset", sourceLocation: sourceLocation)
        }
        var json = JSONWriter()
        try value.write(to: &json)
        let written = String(decoding: json.bytes, as: UTF8.self)
        #expect(written == (try foundation(value)), sourceLocation: sourceLocation)
        // And FleetJSON.encode takes this path.
        #expect(try FleetJSON.text(value) == written, sourceLocation: sourceLocation)
    }

    @Test("each writer writes its type's Encodable bytes, every optional set and none")
    func writers() throws {
        try same(QueueCounts(queued: 2, dispatching: 1, failed: 7, blocked: 3), complete: true)
        try same(AgentInfo(version: "1.0", host: "h\u{7f}"), complete: true)
        try same(ClusterInfo(name: "aks", resourceGroup: "rg", subscription: "s", customLocation: "c", kubernetesVersion: "1.30"), complete: true)
        try same(ClusterInfo(), complete: false)
        try same(CheckResult(name: "dns", state: .warn, observedAt: now, durationMs: -1, output: "a\u{0}b"), complete: true)
        try same(CheckCounts(pass: 1, warn: 2, fail: 3, unknown: 4), complete: true)

        let evaluation = ConnectivityEvaluator.evaluate(
            SiteKnowledge(lastAzureContactAt: now.addingTimeInterval(-40 * 86_400), lastSeenAt: now), thresholds: Thresholds(), now: now)
        var view = SiteView(
            site: site, evaluation: evaluation, lastHeartbeatAt: now, lastAzureContactAt: now.addingTimeInterval(-1.5),
            queue: QueueCounts(queued: 2), checks: CheckCounts(fail: 1), labels: ["region": "emea", "Z": "upper", "a10": "x", "a9": "y", "é": "\"q\"\n"])
        view.modeSince = now
        view.deadline = now.addingTimeInterval(3_600)
        view.deadlineReason = .certificate
        view.remainingS = 12.5
        view.projected = true
        try same(view, complete: true)
        var bare = SiteView(site: site, evaluation: evaluation, lastHeartbeatAt: nil, lastAzureContactAt: nil)
        (bare.modeSince, bare.deadline, bare.deadlineReason, bare.remainingS) = (nil, nil, nil, nil)
        try same(bare, complete: false)
        view.remainingS = 3e21
        try same(view, complete: true)

        var event = FleetEvent(
            type: .modeChanged, site: site, at: now, from: "connected", to: "semi-connected", level: .warning, remainingS: 86_400,
            operationID: "op-1", kind: .clusterUpgrade, note: "line 1\nline \"2\"\t\\ / é \u{1}", epoch: 7, rollout: "ro-1", contactAt: now,
            deadline: now.addingTimeInterval(30 * 86_400))
        event.id = 1_234_567
        try same(event, complete: true)
        try same(FleetEvent(type: .operationSucceeded, site: nil, at: now), complete: false)
        try same(StoredEventBody(event), complete: true)
        try same(StoredEventBody(FleetEvent(type: .siteForgotten, site: site, at: now)), complete: false)

        var operation = DeferredOperation(
            id: "op-1", sequence: 42, site: site, kind: .extensionInstall, params: ["name": "monitor", "version": "1.2.3", "zz": "a/b", "B": ""],
            state: .failed, createdAt: now, createdBy: "alice@example.com", idempotencyKey: "k-1", notBefore: now,
            expiresAt: now.addingTimeInterval(86_400), attempts: 2, maxAttempts: 5, nextAttemptAt: now, lastError: "exit 1: \u{1b}[31mred\u{1b}[0m",
            history: [
                OperationHistoryEntry(at: now, from: nil, to: .queued, note: "submitted"),
                OperationHistoryEntry(at: now.addingTimeInterval(0.0005), from: .queued, to: .dispatching, note: ""),
            ])
        operation.released = false
        operation.releasedAt = now
        try same(operation, complete: true)
        try same(OperationHistoryEntry(at: now, from: .blocked, to: .queued, note: "released"), complete: true)
        try same(
            DeferredOperation(
                id: "op-2", site: site, kind: .clusterCreate, params: [:], state: .queued, createdAt: Date(timeIntervalSince1970: -1.5),
                createdBy: "", maxAttempts: 1),
            complete: false)
    }

    @Test("the agent's payloads (heartbeat, status, presence) write their Encodable bytes, every optional set and none")
    func agentPayloads() throws {
        let azure = AzureReport(reachable: true, lastContactAgeS: 0.25, probe: "endpoints")
        try same(azure, complete: true)
        // A site never in contact: the age is written as an explicit null.
        try same(AzureReport(reachable: false, lastContactAgeS: nil, probe: "command"), complete: false)
        // Doubles as Foundation writes them: integral without ".0", small ones with an exponent.
        for age in [3.0, 1e-05, 86_400.25, 0, 1e21] {
            try same(AzureReport(reachable: true, lastContactAgeS: age, probe: "endpoints"), complete: true)
        }
        try same(CertificateReport(earliestNotAfter: now, source: "/etc/kubernetes/pki", error: "unreadable: \"x\""), complete: true)
        try same(CertificateReport(earliestNotAfter: nil, source: nil), complete: false)
        try same(
            Heartbeat(
                site: site, session: .max, seq: 1_000_000, sentAt: now, azure: azure,
                certificates: CertificateReport(earliestNotAfter: now, source: "s", error: "e"), instance: "i-1"),
            complete: true)
        try same(Heartbeat(site: site, session: 1, seq: 1, sentAt: now, azure: AzureReport(reachable: false, lastContactAgeS: nil, probe: "p")), complete: false)
        try same(
            SiteStatus(
                site: site, session: 3, at: now, cluster: ClusterInfo(name: "aks"),
                checks: [CheckResult(name: "kube-api", state: .pass, observedAt: now, durationMs: 12, output: "ok")],
                capabilities: ["clusterAutoscaler": true, "Z": false], spoolDropped: 4, instance: "i-2", labels: ["region": "emea", "a": "é"]),
            complete: true)
        try same(SiteStatus(site: site, session: 3, at: now), complete: false)
        try same(
            Presence(
                site: site, state: .offline, reason: .shutdown, session: 9, agent: AgentInfo(version: "1", host: "h"), heartbeatIntervalS: 7.5,
                at: now, instance: "i-3", replica: "r-1", role: "leader", epoch: 4),
            complete: true)
        try same(Presence(site: site, state: .online, session: 1, at: now), complete: false)
    }

    @Test("a writer refuses what Foundation refuses (a double that is not a number), and nothing partial is returned")
    func refusals() throws {
        var view = SiteView(
            site: site, evaluation: ConnectivityEvaluator.evaluate(SiteKnowledge(lastSeenAt: now), thresholds: Thresholds(), now: now),
            lastHeartbeatAt: now, lastAzureContactAt: nil)
        view.remainingS = .nan
        #expect(throws: EncodingError.self) { try FleetJSON.encode(view) }
        #expect(throws: EncodingError.self) { try FleetJSON.encoder().encode(view) }
        #expect(throws: EncodingError.self) { try FleetJSON.encode(FleetEvent(type: .deadlineAlert, site: site, at: now, remainingS: .infinity)) }
    }
}
