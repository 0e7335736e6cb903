import FleetAggregator
import FleetCore
import Foundation
import Testing

/// A site record writes its own JSON (it is stored for every site that changed): the bytes its
/// `Encodable` conformance writes through Foundation's encoder, and it reads back the same.
@Suite("site record JSON")
struct SiteRecordJSONTests {
    @Test("a record with every field set, and a bare one, write what Foundation writes and read back equal")
    func record() throws {
        let now = RFC3339.parse("2026-11-26T15:00:00.123Z")!
        var record = SiteRecord(site: try SiteID("store-0042"))
        record.session = .max
        record.instance = "0123456789abcdef"
        record.presence = .offline
        record.offlineReason = .lost
        record.presenceAt = now
        record.agent = AgentInfo(version: "0.3.0", host: "node \"a\"")
        record.heartbeatIntervalS = 7.5
        record.lastSeq = 42
        record.lastHeartbeatAt = now
        record.lastSeenAt = now.addingTimeInterval(1)
        record.lastAzureContactAt = now.addingTimeInterval(-86_400)
        record.azureReachable = false
        record.earliestCertificateExpiry = now.addingTimeInterval(3 * 86_400)
        record.certificateSource = "/etc/kubernetes/pki"
        record.statusAt = now
        record.checks = CheckCounts(pass: 1, warn: 0, fail: 1, unknown: 0)
        record.checkResults = [
            CheckResult(name: "kube-api", state: .pass, observedAt: now, durationMs: 34, output: "ok"),
            CheckResult(name: "dns", state: .fail, observedAt: now, durationMs: 1_200, output: "line 1\nline \"2\"\t\\ / é"),
        ]
        record.capabilities = ["clusterAutoscaler": true, "arc": false, "Z": true]
        record.cluster = ClusterInfo(name: "aks", resourceGroup: "rg", subscription: "sub", customLocation: "cl", kubernetesVersion: "1.30.1")
        record.labels = ["region": "emea", "a10": "x", "a9": "y"]
        record.mode = .semiConnected
        record.modeSince = now
        record.liveness = .stale
        record.alert = .warning
        record.alertAnnounced = .warning
        record.expiredAt = now
        record.viewPublishedAt = now
        record.seqGaps = 3
        record.duplicates = 4
        let unset = Mirror(reflecting: record).children.compactMap { child -> String? in
            let mirror = Mirror(reflecting: child.value)
            return mirror.displayStyle == .optional && mirror.children.isEmpty ? child.label : nil
        }
        #expect(unset.isEmpty, "the complete record leaves \(unset) unset")
        for value in [record, SiteRecord(site: try SiteID("bare"))] {
            let written = try FleetJSON.encode(value)
            #expect(String(decoding: written, as: UTF8.self) == String(decoding: try FleetJSON.encoder().encode(value), as: UTF8.self))
            #expect(try FleetJSON.decode(SiteRecord.self, from: written) == value)
        }
    }
}
